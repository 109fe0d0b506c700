"""docs/metrics.md lists every metric the endpoint serves, and serves every one it lists.

A real router with a tcp route and a proxy route (one decision made, so the policy counters
exist) is scraped; the names in the page's tables (`process_*`-style rows stand for a prefix)
are compared with the names served, both ways for the router's own metrics.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.policy_proxy import get
from tests.router import Router
from tests.support import HttpOrigin, free_port, loopback_route, write_configmap
from tests.tlscerts import make_ca, make_crl, make_leaf

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
ROW = re.compile(r"^\| `((?:haproxy|process)_[a-z0-9_]*\*?)`", re.M)


def documented(text: str) -> set[str]:
    """The metric names (or `prefix_*` rows) in the first column of the page's tables."""
    return set(ROW.findall(text))


def served(body: str) -> set[str]:
    """The names a scrape announces: its samples', and every family's (a labelled counter
    nothing counted yet has no sample), counters with their `_total`."""
    families = list(text_string_to_metric_families(body))
    names = {s.name for f in families for s in f.samples}
    return names | {f.name + ("_total" if f.type == "counter" else "") for f in families}


def covered(name: str, names: set[str]) -> bool:
    return name in names or any(n.endswith("*") and name.startswith(n[:-1]) for n in names)


@pytest.mark.timeout(60)
def test_metrics_page_and_endpoint_agree(tmp_path: Path, origin: HttpOrigin) -> None:
    proxy = free_port()
    config = tmp_path / "config"
    # A TLS-originating route too, so the TLS families are served (its destination need not
    # answer: the families come from the material and the route's backend).
    pki = tmp_path / "pki"
    ca = make_ca(pki, "ca")
    mtls = tmp_path / "mtls"
    mtls.mkdir()
    cert, key = make_leaf(pki, "egress", ca, sans="DNS:egress", usage="clientAuth")
    (mtls / "tls.crt").write_bytes(cert.read_bytes())
    (mtls / "tls.key").write_bytes(key.read_bytes())
    tls = {
        "server_name": "partner.test",
        "ca_file": str(ca[0]),
        "client_cert_dir": str(mtls),
        "crl_file": str(make_crl(pki, ca)),
    }
    routes = [
        loopback_route("web", free_port(), origin.port),
        {"name": "pxy", "listen": f"127.0.0.1:{proxy}", "mode": "proxy", "policy": ["a.test"]},
        {**loopback_route("partner", free_port(), free_port(), mode="tcp"), "tls": tls},
    ]
    write_configmap(config, {"routes.yaml": {"version": 1, "routes": routes}})
    router = Router(tmp_path / "router", config_dir=config).start()
    try:
        assert b"403" in get(proxy, "198.51.100.7:80")  # one decision, so the counter exists
        body = requests.get(router.url("/metrics"), timeout=5).text
    finally:
        router.stop()
    text = DOC.read_text(encoding="utf-8")
    names = documented(text)
    assert "haproxy_egress_policy_decisions_total" in names
    undocumented = sorted(n for n in served(body) if not covered(n, names))
    assert not undocumented, f"served but not in docs/metrics.md: {undocumented}"
    own = text[text.index("## The router's own metrics") : text.index("### Policy: denied")]
    missing = sorted(n for n in documented(own) if "*" not in n and n not in served(body))
    assert not missing, f"in docs/metrics.md but not served: {missing}"
    assert "(examples below)" not in text
