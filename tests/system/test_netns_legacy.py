"""Legacy dialects end to end: client ns → haproxy in the router ns → origins in the external ns.

Each example line of the issue, given as the env var or as a ConfigMap key, must reach the right
host and port; the origin must see EGRESS_SOURCE as the peer; a DNS-proxy name must follow an
address change at runtime. The router namespace does not forward packets, so every answer the
client gets went through haproxy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import (
    ROUTER_CLIENT_IP,
    ROUTER_EXTERNAL_IP,
    TestBed,
    available,
    start_in,
)
from tests.netns_policy import start_router
from tests.router import stopped_after
from tests.support import DnsServer, HttpOrigin, http_get, wait_for

pytestmark = pytest.mark.netns

_why_not = available()


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[TestBed]:
    """A fresh client → router → external bed, torn down with everything it started."""
    if _why_not:
        pytest.fail(f"{_why_not} (the tests run as root through ./dev.sh test)")
    with TestBed(tmp_path) as testbed:
        yield testbed


@pytest.fixture
def origins() -> Iterator[list[HttpOrigin]]:
    """Origins a test starts (inside the external namespace); stopped in teardown."""
    yield from stopped_after(list[HttpOrigin]())


def _origin(bed: TestBed, origins: list[HttpOrigin], name: str, host: str, port: int) -> HttpOrigin:
    origin = start_in(bed.external, HttpOrigin(name, host=host, port=port))
    origins.append(origin)
    return origin


def _get(bed: TestBed, port: int) -> str:
    with bed.client.entered():
        return http_get(port, host=ROUTER_CLIENT_IP)


def _split(name: str, text: str, as_file: bool) -> tuple[dict[str, object], dict[str, str]]:
    """The legacy value as a ConfigMap key or as an env var."""
    return ({name: text}, {}) if as_file else ({}, {name: text})


@pytest.mark.parametrize("as_file", [False, True], ids=["env", "configmap-key"])
def test_redirect_mode_from_egress_source(
    bed: TestBed, tmp_path: Path, as_file: bool, origins: list[HttpOrigin]
) -> None:
    source = bed.add_router_source()
    web, alt = bed.add_external_host(), bed.add_external_host()
    web_origin = _origin(bed, origins, "web", web, 80)
    alt_origin = _origin(bed, origins, "alt", alt, 80)
    # The two forms, written with a tab, an inline comment and CRLF line endings, which
    # the original scripts refused.
    text = f"# egress routes\r\n80 tcp {web}\r\n8080\ttcp {alt} 80   # alt site\r\n"
    keys, env = _split("EGRESS_DESTINATION", text, as_file)
    env |= {"EGRESS_SOURCE": source, "EGRESS_GATEWAY": "198.18.2.254"}
    start_router(bed, tmp_path, keys, env, [80, 8080])

    assert not bed.client.connectable(web, 80), "the router namespace must not forward"
    for _ in range(3):
        assert _get(bed, 80) == "web"
        assert _get(bed, 8080) == "alt"
    assert web_origin.peers == [source] * 3
    assert alt_origin.peers == [source] * 3


def test_without_egress_source_the_peer_is_the_router_interface(
    bed: TestBed, tmp_path: Path, origins: list[HttpOrigin]
) -> None:
    """The control for the test above: the source address is EGRESS_SOURCE's doing."""
    bed.add_router_source()  # present on the interface, but not configured
    web = bed.add_external_host()
    web_origin = _origin(bed, origins, "web", web, 80)
    start_router(bed, tmp_path, {}, {"EGRESS_DESTINATION": f"80 tcp {web}"}, [80])
    assert _get(bed, 80) == "web"
    assert web_origin.peers == [ROUTER_EXTERNAL_IP]


def _stop_dns(dns: DnsServer) -> None:
    """Stop the DNS server and close its socket (DnsServer.stop leaves it to the GC, which
    `filterwarnings = error` turns into a failure)."""
    server = dns._server
    dns.stop()
    if server is not None:
        server.server.server_close()


@pytest.fixture
def dns_in_router(bed: TestBed) -> Iterator[DnsServer]:
    """A DNS server on 127.0.0.1 of the router namespace, where haproxy's resolvers ask."""
    dns = start_in(bed.router, DnsServer())
    yield dns
    _stop_dns(dns)


def _dns_proxy_router(
    bed: TestBed, tmp_path: Path, dns: DnsServer, origins: list[HttpOrigin], as_file: bool
) -> tuple[str, list[str]]:
    """The issue's four DNS-proxy forms in front of five origins; returns (source, hosts)."""
    source = bed.add_router_source()
    hosts = [bed.add_external_host() for _ in range(5)]
    _origin(bed, origins, "ip-same-port", hosts[0], 80)
    _origin(bed, origins, "ip-other-port", hosts[1], 80)
    _origin(bed, origins, "name-same-port", hosts[2], 100)
    _origin(bed, origins, "name-before", hosts[3], 443)
    _origin(bed, origins, "name-after", hosts[4], 443)
    dns.records.update({"example.test": [hosts[2]], "foobar.test": [hosts[3]]})
    text = (
        f"80 {hosts[0]}\n"
        f"8080 {hosts[1]} 80\n"
        "100 example.test\n"
        "8443\tfoobar.test\t443 # follows DNS\n"
    )
    keys, env = _split("EGRESS_DNS_PROXY_DESTINATION", text, as_file)
    keys["resolvers.yaml"] = {
        "resolvers": {"nameservers": [f"127.0.0.1:{dns.port}"], "hold_valid": "1s"}
    }
    env["EGRESS_SOURCE"] = source
    start_router(bed, tmp_path, keys, env, [80, 8080, 100, 8443])
    return source, hosts


@pytest.mark.parametrize("as_file", [False, True], ids=["env", "configmap-key"])
def test_dns_proxy_mode_carries_every_form(
    bed: TestBed,
    tmp_path: Path,
    as_file: bool,
    origins: list[HttpOrigin],
    dns_in_router: DnsServer,
) -> None:
    source, _ = _dns_proxy_router(bed, tmp_path, dns_in_router, origins, as_file)
    assert _get(bed, 80) == "ip-same-port"
    assert _get(bed, 8080) == "ip-other-port"
    # Names resolve at runtime (init-addr none), so the first answers may take a moment.
    wait_for(lambda: _get(bed, 100) == "name-same-port", timeout=15)
    wait_for(lambda: _get(bed, 8443) == "name-before", timeout=15)
    assert dns_in_router.queries > 0
    for origin in origins[:4]:
        assert origin.peers
        assert set(origin.peers) == {source}


def test_dns_proxy_name_follows_an_address_change(
    bed: TestBed, tmp_path: Path, origins: list[HttpOrigin], dns_in_router: DnsServer
) -> None:
    source, hosts = _dns_proxy_router(bed, tmp_path, dns_in_router, origins, as_file=False)
    wait_for(lambda: _get(bed, 8443) == "name-before", timeout=15)
    started = time.monotonic()
    dns_in_router.records["foobar.test"] = [hosts[4]]
    wait_for(lambda: _get(bed, 8443) == "name-after", timeout=15, step=0.2)
    first = time.monotonic() - started
    # The new address takes a free slot at the next resolution; the old one keeps its slot
    # until the template's `hold obsolete` (30s) passes, so both answer for a while.
    wait_for(
        lambda: [_get(bed, 8443) for _ in range(4)] == ["name-after"] * 4,
        timeout=60,
        step=1.0,
    )
    logging.getLogger(__name__).info(
        "new address answered after %.1fs, old one gone after %.1fs",
        first,
        time.monotonic() - started,
    )
    after = origins[4]
    assert after.peers
    assert set(after.peers) == {source}
