"""Border policy at the real proxy: address classes in every spelling, the router's own ports,
client groups by source address, report-only lists, limits and SNI matching.

Origins and the DNS server are on loopback; clients use several loopback source addresses
(127.0.0.2, 127.0.0.3, ...) for client groups (tests/system/test_netns_policy.py does the same
across network namespaces). Every route connects from `source 127.0.0.1`, so an address that is
not loopback cannot be reached even if a refusal failed: nothing leaves the machine.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.netns_policy import CountingOrigin, self_signed
from tests.policy_proxy import PolicyProxy, connect_head, connect_reply, exchange, get
from tests.support import DnsServer, free_port, wait_for

# name → answers: one name per class, in IPv4, IPv6 and embedded spellings.
RECORDS = {
    "lo4.test": ["127.0.0.1"],
    "lo6.test": ["::1"],
    "mapped.test": ["::ffff:7f00:1"],  # dnslib wants hex groups
    "compat.test": ["::7f00:1"],
    "nat64.test": ["64:ff9b::7f00:1"],
    "sixtofour.test": ["2002:7f00:1::"],
    "meta.test": ["169.254.169.254"],
    "meta6.test": ["fd00:ec2::254"],
    "ll.test": ["169.254.1.1"],
    "ll6.test": ["fe80::1"],
    "cgnat.test": ["100.64.0.1"],
    "cgnat6.test": ["2002:6440:1::"],
    "zero.test": ["0.0.0.1"],
    "reserved.test": ["240.0.0.1"],
    "bcast.test": ["255.255.255.255"],
    "mcast.test": ["224.0.0.1"],
    "mcast6.test": ["ff02::1"],
    "teredo.test": ["2001::1"],
    "nat64local.test": ["64:ff9b:1::1"],
    "private.test": ["10.1.2.3"],
    "a.good.test": ["127.0.0.1"],
    "b.good.test": ["127.0.0.1"],
    "evil.test": ["127.0.0.1"],
}
NAMES = {
    "lo4.test": "loopback",
    "lo6.test": "loopback",
    "mapped.test": "loopback",
    "compat.test": "loopback",
    "nat64.test": "loopback",
    "sixtofour.test": "loopback",
    "meta.test": "metadata",
    "meta6.test": "metadata",
    "ll.test": "link-local",
    "ll6.test": "link-local",
    "cgnat.test": "cgnat",
    "cgnat6.test": "cgnat",
    "zero.test": "this-network",
    "reserved.test": "reserved",
    "bcast.test": "broadcast",
    "mcast.test": "multicast",
    "mcast6.test": "multicast",
    "teredo.test": "teredo",
    "nat64local.test": "nat64-local",
}
LITERALS = {
    "127.0.0.1": "loopback",
    "127.9.9.9": "loopback",
    "[::1]": "loopback",
    "[::ffff:127.0.0.1]": "loopback",
    "[::ffff:7f00:1]": "loopback",
    "[::127.0.0.1]": "loopback",
    "[64:ff9b::7f00:1]": "loopback",
    "[2002:7f00:1::]": "loopback",
    "[::]": "unspecified",
    "0.0.0.0": "this-network",
    "100.64.0.1": "cgnat",
    "[::ffff:100.64.0.1]": "cgnat",
    "[2002:6440:1::]": "cgnat",
    "169.254.169.254": "metadata",
    "[64:ff9b::a9fe:a9fe]": "metadata",
    "[::ffff:169.254.169.254]": "metadata",
    "100.100.100.200": "metadata",
    "255.255.255.255": "broadcast",
    "224.0.0.1": "multicast",
    "[ff02::1]": "multicast",
    "240.0.0.1": "reserved",
    "[2001::1]": "teredo",
    "[64:ff9b:1::1]": "nat64-local",
}
# inet_aton spellings of 127.0.0.1: haproxy takes them for names, which do not resolve.
ODD_SPELLINGS = ("127.1", "2130706433", "0x7f000001", "017700000001")


@dataclass(frozen=True)
class Border:
    """The module's one policy proxy, the listen port of each route, and the origins."""

    proxy: PolicyProxy
    ports: dict[str, int]
    origin: CountingOrigin
    tls: CountingOrigin
    cert: tuple[Path, Path]  # the TLS origin's (certificate, key)


@pytest.fixture(scope="module")
def border(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Border]:
    tmp = tmp_path_factory.mktemp("border")
    dns = DnsServer(records=dict(RECORDS)).start()
    origin = CountingOrigin("origin", "127.0.0.1", free_port()).start()
    tls_port = free_port()
    cert = self_signed(tmp, ["a.good.test", "b.good.test", "evil.test"])
    tls = CountingOrigin("tls", "127.0.0.1", tls_port, tls=cert).start()
    ports: dict[str, int] = {}
    while len(set(ports.values())) < 9:
        ports = {
            n: free_port()
            for n in (
                "guard",
                "opened",
                "private",
                "groups",
                "report",
                "tunnels",
                "rate",
                "sni",
                "x",
            )
        }
    base = {"mode": "proxy", "source": "127.0.0.1"}
    doc = {
        "resolvers": {"nameservers": [f"127.0.0.1:{dns.port}"], "timeout": "200ms"},
        "routes": [
            {**base, "name": "guard", "listen": f"127.0.0.1:{ports['guard']}", "policy": ["*"]},
            {
                **base,
                "name": "opened",
                "listen": f"127.0.0.1:{ports['opened']}",
                "policy": ["127.0.0.0/8", "*"],
            },
            {
                **base,
                "name": "private",
                "listen": f"127.0.0.1:{ports['private']}",
                "guard": ["default", "private"],
                "policy": ["*"],
            },
            {
                **base,
                "name": "groups",
                "listen": f"127.0.0.1:{ports['groups']}",
                "clients": [
                    {"name": "ci", "from": ["127.0.0.2/32"], "policy": ["127.0.0.1"]},
                    {"name": "trial", "from": ["127.0.0.4/32"], "policy": ["!127.0.0.1"]},
                ],
                "policy": ["!127.0.0.0/8"],
            },
            {
                **base,
                "name": "report",
                "listen": f"127.0.0.1:{ports['report']}",
                "enforce": False,
                "guard": ["default", "-loopback"],
                "policy": ["!127.0.0.1", "!*.nope.test"],
            },
            {
                **base,
                "name": "tunnels",
                "listen": f"127.0.0.1:{ports['tunnels']}",
                "limits": {"tunnels": 2},
                "policy": ["127.0.0.1"],
            },
            {
                **base,
                "name": "rate",
                "listen": f"127.0.0.1:{ports['rate']}",
                "limits": {"connection_rate": 3, "request_rate": 4, "period": "30s"},
                "policy": ["127.0.0.1"],
            },
            {
                **base,
                "name": "sni",
                "listen": f"127.0.0.1:{ports['sni']}",
                "connect_sni": "match",
                "connect_sni_ports": [tls_port],
                "guard": ["default", "-loopback"],
                "policy": ["*.good.test", "evil.test:1"],
            },
        ],
    }
    proxy = PolicyProxy(tmp, doc)
    try:
        proxy.start()
        yield Border(proxy, ports, origin, tls, cert)
    finally:
        proxy.stop()
        tls.stop()
        origin.stop()
        dns.stop()


def _logged(proxy: PolicyProxy, route: str, *fields: str) -> set[tuple[str, ...]]:
    """The (rule, verdict) (or other `fields`) of the route's decision log lines."""
    names = fields or ("rule", "verdict")
    return {tuple(d[f] for f in names) for d in proxy.decisions() if d["route"] == route}


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.") else 0


def _route(border: Border, name: str) -> tuple[PolicyProxy, int, CountingOrigin]:
    """The shared proxy, the listen port of route `name`, and the counting origin."""
    return border.proxy, border.ports[name], border.origin


def test_every_class_and_spelling_is_refused_and_never_reached(border: Border) -> None:
    proxy, port, origin = _route(border, "guard")
    before = origin.accepted
    for host, klass in {**NAMES, **LITERALS}.items():
        authority = f"{host}:{origin.port}"
        reply = get(port, authority)
        assert _status(reply) == 403, (host, reply[:200])
        assert f"in address class {klass}".encode() in reply, (host, reply[:300])
        head = connect_reply(port, authority)
        assert _status(head) == 403, (host, head)
        assert f"class {klass}".encode() in head, (host, head)
    for host in ODD_SPELLINGS:
        assert _status(get(port, f"{host}:{origin.port}")) == 503, host
    assert origin.accepted == before  # not one connection reached the origin
    wanted = {("guard-loopback", "deny"), ("guard-cgnat", "deny")}
    wait_for(lambda: wanted <= _logged(proxy, "guard"), 5)
    wait_for(lambda: proxy.counters().get(("guard", "default", "guard-metadata", "deny")), 5)


def test_an_address_rule_opens_a_class_but_never_the_router_itself(
    border: Border,
) -> None:
    proxy, port, origin = _route(border, "opened")
    before = origin.accepted
    assert _status(get(port, f"127.0.0.1:{origin.port}")) == 200
    # Judged as IPv4, so rule 1 allows it (the connect then fails: the source is IPv4).
    assert _status(get(port, f"[::ffff:127.0.0.1]:{origin.port}")) == 503
    mapped = {("::ffff:127.0.0.1:" + str(origin.port), "1", "allow")}
    wait_for(lambda: mapped <= _logged(proxy, "opened", "dst", "rule", "verdict"), 5)
    wait_for(lambda: origin.accepted == before + 1, 5)  # counted in the accept thread
    # The address rule names 127.0.0.0/8, but never the router's own listeners.
    _, guard, _ = _route(border, "guard")
    for own in (port, guard):
        reply = get(port, f"127.0.0.1:{own}")
        assert _status(reply) == 403, reply
        assert b"is the router itself" in reply, reply
        assert _status(connect_reply(port, f"127.0.0.1:{own}")) == 403
    assert ("opened", "default", "guard-self", "deny") in proxy.counters()


def test_private_is_opt_in(border: Border) -> None:
    ports = border.ports
    assert _status(get(ports["guard"], "private.test:80")) != 403
    reply = get(ports["private"], "private.test:80")
    assert _status(reply) == 403
    assert b"address class private" in reply


def test_client_groups_by_source_address(border: Border) -> None:
    proxy, port, origin = _route(border, "groups")
    target = f"127.0.0.1:{origin.port}"
    before = origin.accepted
    assert _status(get(port, target, source="127.0.0.2")) == 200  # group ci
    assert _status(get(port, target, source="127.0.0.3")) == 403  # the route's own list
    reply = get(port, target, source="127.0.0.4")  # group trial
    assert _status(reply) == 403
    assert b"rule 1 (!127.0.0.1) (client group trial)" in reply
    wait_for(lambda: origin.accepted == before + 1, 5)  # counted in the accept thread
    wanted = {("ci", "allow"), ("default", "deny"), ("trial", "deny")}
    wait_for(lambda: wanted <= _logged(proxy, "groups", "group", "verdict"), 5)
    counters = proxy.counters()
    assert counters[("groups", "ci", "1", "allow")] >= 1
    assert counters[("groups", "trial", "1", "deny")] >= 1


def test_report_mode_allows_logs_and_counts_but_keeps_the_guard(
    border: Border,
) -> None:
    proxy, port, origin = _route(border, "report")
    before = origin.accepted
    assert _status(get(port, f"127.0.0.1:{origin.port}")) == 200  # rule 1 would deny
    assert _status(connect_reply(port, f"127.0.0.1:{origin.port}")) == 200
    # The origin counts in its own accept thread, which may run just after the 200.
    wait_for(lambda: origin.accepted == before + 2, 5)
    reply = get(port, "169.254.169.254:80")  # the address classes still refuse
    assert _status(reply) == 403
    assert b"class metadata" in reply
    wanted = {("1", "would-deny"), ("guard-metadata", "deny")}
    wait_for(lambda: wanted <= _logged(proxy, "report"), 5)
    wait_for(lambda: proxy.counters().get(("report", "default", "1", "would-deny")) == 2, 5)


def test_tunnel_limit(border: Border) -> None:
    proxy, port, origin = _route(border, "tunnels")
    held = []
    try:
        for _ in range(2):
            s, head = connect_head(port, f"127.0.0.1:{origin.port}")
            held.append(s)
            assert _status(head) == 200, head
        s, head = connect_head(port, f"127.0.0.1:{origin.port}")
        held.append(s)
        assert _status(head) == 503, head
        assert b"at most 2 CONNECT tunnels" in head, head
    finally:
        for s in held:
            s.close()
    assert proxy.counters()[("tunnels", "default", "limit-tunnels", "deny")] == 1
    # Once the tunnels are gone, new ones are let in again.
    wait_for(lambda: _status(connect_reply(port, f"127.0.0.1:{origin.port}")) == 200, 5)


def test_connection_and_request_rate_limits(border: Border) -> None:
    proxy, port, origin = _route(border, "rate")
    target = f"127.0.0.1:{origin.port}"
    replies = [get(port, target, source="127.0.0.5") for _ in range(4)]
    assert [_status(r) for r in replies] == [200, 200, 200, 429]
    assert b"at most 3 connections per 30s from 127.0.0.5" in replies[3]
    # Another client address has its own count; requests on one keep-alive connection.
    request = f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
    statuses = []
    with socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.6", 0)) as s:
        s.settimeout(5)
        for _ in range(5):
            s.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(1)
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            body = b""
            while len(body) < length:
                body += s.recv(length - len(body))
            statuses.append(_status(head))
    assert statuses == [200, 200, 200, 200, 429]
    counters = proxy.counters()
    assert counters[("rate", "default", "limit-connection-rate", "deny")] == 1
    assert counters[("rate", "default", "limit-request-rate", "deny")] == 1


def _tls_through(port: int, connect_to: str, sni: str, cert: Path) -> bytes:
    """CONNECT, then TLS with `sni` inside the tunnel and one request; b"" if closed."""
    s, head = connect_head(port, connect_to)
    with s:
        if _status(head) != 200:
            return head
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        try:
            with context.wrap_socket(s, server_hostname=sni) as tls:
                tls.sendall(f"GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
                return data
        except (ssl.SSLError, OSError):
            return b""


def test_sni_must_match_the_connect_host(border: Border) -> None:
    proxy, tls = border.proxy, border.tls
    cert = border.cert[0]
    port = border.ports["sni"]
    before = tls.accepted
    assert b"200 OK" in _tls_through(port, f"a.good.test:{tls.port}", "a.good.test", cert)
    # Another name the same rule allows.
    assert b"200 OK" in _tls_through(port, f"a.good.test:{tls.port}", "b.good.test", cert)
    assert tls.accepted == before + 2
    # Domain fronting through an allowed name: closed before any upstream connection.
    assert _tls_through(port, f"a.good.test:{tls.port}", "evil.test", cert) == b""
    time.sleep(0.2)
    assert tls.accepted == before + 2
    wait_for(lambda: ("sni-mismatch", "deny") in _logged(proxy, "sni"), 5)
    assert proxy.counters()[("sni", "default", "sni-mismatch", "deny")] == 1
    # Ports that are not TLS ports are not held back: the 200 still waits for the upstream.
    reply = exchange(port, f"CONNECT a.good.test:{free_port()} HTTP/1.1\r\n\r\n".encode())
    assert not reply.startswith(b"HTTP/1.1 200"), reply
