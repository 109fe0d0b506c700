"""International names at the real proxy: a Host, absolute URI, CONNECT target or SNI with
bytes outside ASCII is refused (400, or a closed TLS connection), logged and counted, and never
reaches DNS; a rule written in Unicode matches the A-label a client sends."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from haproxy_egress.haproxy.cli import CliSocket
from tests.clienthello import client_hello
from tests.policy_proxy import PolicyProxy, exchange
from tests.support import DnsServer, free_port, wait_for

UTF8_NAMES = [
    "bücher.example",
    "bücher\u3002example",  # ideographic full stop
    "bücher\uff0eexample",  # fullwidth full stop
    "bücher\uff61example",  # halfwidth ideographic full stop
    "p\u0430ypal.example",  # mixed script: a Cyrillic a
]


def _route(name: str, mode: str, policy: list[str]) -> dict[str, object]:
    return dict(name=name, listen=f"127.0.0.1:{free_port()}", mode=mode, policy=policy)


@pytest.fixture
def proxy(tmp_path: Path, dns: DnsServer) -> Iterator[PolicyProxy]:
    dns.records["ok.example"] = ["192.0.2.1"]  # resolved, never connected to
    routes = [_route("pxy", "proxy", ["!bücher.example", "*"]), _route("sni", "tls", ["*"])]
    doc = {"resolvers": {"nameservers": [f"127.0.0.1:{dns.port}"]}, "routes": routes}
    p = PolicyProxy(tmp_path, doc).start()
    yield p
    p.stop()


def _port(proxy: PolicyProxy, route: str) -> int:
    assert proxy.config is not None
    return next(r.listen.port for r in proxy.config.routes if r.name == route)


def _refusals(proxy: PolicyProxy) -> list[dict[str, str]]:
    """Decision lines of names refused for bytes outside ASCII (the start-up probes of the
    listeners log lines of their own)."""
    return [d for d in proxy.decisions() if d["rule"] == "non-ascii"]


@pytest.mark.parametrize("name", UTF8_NAMES)
def test_connect_target_outside_ascii_is_a_400_logged_and_counted(
    proxy: PolicyProxy, dns: DnsServer, name: str
) -> None:
    target = name.encode() + b":443"
    reply = exchange(_port(proxy, "pxy"), b"CONNECT " + target + b" HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 "), reply
    assert b"not ASCII" in reply
    assert dns.queries == 0
    (line,) = wait_for(lambda: _refusals(proxy))
    assert (line["route"], line["verdict"]) == ("pxy", "deny")
    assert proxy.counters()[("pxy", "default", "non-ascii", "deny")] == 1


@pytest.mark.parametrize(
    "request_head",
    [
        "GET http://bücher.example/ HTTP/1.1\r\nHost: bücher.example\r\n",
        "GET http://ok.example/ HTTP/1.1\r\nHost: bücher.example\r\n",
        "GET http://bücher\uff0eexample/ HTTP/1.1\r\nHost: ok.example\r\n",
    ],
)
def test_plain_request_outside_ascii_is_a_400_and_no_lookup(
    proxy: PolicyProxy, dns: DnsServer, request_head: str
) -> None:
    raw = (request_head + "Connection: close\r\n\r\n").encode()
    errors = _request_errors(proxy, "pxy")  # the start-up probe's empty connection counts
    reply = exchange(_port(proxy, "pxy"), raw)
    assert reply.startswith(b"HTTP/1.1 400 "), reply
    assert dns.queries == 0
    # haproxy's HTTP parser refused it: logged without a decision, no destination chosen.
    log = proxy.log.read_text(errors="replace")
    assert " pxy pxy/<NOSRV> " in log
    wait_for(lambda: _request_errors(proxy, "pxy") > errors)


def _request_errors(proxy: PolicyProxy, frontend: str) -> int:
    """The frontend's `ereq` (haproxy_frontend_request_errors_total) from `show stat`."""
    stat = CliSocket(proxy.run.stats_socket, timeout=5).command("show stat")
    row = next(line.split(",") for line in stat.splitlines() if line.startswith(f"{frontend},"))
    return int(row[12])


@pytest.mark.parametrize("name", UTF8_NAMES)
def test_sni_outside_ascii_is_closed_logged_counted(
    proxy: PolicyProxy, dns: DnsServer, name: str
) -> None:
    with socket.create_connection(("127.0.0.1", _port(proxy, "sni")), timeout=5) as s:
        s.sendall(client_hello(name.encode()))
        assert s.recv(4096) == b""  # closed, nothing sent back
    assert dns.queries == 0
    (line,) = wait_for(lambda: _refusals(proxy))
    assert (line["route"], line["verdict"], line["dst"].split(":")[0]) == ("sni", "deny", "-")
    assert proxy.counters()[("sni", "default", "non-ascii", "deny")] == 1


def test_the_ascii_path_still_resolves(proxy: PolicyProxy, dns: DnsServer) -> None:
    """The control: the same requests in ASCII do reach the resolver."""
    with socket.create_connection(("127.0.0.1", _port(proxy, "sni")), timeout=5) as s:
        s.sendall(client_hello(b"ok.example"))
        s.recv(4096)
    assert dns.queries >= 1


def test_a_unicode_rule_matches_the_a_label_a_client_sends(proxy: PolicyProxy) -> None:
    reply = exchange(_port(proxy, "pxy"), b"CONNECT xn--bcher-kva.example:443 HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 403 "), reply
    assert b"rule 1 (!xn--bcher-kva.example)" in reply  # haproxy's files hold ASCII only
    (line,) = wait_for(
        lambda: [d for d in proxy.decisions() if d["dst"] == "xn--bcher-kva.example:443"]
    )
    assert (line["rule"], line["verdict"]) == ("1", "deny")
