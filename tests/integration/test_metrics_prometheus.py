"""A real Prometheus (Debian's package) scrapes the metrics port the way OpenShift's monitoring
stack does: HTTPS with the serving CA, and a client certificate or basic auth.

The same web-config files are handed to Debian's prometheus-haproxy-exporter as its
`--web.config.file`: one file, either exporter. Prometheus' own /api/v1/targets says whether
each target is up, and why not.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from tests.integration.test_exporter_http import running_haproxy
from tests.integration.test_exporter_parity import real_exporter
from tests.integration.test_metrics_tls import serving, write_config
from tests.netns import stop_process
from tests.support import HttpOrigin, free_port, port_open, wait_for
from tests.tlscerts import make_pki

PASSWORD = "scrape-pw"


@contextlib.contextmanager
def prometheus(config: dict[str, Any], workdir: Path) -> Iterator[int]:
    """Prometheus on 127.0.0.1 with its own storage; stopped by its pid afterwards."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed (Debian package prometheus)"
    port = free_port()
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: port_open(port), timeout=30)
        yield port
    finally:
        stop_process(proc, 10)
        log.close()


def targets(port: int) -> dict[str, dict[str, Any]]:
    """Prometheus' active targets by job."""
    url = f"http://127.0.0.1:{port}/api/v1/targets?state=active"
    with urllib.request.urlopen(url, timeout=5) as response:
        data = json.load(response)
    return {t["labels"]["job"]: t for t in data["data"]["activeTargets"]}


def query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expr)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        result: list[dict[str, Any]] = json.load(response)["data"]["result"]
    return result


def job(name: str, port: int, tls: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "job_name": name,
        "scheme": "https",
        "tls_config": tls,
        "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
        **extra,
    }


def test_prometheus_scrapes_over_tls_with_client_certificates_and_basic_auth(
    tmp_path: Path, run_dir: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    server_tls = {"cert_file": str(pki.server[0]), "key_file": str(pki.server[1])}
    mtls_web = write_config(
        tmp_path / "mtls.yml",
        {
            "tls_server_config": {
                **server_tls,
                "client_auth_type": "RequireAndVerifyClientCert",
                "client_ca_file": str(pki.ca),
            }
        },
    )
    basic_web = write_config(
        tmp_path / "basic.yml",
        {
            "tls_server_config": {**server_tls, "min_version": "TLS12"},
            "basic_auth_users": {"prometheus": hashed},
        },
    )
    ca_only = {"ca_file": str(pki.ca)}
    with_cert = {**ca_only, "cert_file": str(pki.client[0]), "key_file": str(pki.client[1])}
    origin = HttpOrigin("o").start()
    route = free_port()
    doc = {"routes": [{"name": "web", "listen": f"127.0.0.1:{route}", "mode": "http",
                       "destinations": [f"127.0.0.1:{origin.port}"]}]}  # fmt: skip
    try:
        with (
            running_haproxy(run_dir, doc) as sock,
            serving(mtls_web, sock) as ours_mtls,
            serving(basic_web, sock) as ours_basic,
            real_exporter(f"unix:{sock}", f"--web.config.file={mtls_web}") as theirs_mtls,
            real_exporter(f"unix:{sock}", f"--web.config.file={basic_web}") as theirs_basic,
        ):
            auth = {"basic_auth": {"username": "prometheus", "password": PASSWORD}}
            wrong = {"basic_auth": {"username": "prometheus", "password": "nope"}}
            config = {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [
                    job("ours-mtls", ours_mtls.port, with_cert),
                    job("ours-basic", ours_basic.port, ca_only, **auth),
                    job("theirs-mtls", theirs_mtls, with_cert),
                    job("theirs-basic", theirs_basic, ca_only, **auth),
                    job("ours-no-cert", ours_mtls.port, ca_only),
                    job("ours-wrong-password", ours_basic.port, ca_only, **wrong),
                    {
                        "job_name": "ours-plain-http",
                        "static_configs": [{"targets": [f"127.0.0.1:{ours_basic.port}"]}],
                        **auth,
                    },
                ],
            }
            with prometheus(config, tmp_path) as prom:

                def settled() -> dict[str, dict[str, Any]] | None:
                    found = targets(prom)
                    if len(found) == 7 and all(t["health"] != "unknown" for t in found.values()):
                        good = ("ours-mtls", "ours-basic", "theirs-mtls", "theirs-basic")
                        if all(found[name]["health"] == "up" for name in good):
                            return found
                    return None

                found = wait_for(settled, timeout=30, step=0.5)
                assert isinstance(found, dict)
                up = query(prom, "haproxy_up")
                web_config_ok = query(prom, "haproxy_egress_web_config_last_reload_successful")
    finally:
        origin.stop()
    assert found["ours-wrong-password"]["health"] == "down"
    assert "401" in found["ours-wrong-password"]["lastError"]
    assert found["ours-no-cert"]["health"] == "down"
    # Refused in the handshake. With TLS 1.3 the client may already have sent its request
    # when the server's alert arrives, and then Go reports the reset instead of the alert.
    no_cert = found["ours-no-cert"]["lastError"]
    assert "tls: certificate required" in no_cert or "connection reset by peer" in no_cert
    assert found["ours-plain-http"]["health"] == "down"
    assert "400" in found["ours-plain-http"]["lastError"]
    by_job = {r["metric"]["job"]: r["value"][1] for r in up}
    for name in ("ours-mtls", "ours-basic", "theirs-mtls", "theirs-basic"):
        assert by_job[name] == "1", (name, by_job)
    assert {r["metric"]["job"] for r in web_config_ok} == {"ours-mtls", "ours-basic"}


def test_promtool_accepts_the_output_over_tls(tmp_path: Path) -> None:
    """`promtool check metrics` on a body fetched over TLS: the same exposition, unchanged."""
    promtool = shutil.which("promtool")
    assert promtool
    pki = make_pki(tmp_path / "pki")
    web = write_config(
        tmp_path / "web.yml",
        {"tls_server_config": {"cert_file": str(pki.server[0]), "key_file": str(pki.server[1])}},
    )
    with serving(web) as server:
        result = subprocess.run(
            ["curl", "-sS", "--cacert", str(pki.ca), f"https://127.0.0.1:{server.port}/metrics"],
            capture_output=True,
            timeout=30,
            check=True,
        )
    check = subprocess.run(
        [promtool, "check", "metrics"],
        input=result.stdout,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert b"haproxy_up 0" in result.stdout
