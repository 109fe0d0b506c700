"""DNS-over-HTTPS resolvers at the real proxy: denied before any rule on proxy and tls routes
(a `*` does not let them through), named `doh` in the log line and the counters; a route with
`deny_doh: false` lets them through, and `!@doh` denies them as a numbered rule."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clienthello import client_hello
from tests.policy_proxy import PolicyProxy, connect_reply, get
from tests.support import DnsServer, HttpOrigin, free_port, wait_for

# Loopback answers, allowed by an address rule, so an opted-out route really connects.
RESOLVERS = ("dns.google", "cloudflare-dns.com", "dns.quad9.net")
POLICY = ["127.0.0.0/8", "*"]


@pytest.fixture
def proxy(tmp_path: Path, origin: HttpOrigin) -> Iterator[PolicyProxy]:
    dns = DnsServer(records={name: ["127.0.0.1"] for name in RESOLVERS}).start()

    def route(name: str, **extra: object) -> dict[str, object]:
        return {"name": name, "listen": f"127.0.0.1:{free_port()}", "mode": "proxy", **extra}

    doc = {
        "resolvers": {"nameservers": [f"127.0.0.1:{dns.port}"]},
        "routes": [
            route("pxy", policy=POLICY),
            route("open", policy=POLICY, deny_doh=False),
            route("explicit", policy=["!@doh", *POLICY], deny_doh=False),
            {
                "name": "sni",
                "listen": f"127.0.0.1:{free_port()}",
                "mode": "tls",
                "destination_port": origin.port,
                "policy": POLICY,
            },
        ],
    }
    p = PolicyProxy(tmp_path, doc).start()
    yield p
    p.stop()
    dns.stop()


def _port(proxy: PolicyProxy, route: str) -> int:
    assert proxy.config is not None
    return next(r.listen.port for r in proxy.config.routes if r.name == route)


def _decided(proxy: PolicyProxy, route: str, host: str) -> dict[str, str]:
    def found() -> dict[str, str] | None:
        for d in proxy.decisions():
            if d["route"] == route and d["dst"].startswith(f"{host}:"):
                return d
        return None

    line = wait_for(found)
    assert line is not None
    return line


@pytest.mark.parametrize("name", RESOLVERS)
def test_denied_by_default_despite_a_wildcard(
    proxy: PolicyProxy, origin: HttpOrigin, name: str
) -> None:
    head = connect_reply(_port(proxy, "pxy"), f"{name}:{origin.port}")
    assert head.startswith(b"HTTP/1.1 403 "), head
    line = _decided(proxy, "pxy", name)
    assert (line["rule"], line["verdict"]) == ("doh", "deny")
    assert proxy.counters()[("pxy", "default", "doh", "deny")] == 1


def test_plain_http_to_a_resolver_is_denied_too(proxy: PolicyProxy, origin: HttpOrigin) -> None:
    reply = get(_port(proxy, "pxy"), f"dns.google:{origin.port}")
    assert reply.startswith(b"HTTP/1.1 403 "), reply
    assert b"dns.google is a DNS-over-HTTPS resolver (@doh): route pxy denies" in reply


def test_a_route_that_opts_out_lets_them_through(proxy: PolicyProxy, origin: HttpOrigin) -> None:
    head = connect_reply(_port(proxy, "open"), f"dns.google:{origin.port}")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert _decided(proxy, "open", "dns.google")["verdict"] == "allow"


def test_the_rule_word_denies_as_a_numbered_rule(proxy: PolicyProxy, origin: HttpOrigin) -> None:
    head = connect_reply(_port(proxy, "explicit"), f"dns.quad9.net:{origin.port}")
    assert head.startswith(b"HTTP/1.1 403 "), head
    line = _decided(proxy, "explicit", "dns.quad9.net")
    assert (line["rule"], line["verdict"]) == ("1", "deny")


def test_tls_route_closes_a_resolver_sni(proxy: PolicyProxy) -> None:
    with socket.create_connection(("127.0.0.1", _port(proxy, "sni")), timeout=5) as s:
        s.sendall(client_hello(b"cloudflare-dns.com"))
        assert s.recv(4096) == b""
    line = _decided(proxy, "sni", "cloudflare-dns.com")
    assert (line["rule"], line["verdict"]) == ("doh", "deny")
    assert proxy.counters()[("sni", "default", "doh", "deny")] == 1
