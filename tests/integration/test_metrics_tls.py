"""The metrics port under an exporter-toolkit web-config: TLS, client certificates, basic auth.

Every test serves a real MetricsServer on 127.0.0.1 (most against a missing stats socket:
haproxy_up 0 is enough to tell a served scrape from a refused one; one against real haproxy)
and talks to it with Python's own TLS client, certificates made by openssl at test time.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import logging
import shutil
import socket
import ssl
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from haproxy_egress.errors import ConfigError
from haproxy_egress.haproxy.cli import CliSocket
from haproxy_egress.metrics.http import MetricsServer
from tests.integration.test_cli import run as run_cli
from tests.integration.test_exporter_http import STATUS, running_haproxy
from tests.kubelet import ConfigMapVolume
from tests.router import Router, http_route
from tests.support import HttpOrigin, exit_code, free_port, http_get, wait_for
from tests.tlscerts import Pki, make_pki
from tests.unit.metrics.test_exporter import ALL

PASSWORD = "s3cret-scrape"
RELOAD = 0.2  # EGRESS_RELOAD_DEBOUNCE of these tests


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, server and client certificates, shared by the module's tests."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def password_hash() -> str:
    """bcrypt of PASSWORD; cost 4 keeps the tests quick (any cost 4..31 is accepted)."""
    return bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


def write_config(path: Path, doc: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(doc), sort_keys=False))
    return path


def tls_section(pki: Pki, **extra: Any) -> dict[str, Any]:
    return {"cert_file": str(pki.server[0]), "key_file": str(pki.server[1]), **extra}


@contextlib.contextmanager
def serving(web_config: Path, sock: Path | None = None) -> Iterator[MetricsServer]:
    """A started MetricsServer under `web_config`; stopped afterwards."""
    sock = sock or web_config.parent / "no-haproxy.sock"
    server = MetricsServer(
        "127.0.0.1",
        0,
        CliSocket(sock, 2.0).command,
        lambda: STATUS,
        ALL,
        web_config=web_config,
        reload_interval=RELOAD,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def client_context(pki: Pki, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """A client trusting the test CA, presenting `cert` if given."""
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def request(
    port: int,
    path: str = "/metrics",
    *,
    tls: ssl.SSLContext | None = None,
    auth: tuple[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One GET; (status, lower-cased headers, body)."""
    conn: http.client.HTTPConnection
    if tls is not None:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=tls)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {}
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def refused(port: int, tls: ssl.SSLContext) -> str:
    """The error a TLS client gets when the server refuses it (in or right after the
    handshake: with TLS 1.3 the client learns of a refused certificate on its first read)."""
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)) as info:
        request(port, tls=tls)
    return str(info.value)


def served_certificate(port: int, pki: Pki) -> str:
    """sha256 of the certificate the server presents now."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def fingerprint(cert: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()


def metric(body: bytes, name: str) -> float | None:
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return None


# --- TLS ----------------------------------------------------------------------------------


def test_tls_serves_metrics_and_plain_http_gets_only_the_probes(tmp_path: Path, pki: Pki) -> None:
    config = write_config(tmp_path / "web.yml", {"tls_server_config": tls_section(pki)})
    with serving(config) as server:
        status, _, body = request(server.port, tls=client_context(pki))
        assert status == 200
        assert metric(body, "haproxy_up") == 0
        assert metric(body, "haproxy_egress_web_config_last_reload_successful") == 1
        plain, headers, text = request(server.port)
        assert plain == 400
        assert b"HTTPS" in text
        assert headers["connection"] == "close"
        for probe in ("/healthz", "/readyz"):
            assert request(server.port, probe)[0] == 200  # the kubelet's plain HTTP probe
            assert request(server.port, probe, tls=client_context(pki))[0] == 200
        assert request(server.port, "/", tls=client_context(pki))[0] == 200


def test_min_version_refuses_older_clients(tmp_path: Path, pki: Pki) -> None:
    config = write_config(
        tmp_path / "web.yml", {"tls_server_config": tls_section(pki, min_version="TLS13")}
    )
    old = client_context(pki)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with serving(config) as server:
        refused(server.port, old)
        assert request(server.port, tls=client_context(pki))[0] == 200


# --- basic auth ------------------------------------------------------------------------------


def test_basic_auth(tmp_path: Path, pki: Pki, password_hash: str) -> None:
    config = write_config(
        tmp_path / "web.yml",
        {
            "tls_server_config": tls_section(pki),
            "basic_auth_users": {"prometheus": password_hash},
        },
    )
    tls = client_context(pki)
    with serving(config) as server:
        status, headers, _ = request(server.port, tls=tls)
        assert status == 401
        assert headers["www-authenticate"] == "Basic"
        assert request(server.port, tls=tls, auth=("prometheus", "wrong"))[0] == 401
        assert request(server.port, tls=tls, auth=("nobody", PASSWORD))[0] == 401
        assert request(server.port, tls=tls, auth=("prometheus", PASSWORD))[0] == 200
        assert request(server.port, "/", tls=tls)[0] == 401
        # probes carry no password, over TLS or not
        assert request(server.port, "/healthz", tls=tls)[0] == 200
        assert request(server.port, "/readyz")[0] == 200
        # a password alone over plain HTTP is still refused: the port speaks TLS
        assert request(server.port, auth=("prometheus", PASSWORD))[0] == 400


def test_basic_auth_without_tls(tmp_path: Path, password_hash: str) -> None:
    """As the toolkit allows (web_config_users_noTLS): plain HTTP, passwords required."""
    config = write_config(tmp_path / "web.yml", {"basic_auth_users": {"p": password_hash}})
    with serving(config) as server:
        assert request(server.port)[0] == 401
        assert request(server.port, auth=("p", PASSWORD))[0] == 200
        assert request(server.port, "/healthz")[0] == 200


# --- client certificates ---------------------------------------------------------------------


def mtls_config(tmp_path: Path, pki: Pki, **extra: Any) -> Path:
    section = tls_section(
        pki,
        client_auth_type="RequireAndVerifyClientCert",
        client_ca_file=str(pki.ca),
        **extra,
    )
    return write_config(tmp_path / "web.yml", {"tls_server_config": section})


def test_client_certificate_required(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    config = mtls_config(tmp_path, pki)
    with serving(config) as server:
        status, _, body = request(server.port, tls=client_context(pki, pki.client))
        assert status == 200
        assert metric(body, "haproxy_up") == 0
        with caplog.at_level(logging.INFO, "haproxy_egress.metrics"):
            refused(server.port, client_context(pki))  # no certificate at all
            refused(server.port, client_context(pki, pki.stranger))  # signed by another CA
        assert "handshake with" in caplog.text
        assert request(server.port)[0] == 400  # plain HTTP: no metrics
        assert request(server.port, "/healthz")[0] == 200  # ... but the kubelet's probe


def test_client_allowed_sans(tmp_path: Path, pki: Pki) -> None:
    config = mtls_config(tmp_path, pki, client_allowed_sans=["prometheus"])
    with serving(config) as server:
        assert request(server.port, tls=client_context(pki, pki.client))[0] == 200
        refused(server.port, client_context(pki, pki.other_client))  # right CA, wrong SAN


def test_verify_client_cert_if_given(tmp_path: Path, pki: Pki) -> None:
    config = write_config(
        tmp_path / "web.yml",
        {
            "tls_server_config": tls_section(
                pki, client_auth_type="VerifyClientCertIfGiven", client_ca_file=str(pki.ca)
            )
        },
    )
    with serving(config) as server:
        assert request(server.port, tls=client_context(pki))[0] == 200
        assert request(server.port, tls=client_context(pki, pki.client))[0] == 200
        refused(server.port, client_context(pki, pki.stranger))


# --- headers and rate limit ------------------------------------------------------------------


def test_configured_headers_and_rate_limit(tmp_path: Path, pki: Pki) -> None:
    config = write_config(
        tmp_path / "web.yml",
        {
            "tls_server_config": tls_section(pki),
            "http_server_config": {
                "http2": True,
                "headers": {"X-Frame-Options": "deny", "X-Content-Type-Options": "nosniff"},
            },
            "rate_limit": {"interval": "1m", "burst": 2},
        },
    )
    tls = client_context(pki)
    with serving(config) as server:
        status, headers, _ = request(server.port, tls=tls)
        assert status == 200
        assert headers["x-frame-options"] == "deny"
        assert headers["x-content-type-options"] == "nosniff"
        assert request(server.port, tls=tls)[0] == 200
        assert request(server.port, tls=tls)[0] == 429
        for _ in range(5):
            assert request(server.port, "/readyz", tls=tls)[0] == 200  # probes are not limited


# --- rotation ------------------------------------------------------------------------------


def test_certificate_rotation_through_a_secret_volume(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """A Secret update (the kubelet's ..data swap): new connections get the new certificate
    within the debounce; a bad one keeps the last good, with one log line and a metric."""
    secret = ConfigMapVolume(tmp_path / "secret")

    def publish(cert: Path, key: Path) -> None:
        secret.write({"tls.crt": cert.read_bytes(), "tls.key": key.read_bytes()})

    publish(*pki.server)
    config = write_config(
        tmp_path / "web.yml",
        {"tls_server_config": {"cert_file": "secret/tls.crt", "key_file": "secret/tls.key"}},
    )  # relative paths: against the web-config file's directory, as the toolkit does
    tls = client_context(pki)
    with serving(config) as server:
        assert served_certificate(server.port, pki) == fingerprint(pki.server[0])
        with contextlib.closing(
            http.client.HTTPSConnection("127.0.0.1", server.port, timeout=5, context=tls)
        ) as kept:
            kept.request("GET", "/healthz")
            assert kept.getresponse().read() == b"ok\n"
            publish(*pki.server2)
            wait_for(
                lambda: served_certificate(server.port, pki) == fingerprint(pki.server2[0]),
                timeout=10,
                step=0.02,
            )
            kept.request("GET", "/healthz")  # a kept-alive connection goes on undisturbed
            assert kept.getresponse().read() == b"ok\n"

        with caplog.at_level(logging.INFO, "haproxy_egress.metrics"):
            publish(pki.server[0], pki.server2[1])  # certificate and key do not match

            def failed() -> bool:
                body = request(server.port, tls=tls)[2]
                return metric(body, "haproxy_egress_web_config_reload_failures_total") == 1

            wait_for(failed, timeout=5)
            time.sleep(RELOAD * 2)
        rejected = [r for r in caplog.records if "reload rejected" in r.getMessage()]
        assert len(rejected) == 1, [r.getMessage() for r in caplog.records]
        assert "tls_server_config.cert_file" in rejected[0].getMessage()
        assert "\n" not in rejected[0].getMessage()
        body = request(server.port, tls=tls)[2]
        assert metric(body, "haproxy_egress_web_config_last_reload_successful") == 0
        assert served_certificate(server.port, pki) == fingerprint(pki.server2[0])  # last good

        publish(*pki.server)
        wait_for(lambda: served_certificate(server.port, pki) == fingerprint(pki.server[0]))
        body = request(server.port, tls=tls)[2]
        assert metric(body, "haproxy_egress_web_config_last_reload_successful") == 1
        assert metric(body, "haproxy_egress_web_config_reload_failures_total") == 1


def test_web_config_edits_apply_without_restart(
    tmp_path: Path, pki: Pki, password_hash: str
) -> None:
    volume = ConfigMapVolume(tmp_path / "web")
    volume.write({"web.yml": {"tls_server_config": tls_section(pki)}})
    tls = client_context(pki)
    with serving(tmp_path / "web" / "web.yml") as server:
        assert request(server.port, tls=tls)[0] == 200
        volume.write(
            {
                "web.yml": {
                    "tls_server_config": tls_section(pki),
                    "basic_auth_users": {"prometheus": password_hash},
                }
            }
        )
        wait_for(lambda: request(server.port, tls=tls)[0] == 401, timeout=5)
        assert request(server.port, tls=tls, auth=("prometheus", PASSWORD))[0] == 200
        volume.write({"web.yml": {"tls_server_config": tls_section(pki, nonsense=1)}})
        time.sleep(RELOAD * 4)
        assert request(server.port, tls=tls)[0] == 401  # the bad edit changed nothing
        assert server.web is not None
        assert server.web.failures == 1


def test_a_certificate_path_that_appears_later_is_picked_up(tmp_path: Path, pki: Pki) -> None:
    """An edit naming files that are not there yet is rejected; when they arrive (and only
    they change), the router notices and loads them."""
    config = write_config(tmp_path / "web.yml", {"tls_server_config": tls_section(pki)})
    with serving(config) as server:
        write_config(
            config,
            {"tls_server_config": {"cert_file": "later.crt", "key_file": "later.key"}},
        )
        wait_for(lambda: server.web is not None and server.web.failures == 1, timeout=5)
        assert served_certificate(server.port, pki) == fingerprint(pki.server[0])
        shutil.copy(pki.server2[1], tmp_path / "later.key")
        shutil.copy(pki.server2[0], tmp_path / "later.crt")
        wait_for(lambda: served_certificate(server.port, pki) == fingerprint(pki.server2[0]))


def test_an_unusable_web_config_is_refused_at_start(tmp_path: Path, pki: Pki) -> None:
    config = write_config(
        tmp_path / "web.yml",
        {"tls_server_config": tls_section(pki, client_auth_type="RequireAnyClientCert")},
    )
    with pytest.raises(ConfigError) as info:
        MetricsServer(
            "127.0.0.1", 0, CliSocket(tmp_path / "x.sock").command, lambda: STATUS, ALL,
            web_config=config,
        )  # fmt: skip
    (problem,) = info.value.problems
    assert problem.path == "tls_server_config.client_auth_type"
    assert problem.line == 4
    assert str(config) in str(problem)


# --- against real haproxy ----------------------------------------------------------------


def test_mtls_scrape_of_a_real_haproxy(
    run_dir: Path, origin: HttpOrigin, pki: Pki, tmp_path: Path
) -> None:
    port = free_port()
    doc = {"routes": [http_route("web", port, origin)]}
    config = mtls_config(tmp_path, pki)
    with running_haproxy(run_dir, doc) as sock, serving(config, sock) as server:
        assert http_get(port, "/") == "origin-a"
        status, _, body = request(server.port, tls=client_context(pki, pki.client))
    assert status == 200
    assert metric(body, "haproxy_up") == 1
    assert metric(body, "haproxy_frontend_http_requests_total") == 1


# --- a supervised router, and `check` --------------------------------------------------------


def test_supervised_router_serves_tls_and_rotates_its_certificate(
    tmp_path: Path, pki: Pki, password_hash: str, origin: HttpOrigin
) -> None:
    """EGRESS_WEB_CONFIG_FILE on a real `haproxy-egress run`: the kubelet's plain probe says
    ready, Prometheus' HTTPS scrape needs the password, a Secret update swaps the certificate."""
    secret = ConfigMapVolume(tmp_path / "tls")
    secret.write({"tls.crt": pki.server[0].read_bytes(), "tls.key": pki.server[1].read_bytes()})
    web = write_config(
        tmp_path / "web.yml",
        {
            "tls_server_config": {"cert_file": "tls/tls.crt", "key_file": "tls/tls.key"},
            "basic_auth_users": {"prometheus": password_hash},
        },
    )
    configmap = ConfigMapVolume(tmp_path / "config")
    route = free_port()
    configmap.write({"routes.yaml": {"routes": [http_route("web", route, origin)]}})
    router = Router(
        tmp_path / "router",
        env={"EGRESS_WEB_CONFIG_FILE": str(web), "EGRESS_LOG": "stdout"},
        config_dir=configmap.directory,
    )
    try:
        router.start()  # waits for a plain-HTTP /readyz, as the kubelet probes
        tls = client_context(pki)
        port = router.metrics_port
        assert request(port, tls=tls)[0] == 401
        assert request(port)[0] == 400
        assert http_get(route, "/") == "origin-a"
        status, _, body = request(port, tls=tls, auth=("prometheus", PASSWORD))
        assert status == 200
        assert metric(body, "haproxy_up") == 1
        assert metric(body, "haproxy_frontend_http_requests_total") == 1
        secret.write(
            {"tls.crt": pki.server2[0].read_bytes(), "tls.key": pki.server2[1].read_bytes()}
        )
        wait_for(lambda: served_certificate(port, pki) == fingerprint(pki.server2[0]), timeout=5)
        assert router.proc is not None
        assert router.proc.poll() is None
    finally:
        router.stop()
    assert "web-config reloaded" in router.stderr() + router.stdout()


def test_check_validates_the_web_config(tmp_path: Path, pki: Pki, origin: HttpOrigin) -> None:
    configmap = ConfigMapVolume(tmp_path / "config")
    configmap.write({"routes.yaml": {"routes": [http_route("web", free_port(), origin)]}})
    good = write_config(tmp_path / "good.yml", {"tls_server_config": tls_section(pki)})
    bad = write_config(
        tmp_path / "bad.yml",
        {"tls_server_config": {**tls_section(pki), "client_auth_type": "Sometimes"}},
    )
    env = {"EGRESS_CONFIG_DIR": str(configmap.directory)}
    ok = run_cli(["check"], {**env, "EGRESS_WEB_CONFIG_FILE": str(good)})
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[-1] == f"web-config OK: {good}: TLS TLS12..TLS13"
    refused_ = run_cli(["check"], {**env, "EGRESS_WEB_CONFIG_FILE": str(bad)})
    assert refused_.returncode == 2
    assert f"  {bad}:4: tls_server_config.client_auth_type: unknown client_auth_type" in (
        refused_.stderr
    )
    assert "Traceback" not in refused_.stderr


def test_run_refuses_to_start_with_an_unusable_web_config(
    tmp_path: Path, origin: HttpOrigin
) -> None:
    """Only the first load may be fatal: exit 2 with the located problem, no traceback."""
    configmap = ConfigMapVolume(tmp_path / "config")
    configmap.write({"routes.yaml": {"routes": [http_route("web", free_port(), origin)]}})
    web = write_config(tmp_path / "web.yml", {"tls_server_config": {"cert_file": "gone.crt"}})
    router = Router(
        tmp_path / "router",
        env={"EGRESS_WEB_CONFIG_FILE": str(web), "EGRESS_LOG": "stdout"},
        config_dir=configmap.directory,
    )
    code = exit_code(router, 30)
    assert code == 2
    assert f"{web}:1: tls_server_config: missing one of key or key_file" in router.stderr()
    assert "Traceback" not in router.stderr()
