"""The policy proxy end to end: client ns → haproxy (router ns) → origins (external ns).

Names resolve through a DNS server the test runs in the router namespace; the router does not
forward packets, so whatever reaches an origin went through haproxy. Every denied case also
checks the origin behind the denied name accepted no connection at all.
"""

from __future__ import annotations

import socket as _socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from haproxy_egress.haproxy.cli import CliSocket
from tests.netns import ROUTER_CLIENT_IP, TestBed, available, start_in
from tests.netns_policy import (
    V6_EXTERNAL,
    CountingOrigin,
    add_ipv6,
    connect_tunnel,
    https_get_via_tunnel,
    proxy_get,
    self_signed,
    show_table,
    start_router,
)
from tests.support import DnsServer, wait_for

pytestmark = pytest.mark.netns

_why_not = available()
STRICT, OPEN, TLS, GROUPS = 8080, 8081, 8443, 8082
# More addresses of the client namespace: each is a client of its own client group.
CI_CLIENT, OPS_CLIENT = "198.18.1.3", "198.18.1.4"


@dataclass
class World:
    """The running bed: origins by role, the DNS server, haproxy's run dir."""

    bed: TestBed
    dns: DnsServer
    run_dir: Path
    good: CountingOrigin
    good_tls: CountingOrigin
    exact: CountingOrigin
    denied: CountingOrigin
    denied_tls: CountingOrigin
    cidr: CountingOrigin
    v6: CountingOrigin
    loopback: CountingOrigin
    flaky: CountingOrigin
    cafile: Path

    def get(self, url: str, port: int = STRICT) -> tuple[int, bytes]:
        host = url.split("/")[2]
        reply = proxy_get(self.bed.client, (ROUTER_CLIENT_IP, port), url, host)
        return reply.status, reply.body


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    if _why_not:
        pytest.fail(f"{_why_not} (the tests run as root through ./dev.sh test)")
    started: list[CountingOrigin] = []
    with TestBed(tmp_path) as bed:
        add_ipv6(bed)
        hosts = [bed.add_external_host() for _ in range(8)]
        dns = start_in(bed.router, DnsServer(port=53))
        cert, key = self_signed(tmp_path, ["tls.good.test", "notlisted.test"])

        def origin(name: str, host: str, port: int, tls: bool = False) -> CountingOrigin:
            o = CountingOrigin(name, host, port, (cert, key) if tls else None)
            o = start_in(bed.external, o)
            started.append(o)
            return o

        try:
            w = World(
                bed,
                dns,
                tmp_path / "run",
                good=origin("good", hosts[0], 80),
                good_tls=origin("good-tls", hosts[0], 443, tls=True),
                exact=origin("exact", hosts[1], 80),
                denied=origin("denied", hosts[2], 80),
                denied_tls=origin("denied-tls", hosts[2], 443, tls=True),
                cidr=origin("cidr", hosts[6], 80),
                v6=origin("v6", V6_EXTERNAL, 80),
                loopback=start_in(bed.router, CountingOrigin("loopback", "127.0.0.1", 80)),
                flaky=start_in(bed.external, CountingOrigin("flaky", hosts[3], 80, None, 1)),
                cafile=cert,
            )
            started.extend((w.loopback, w.flaky))
            dns.records.update(
                {
                    "good.test": [hosts[0]],
                    "www.good.test": [hosts[0]],
                    "tls.good.test": [hosts[0]],
                    "exact.test": [hosts[1]],
                    "sub.exact.test": [hosts[2]],
                    "notlisted.test": [hosts[2]],
                    "x.bad.test": [hosts[2]],
                    "cidr.test": [hosts[6]],
                    "dead.good.test": [hosts[7]],
                    "flaky.good.test": [hosts[3]],
                    "rebind.good.test": ["127.0.0.1"],
                    "meta.good.test": ["169.254.169.254"],
                }
            )
            keys = {
                "routes.yaml": {
                    "resolvers": {"nameservers": ["127.0.0.1:53"], "hold_valid": "10s"},
                    "routes": [
                        {
                            "name": "groups",
                            "listen": GROUPS,
                            "mode": "proxy",
                            "clients": [
                                {
                                    "name": "ci",
                                    "from": [f"{CI_CLIENT}/32"],
                                    "policy": ["*.good.test"],
                                },
                                {
                                    "name": "ops",
                                    "from": [f"{OPS_CLIENT}/32"],
                                    "policy": ["exact.test"],
                                },
                            ],
                            "policy": ["cidr.test"],
                        },
                        {
                            "name": "strict",
                            "listen": STRICT,
                            "mode": "proxy",
                            "connect_timeout": "1s",
                            "policy": [
                                "!*.bad.test",
                                "*.good.test",
                                "exact.test:80",
                                "198.18.2.16/28",
                                "[2001:2:0:2::/64]:80",
                            ],
                        },
                        {
                            "name": "open",
                            "listen": OPEN,
                            "mode": "proxy",
                            "policy": ["!*.bad.test", "!198.18.2.11", "*"],
                        },
                        {
                            "name": "sni",
                            "listen": TLS,
                            "mode": "tls",
                            "destination_port": 443,
                            "policy": ["*.good.test"],
                        },
                    ],
                }
            }
            for client in (CI_CLIENT, OPS_CLIENT):
                bed.client.run("ip", "addr", "add", f"{client}/24", "dev", "to-router")
            _, run_dir = start_router(bed, tmp_path, keys, {}, [STRICT, OPEN, TLS, GROUPS])
            w.run_dir = run_dir
            yield w
        finally:
            for o in started:
                o.stop()
            dns.stop()


def test_allowed_names_wildcards_cidr_and_ipv6(world: World) -> None:
    assert world.get("http://www.good.test/a") == (200, b"good /a")
    assert world.get("http://good.test/") == (200, b"good /")  # *.x covers x itself
    assert world.get("http://exact.test/") == (200, b"exact /")
    assert world.get("http://cidr.test/") == (200, b"cidr /")  # by its resolved address
    assert world.get("http://198.18.2.16/lit") == (200, b"cidr /lit")
    assert world.get(f"http://[{V6_EXTERNAL}]/six") == (200, b"v6 /six")
    assert world.get("http://good.test") == (200, b"good /")  # no path: origin form "/"


def test_denied_names_never_reach_the_origin(world: World) -> None:
    for url in (
        "http://notlisted.test/",
        "http://sub.exact.test/",  # exact.test is not a wildcard
        "http://exact.test:8080/",  # the rule is limited to port 80
        "http://x.bad.test/",
        "http://198.18.2.12/",
    ):
        status, body = world.get(url)
        assert status == 403, (url, status, body)
    status, body = world.get("http://x.bad.test/", port=OPEN)
    assert status == 403
    assert b"rule 1 (!*.bad.test)" in body
    status, body = world.get("http://exact.test/", port=OPEN)  # !198.18.2.11 before *
    assert status == 403
    assert b"rule 2 (!198.18.2.11)" in body
    assert world.get("http://notlisted.test/", port=OPEN) == (200, b"denied /")
    world.denied.accepted = 0  # the control above did connect; now only denials follow
    for authority in ("notlisted.test:443", "x.bad.test:443", "198.18.2.12:80"):
        with connect_tunnel(world.bed.client, (ROUTER_CLIENT_IP, STRICT), authority) as (r, _):
            assert r.status == 403, (authority, r)
    assert world.denied.accepted == 0
    assert world.denied_tls.accepted == 0


def test_unresolvable_is_503(world: World) -> None:
    status, body = world.get("http://nx.good.test/")
    assert status == 503
    assert b"cannot resolve nx.good.test" in body


def test_rebinding_to_loopback_or_metadata_is_denied(world: World) -> None:
    for url in ("http://rebind.good.test/", "http://meta.good.test/", "http://127.0.0.1/"):
        status, body = world.get(url, port=OPEN)
        assert status == 403, (url, body)
    assert b"in address class loopback" in body or b"no rule" in body
    assert world.loopback.accepted == 0


def test_connect_to_tls_origin_end_to_end(world: World) -> None:
    proxy = (ROUTER_CLIENT_IP, STRICT)
    with connect_tunnel(world.bed.client, proxy, "tls.good.test:443") as (reply, sock):
        assert reply.status == 200
        assert reply.head.startswith(b"HTTP/1.1 200 Connection established")
        answer = https_get_via_tunnel(sock, "tls.good.test", world.cafile, "/secret")
    assert (answer.status, answer.body) == (200, b"good-tls /secret")


def test_dead_origin_gets_no_fake_200(world: World) -> None:
    proxy = (ROUTER_CLIENT_IP, STRICT)
    started = time.monotonic()
    with connect_tunnel(world.bed.client, proxy, "dead.good.test:443") as (reply, _):
        assert reply.status != 200, reply
    assert time.monotonic() - started < 8


def test_dead_origin_get_fails_at_once(world: World) -> None:
    """A GET (which may use pooled connections and be replayed once on an empty response) to
    an origin that refuses the connection is not retried: 503 at once, not after haproxy's
    one-second retry pause."""
    started = time.monotonic()
    status, _ = world.get("http://dead.good.test/")
    assert status == 503
    assert time.monotonic() - started < 0.9


def test_sni_passthrough(world: World) -> None:
    def handshake(server_name: str | None) -> bytes | None:
        with world.bed.client.entered():
            raw = _socket.create_connection((ROUTER_CLIENT_IP, TLS), timeout=5)
        context = ssl.create_default_context(cafile=str(world.cafile))
        if server_name is None:
            context.check_hostname = False
        try:
            with context.wrap_socket(raw, server_hostname=server_name) as tls:
                tls.sendall(b"GET /sni HTTP/1.1\r\nHost: x\r\n\r\n")
                return tls.recv(4096)
        except (ssl.SSLError, OSError):
            return None
        finally:
            raw.close()

    answer = handshake("tls.good.test")
    assert answer is not None
    assert answer.endswith(b"good-tls /sni")
    world.denied_tls.accepted = 0
    assert handshake("notlisted.test") is None
    assert handshake(None) is None
    with world.bed.client.entered():
        raw = _socket.create_connection((ROUTER_CLIENT_IP, TLS), timeout=5)
    with raw:
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not TLS at all
        raw.settimeout(12)
        assert raw.recv(100) == b""
    assert world.denied_tls.accepted == 0
    counters = show_table(world.run_dir, "_egress_policy")
    assert counters.get("sni/default/1/allow") == 1
    assert counters.get("sni/default/default/deny") == 1
    assert counters.get("sni/default/no-sni/deny", 0) >= 2


def test_counters_and_dns_cache(world: World) -> None:
    for _ in range(5):
        assert world.get("http://www.good.test/")[0] == 200
    assert world.get("http://notlisted.test/")[0] == 403
    counters = show_table(world.run_dir, "_egress_policy")
    assert counters["strict/default/2/allow"] == 5
    assert counters["strict/default/default/deny"] == 1
    cache = show_table(world.run_dir, "_egress_dns")
    assert "www.good.test" in cache
    queries = world.dns.queries
    for _ in range(5):
        assert world.get("http://www.good.test/")[0] == 200
    assert world.dns.queries == queries, "answers are cached for hold valid"


def test_keep_alive_requests_to_two_hosts_go_to_each(world: World) -> None:
    with world.bed.client.entered():
        sock = _socket.create_connection((ROUTER_CLIENT_IP, STRICT), timeout=5)
    with sock:
        got = []
        for url, host in (
            ("http://good.test/1", "good.test"),
            ("http://exact.test/2", "exact.test"),
        ):
            sock.sendall(f"GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while not data.endswith((b"/1", b"/2")):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            got.append(data.rsplit(b"\r\n\r\n", 1)[-1])
    assert got == [b"good /1", b"exact /2"]


def test_new_connections_share_origin_connections_only_per_destination(world: World) -> None:
    """Like squid's persistent connections, a new client connection may reuse an idle
    connection to the same origin address; requests still reach exactly the host they name."""
    good, exact = world.good.accepted, world.exact.accepted
    stats = CliSocket(world.run_dir / "haproxy.sock")
    for i in range(20):
        name, origin = ("good", "good.test") if i % 2 else ("exact", "exact.test")
        assert world.get(f"http://{origin}/{i}") == (200, f"{name} /{i}".encode())
        # The client has its answer before haproxy hands the origin connection back to the
        # pool; on a loaded machine the next request could come first and open another.
        wait_for(lambda: _pooled_in_use(stats, "strict-pooled") == 0, timeout=10)
    # 10 requests each, over new client connections: without sharing, 10 origin connections
    # each. Idle connections live per haproxy thread and a new client connection may land on
    # the other thread before a takeover, so a few more than one is normal; most must be reused.
    assert world.good.accepted - good <= 4
    assert world.exact.accepted - exact <= 4


def _pooled_in_use(stats: CliSocket, backend: str) -> int:
    """Origin connections of `backend` now serving a request (`show servers conn`'s
    `used_cur`, the same column on 2.6 and 3.0)."""
    answer = stats.command(f"show servers conn {backend}").splitlines()
    columns = answer[0].lstrip("# ").split()
    used = columns.index("used_cur")
    return sum(int(line.split()[used]) for line in answer[1:] if line.strip())


def _exchange(sock: _socket.socket, request: bytes) -> bytes:
    """Send one request on a kept-alive client connection; the status line's code, or b""
    when the proxy closed the connection."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")).split(
            b":"
        )[1]
    )
    while len(body) < length:
        body += sock.recv(4096)
    return head.split(b" ")[1]


def test_an_origin_closing_a_reused_connection_costs_a_get_nothing_and_never_replays_a_post(
    world: World,
) -> None:
    """The flaky origin answers one request per connection and drops the next one unanswered,
    which is what the keep-alive race with a closing origin looks like to the proxy."""
    flaky = world.flaky
    # Each GET leaves its connection idle in the pool; the next GET (a new client connection)
    # reuses it, the origin drops it, haproxy sends that GET again on a new connection. The
    # pause lets the finished request hand its connection back to the pool first.
    for i in range(1, 6):
        assert world.get(f"http://flaky.good.test/{i}") == (200, f"flaky /{i}".encode())
        time.sleep(0.2)
    replayed = [r for r in set(flaky.requests) if flaky.requests.count(r) > 1]
    assert len(replayed) >= 3, flaky.requests  # the race was met, and no client saw it
    assert all(flaky.requests.count(r) <= 2 for r in flaky.requests)  # one retry at most
    # A POST never goes over a pooled connection and is never sent twice: the second POST of a
    # kept-alive client connection meets the drop and the client gets the error.
    flaky.requests.clear()
    post = (
        b"POST http://flaky.good.test/p%d HTTP/1.1\r\nHost: flaky.good.test\r\n"
        b"Content-Length: 1\r\n\r\nx"
    )
    with world.bed.client.entered():
        sock = _socket.create_connection((ROUTER_CLIENT_IP, STRICT), timeout=5)
    with sock:
        assert _exchange(sock, post % 1) == b"200"
        assert _exchange(sock, post % 2) in (b"502", b"")
    assert flaky.requests == ["POST /p1", "POST /p2"]


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        (CI_CLIENT, "good.test"),
        (OPS_CLIENT, "exact.test"),
        (None, "cidr.test"),  # the bed's own client address: the route's own list
    ],
)
def test_client_groups_by_source_address(world: World, source: str | None, allowed: str) -> None:
    """Three client addresses, three lists: each gets only its own; denied origins see nothing."""
    before = {o.name: o.accepted for o in (world.good, world.exact, world.cidr)}
    for name, origin in (
        ("good.test", world.good),
        ("exact.test", world.exact),
        ("cidr.test", world.cidr),
    ):
        reply = proxy_get(
            world.bed.client, (ROUTER_CLIENT_IP, GROUPS), f"http://{name}/", name, source=source
        )
        if name == allowed:
            assert reply.status == 200, (source, name, reply)
            assert origin.accepted == before[origin.name] + 1
        else:
            assert reply.status == 403, (source, name, reply)
            assert origin.accepted == before[origin.name]
    group = {CI_CLIENT: "ci", OPS_CLIENT: "ops", None: "default"}[source]
    counts = show_table(world.run_dir, "_egress_policy")
    assert any(key.startswith(f"groups/{group}/") for key in counts), counts


def test_the_router_own_address_and_port_is_refused(world: World) -> None:
    """`self`: the address the client reached the router on, with one of its listen ports,
    even through a route whose `*` would allow anything else."""
    for port in (OPEN, STRICT, GROUPS):
        status, body = world.get(f"http://{ROUTER_CLIENT_IP}:{port}/", port=OPEN)
        assert status == 403, (port, body)
        assert b"is the router itself" in body
    counters = show_table(world.run_dir, "_egress_policy")
    assert counters.get("open/default/guard-self/deny") == 3
