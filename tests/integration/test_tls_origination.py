"""TLS origination through a real router to real TLS origins that demand a client certificate.

nginx (`ssl_verify_client on`) answers with the client certificate's subject it verified and
the SNI name it got. Certificates come from private CAs made with openssl in the test; the
Secrets are kubelet volumes (`..data` swaps), so rotation is tested the way a pod sees it.
"""

from __future__ import annotations

import http.client
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from tests.integration.test_cli import run as run_cli
from tests.kubelet import ConfigMapVolume
from tests.load import LoadGen
from tests.longlived import changes
from tests.router import Router
from tests.support import free_port, wait_for
from tests.tlscerts import make_ca, make_crl, make_leaf
from tests.tlsorigin import TlsOrigin

PARTNER = "api.partner.example"
Pair = tuple[Path, Path]


@dataclass(frozen=True)
class Certs:
    """The partner's CA and server certificate, and the company's client identities."""

    partner_ca: Pair
    server: Pair  # for PARTNER
    company_ca: Pair
    team_a: Pair
    team_a2: Pair  # team-a's next certificate (rotation)
    team_b: Pair
    stranger: Pair  # a client certificate from a CA the partner does not trust
    other_ca: Pair  # a second CA for bundles


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("pki")
    partner_ca = make_ca(d, "partner-ca")
    company_ca = make_ca(d, "company-ca")
    other_ca = make_ca(d, "other-ca")

    def client(name: str, ca: Pair) -> Pair:
        return make_leaf(d, name, ca, sans=f"DNS:{name}", usage="clientAuth")

    return Certs(
        partner_ca=partner_ca,
        server=make_leaf(
            d, "partner-server", partner_ca, sans=f"DNS:{PARTNER}", usage="serverAuth"
        ),
        company_ca=company_ca,
        team_a=client("team-a", company_ca),
        team_a2=client("team-a-2", company_ca),
        team_b=client("team-b", company_ca),
        stranger=client("stranger", other_ca),
        other_ca=other_ca,
    )


@pytest.fixture
def origin(tmp_path: Path, certs: Certs) -> Iterator[TlsOrigin]:
    o = TlsOrigin(tmp_path / "origin", certs.server, certs.company_ca[0]).start()
    yield o
    o.stop()


def secret(directory: Path, pair: Pair) -> ConfigMapVolume:
    """A kubernetes.io/tls Secret volume holding `pair` as tls.crt and tls.key."""
    volume = ConfigMapVolume(directory)
    publish_identity(volume, pair)
    return volume


def publish_identity(volume: ConfigMapVolume, pair: Pair) -> None:
    volume.write({"tls.crt": pair[0].read_bytes(), "tls.key": pair[1].read_bytes()})


def route(name: str, port: int, origin: TlsOrigin, mode: str, **tls: Any) -> dict[str, Any]:
    return {
        "name": name,
        "listen": f"127.0.0.1:{port}",
        "mode": mode,
        "destinations": [f"127.0.0.1:{origin.port}"],
        "tls": {"server_name": PARTNER, **tls},
    }


def start_router(tmp_path: Path, routes: list[dict[str, Any]]) -> tuple[Router, ConfigMapVolume]:
    volume = ConfigMapVolume(tmp_path / "configmap")
    volume.write({"routes.yaml": {"version": 1, "routes": routes}})
    env = {k: v for k, v in os.environ.items() if k == "EGRESS_HAPROXY_BIN"}
    router = Router(tmp_path / "router", env=env, config_dir=volume.directory, drain_seconds=1)
    return router.start(), volume


def get(port: int) -> tuple[int, str]:
    """A plain-HTTP GET through a route: (status, body); (0, reason) if the connection died."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": PARTNER})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        return 0, repr(exc)
    finally:
        conn.close()


class KeptConnection:
    """One client connection through a tcp route, sending requests on it one by one."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.reader = self.sock.makefile("rb")

    def ask(self) -> str:
        self.sock.sendall(f"GET / HTTP/1.1\r\nHost: {PARTNER}\r\n\r\n".encode())
        status = self.reader.readline()
        length = 0
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        assert b" 200 " in status, status
        return self.reader.read(length).decode()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def started() -> Iterator[list[Router]]:
    routers: list[Router] = []
    yield routers
    for r in routers:
        r.stop()


def test_identities_names_and_verification(
    tmp_path: Path, certs: Certs, origin: TlsOrigin, started: list[Router]
) -> None:
    """Plain HTTP and plain TCP clients reach an mTLS-only origin; each route presents its own
    identity to the same host; a wrong name, no certificate, an untrusted certificate and
    the system store (which does not know the partner's private CA) are all refused."""
    ca = str(certs.partner_ca[0])
    a = str(secret(tmp_path / "secret-a", certs.team_a).directory)
    b = str(secret(tmp_path / "secret-b", certs.team_b).directory)
    s = str(secret(tmp_path / "secret-s", certs.stranger).directory)
    names = ("a", "b", "tcp", "none", "stranger", "name", "system", "insecure")
    ports = {n: free_port() for n in names}
    routes = [
        route("a", ports["a"], origin, "http", ca_file=ca, client_cert_dir=a, alpn=["http/1.1"]),
        route("b", ports["b"], origin, "http", ca_file=ca, client_cert_dir=b),
        route("tcp", ports["tcp"], origin, "tcp", ca_file=ca, client_cert_dir=a),
        route("none", ports["none"], origin, "http", ca_file=ca),
        route("stranger", ports["stranger"], origin, "http", ca_file=ca, client_cert_dir=s),
        {
            **route("name", ports["name"], origin, "http", ca_file=ca, client_cert_dir=a),
            "tls": {"server_name": "other.example", "ca_file": ca, "client_cert_dir": a},
        },
        route("system", ports["system"], origin, "http", client_cert_dir=a),
        {
            **route("insecure", ports["insecure"], origin, "http"),
            "tls": {
                "server_name": "other.example",
                "client_cert_dir": a,
                "insecure_skip_verify": True,
            },
        },
    ]
    router, _ = start_router(tmp_path, routes)
    started.append(router)

    status, body = get(ports["a"])
    client, serial, sni = body.split()
    assert (status, client, sni) == (200, "client=CN=team-a", f"sni={PARTNER}")
    assert int(serial.removeprefix("serial="), 16) == _serial(certs.team_a)
    status, body = get(ports["b"])
    assert (status, body.split()[0]) == (200, "client=CN=team-b")
    conn = KeptConnection(ports["tcp"])
    try:
        assert conn.ask().startswith("client=CN=team-a ")
    finally:
        conn.close()
    status, body = get(ports["none"])
    assert (status, "No required SSL certificate" in body) == (400, True)
    status, body = get(ports["stranger"])
    assert (status, "SSL certificate error" in body) == (400, True)
    for refused in ("name", "system"):
        status, body = get(ports[refused])
        assert status in (0, 502, 503), (refused, status, body)
        assert "client=" not in body
    # Verification off, only because the route says so: it works, and it is loud about it.
    assert get(ports["insecure"])[1].startswith("client=CN=team-a ")
    assert "route insecure: insecure_skip_verify" in router.stderr()
    assert router.metric("haproxy_egress_tls_insecure_skip_verify", {"route": "insecure"}) == 1
    assert router.metric("haproxy_egress_tls_insecure_skip_verify", {"route": "a"}) == 0

    # Expiry and identity of what each route loaded, and the refused handshakes counted.
    cert = x509.load_pem_x509_certificate(certs.team_a[0].read_bytes())
    expiry = router.metric(
        "haproxy_egress_tls_not_after_seconds", {"route": "a", "material": "client_cert"}
    )
    assert expiry == cert.not_valid_after_utc.timestamp()
    ca_cert = x509.load_pem_x509_certificate(certs.partner_ca[0].read_bytes())
    expiry = router.metric("haproxy_egress_tls_not_after_seconds", {"route": "a", "material": "ca"})
    assert expiry == ca_cert.not_valid_after_utc.timestamp()
    info = {"route": "b", "subject": "CN=team-b", "issuer": "CN=company-ca"}
    assert router.metric("haproxy_egress_tls_client_cert_info", info) == 1
    failures = "haproxy_egress_tls_handshake_failures_total"
    wait_for(lambda: (router.metric(failures, {"route": "name"}) or 0) > 0)
    assert router.metric(failures, {"route": "a"}) == 0


def _serial(pair: Pair) -> int:
    """The certificate's serial number."""
    return x509.load_pem_x509_certificate(pair[0].read_bytes()).serial_number


def test_rotation_without_reload_keeps_connections(
    tmp_path: Path, certs: Certs, origin: TlsOrigin, started: list[Router]
) -> None:
    """A Secret swap of the client certificate, the CA bundle or the CRL goes through the
    runtime API: same worker, no reload, the established connection keeps its session, new
    connections use the new material; a broken Secret is kept out and named; a CRL that
    revokes the partner's certificate takes effect."""
    identity = secret(tmp_path / "mtls", certs.team_a)
    trust = ConfigMapVolume(tmp_path / "partner-ca")
    trust.write(
        {
            "ca.crt": certs.partner_ca[0].read_bytes(),
            "ca.crl": make_crl(tmp_path, certs.partner_ca).read_bytes(),
        }
    )
    port = free_port()
    tls = {
        "ca_file": str(trust.directory / "ca.crt"),
        "crl_file": str(trust.directory / "ca.crl"),
        "client_cert_dir": str(identity.directory),
    }
    router, _ = start_router(tmp_path, [route("partner", port, origin, "tcp", **tls)])
    started.append(router)
    kept = KeptConnection(port)
    # New connections all along, each a full handshake: none may fail while material rotates.
    load = LoadGen(port, keepalive=False, clients=2, max_seconds=120).start()
    try:
        assert kept.ask().startswith("client=CN=team-a ")

        def rotated(publish: Callable[[], None], runtime: bool = True) -> None:
            before, worker = changes(router), router.worker_pid()
            publish()
            wait_for(lambda: sum(changes(router).values()) > sum(before.values()), timeout=15)
            if runtime:
                log = [ln for ln in router.stderr().splitlines() if "haproxy-egress" in ln]
                assert changes(router)["runtime"] == before["runtime"] + 1, "\n".join(log[-3:])
                assert router.worker_pid() == worker

        # The client certificate: new connections present the new one, the kept one its own.
        rotated(lambda: publish_identity(identity, certs.team_a2))
        assert get(port)[1].startswith("client=CN=team-a-2 ")
        assert kept.ask().startswith("client=CN=team-a ")

        # The CA bundle: a bundle with one more CA still verifies the partner.
        bundle = certs.other_ca[0].read_bytes() + certs.partner_ca[0].read_bytes()
        rotated(lambda: trust.write({"ca.crt": bundle, "ca.crl": trust_crl(trust)}))
        assert get(port)[1].startswith("client=CN=team-a-2 ")

        # A broken Secret (a key that is not the certificate's) is refused and named; the
        # last good identity keeps serving.
        identity.write(
            {"tls.crt": certs.team_b[0].read_bytes(), "tls.key": certs.team_a[1].read_bytes()}
        )
        wait_for(lambda: "tls.key is not the key of the certificate" in router.stderr(), timeout=15)
        assert router.metric("haproxy_egress_config_last_reload_successful") == 0
        assert router.metric("haproxy_egress_tls_material_rejected") == 1
        assert get(port)[1].startswith("client=CN=team-a-2 ")

        # Put right. After a CA update haproxy (2.6, 3.0) no longer links the certificate store to
        # the server (runtime/tlslive.py): the router sees that and reloads instead.
        rotated(lambda: publish_identity(identity, certs.team_b), runtime=False)
        assert get(port)[1].startswith("client=CN=team-b ")
        assert router.metric("haproxy_egress_tls_material_rejected") == 0

        under_load = load.stop()
        assert under_load.failed == 0, under_load.errors
        assert under_load.ok > 0

        # The CRL: revoking the partner's server certificate stops new connections.
        revoked = make_crl(tmp_path, certs.partner_ca, revoked=(certs.server[0],))
        rotated(lambda: trust.write({"ca.crt": bundle, "ca.crl": revoked.read_bytes()}))
        status, body = get(port)
        assert "client=" not in body, (status, body)
        # ... and the connection established before all of this is still the same session.
        assert kept.ask().startswith("client=CN=team-a ")
    finally:
        load.stop()
        kept.close()


def trust_crl(volume: ConfigMapVolume) -> bytes:
    return (volume.directory / "ca.crl").read_bytes()


def test_check_and_explain_show_the_identity_and_refuse_bad_material(
    tmp_path: Path, certs: Certs
) -> None:
    """`check` and `explain` say which name a route verifies and which client certificate it
    presents; an expired certificate and an IP destination without a name are refused, named."""
    expired = make_leaf(
        tmp_path, "old", certs.company_ca, sans="DNS:old", usage="clientAuth", days="-1"
    )
    good = secret(tmp_path / "good", certs.team_a).directory
    old = secret(tmp_path / "old-secret", expired).directory
    config = tmp_path / "config"
    config.mkdir()

    def write(*routes: dict[str, Any]) -> dict[str, str]:
        (config / "routes.yaml").write_text(yaml.safe_dump({"routes": list(routes)}))
        return {"EGRESS_CONFIG_DIR": str(config)}

    partner = {
        "name": "partner",
        "listen": 9443,
        "mode": "http",
        "destinations": [f"{PARTNER}:443"],
        "tls": {"ca_file": str(certs.partner_ca[0]), "client_cert_dir": str(good)},
    }
    env = write(partner)
    checked = run_cli(["check"], env)
    assert checked.returncode == 0, checked.stderr
    assert (
        f"route partner -> {PARTNER}:443: TLS to {PARTNER} (name and chain verified against "
        f"{certs.partner_ca[0]}), client certificate CN=team-a issued by CN=company-ca, not after "
    ) in checked.stdout
    explained = run_cli(["explain", "--no-resolve", f"{PARTNER}:443"], env)
    assert explained.returncode == 0, explained.stderr
    assert "route partner (http): allow: fixed destination" in explained.stdout
    assert "client certificate CN=team-a" in explained.stdout

    env = write({**partner, "tls": {"client_cert_dir": str(old)}})
    refused = run_cli(["check"], env)
    assert refused.returncode == 2
    assert (
        f"routes.yaml: routes[0].tls.client_cert_dir: {old}/tls.crt: the certificate (CN=old) "
        "expired on "
    ) in refused.stderr

    env = write({**partner, "destinations": ["192.0.2.10:443"]})
    refused = run_cli(["check"], env)
    assert refused.returncode == 2
    assert "routes[0].tls: destination 192.0.2.10:443 is an IP address" in refused.stderr

    env = write({**partner, "tls": {"insecure_skip_verify": True}})
    warned = run_cli(["check"], env)
    assert warned.returncode == 0, warned.stderr
    assert "WARNING: route partner does not verify its destination" in warned.stderr
    assert "NOT VERIFIED (insecure_skip_verify)" in warned.stdout
