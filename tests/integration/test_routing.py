"""Real haproxy, real traffic on loopback: the compiled config routes what users configured.

Every DNS-name destination here is resolved by the test's own DnsServer on 127.0.0.1 (the
config names it in `resolvers.nameservers`), so haproxy never asks the system resolver.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from haproxy_egress.config.sources import load_snapshot, read_snapshot
from haproxy_egress.render.compiler import RenderOptions, render
from haproxy_egress.render.maps import pattern_files
from haproxy_egress.rundir import RunDir
from haproxy_egress.runtime import staging
from tests.support import (
    DnsServer,
    HaproxyProcess,
    HttpOrigin,
    TcpOrigin,
    free_port,
    http_get,
    port_open,
    wait_for,
    write_configmap,
)

FAST_CHECK = {"interval": "300ms", "rise": 1, "fall": 1}


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    """conftest's DNS server, plus closing its UDP socket (DnsServer.stop leaves it open)."""
    d = DnsServer().start()
    server: Any = d._server
    yield d
    d.stop()
    server.server.server_close()


def can_connect(port: int, host: str) -> bool:
    """True when host:port (IPv4 or IPv6) accepts a TCP connection."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


@dataclass
class Router:
    """A running haproxy on a config compiled from ConfigMap keys and seed env vars."""

    config_text: str
    process: HaproxyProcess

    def alive(self) -> bool:
        return self.process.proc is not None and self.process.proc.poll() is None


@contextlib.contextmanager
def router(
    tmp_path: Path, keys: Mapping[str, object], env: Mapping[str, str] | None = None
) -> Iterator[Router]:
    """Compile, start haproxy, wait until every route listens; stop it (by pid) afterwards."""
    cm = tmp_path / "configmap"
    write_configmap(cm, keys)
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    config = load_snapshot(read_snapshot(cm), env or {})
    text = render(config, RenderOptions(run_dir=run_dir, log_stdout=True))
    cfg = run_dir / "haproxy.cfg"
    cfg.write_text(text)
    staging.write_maps(RunDir(run_dir).maps, pattern_files(config))
    process = HaproxyProcess(cfg).start()
    try:
        for r in config.routes:
            host = r.listen.address or "127.0.0.1"
            wait_for(functools.partial(can_connect, r.listen.port, host), timeout=10)
        yield Router(text, process)
    finally:
        stop(process)


def stop(process: HaproxyProcess) -> None:
    """Stop haproxy and close the stderr pipe HaproxyProcess leaves open (a ResourceWarning)."""
    proc = process.proc
    process.stop()
    if proc is not None and proc.stderr is not None:
        proc.stderr.close()


def listen(port: int) -> str:
    return f"127.0.0.1:{port}"


def shared_port(hosts: list[str]) -> int:
    """One port free on every given loopback address (DNS answers carry no port)."""
    for _ in range(50):
        port = free_port(hosts[0])
        with contextlib.ExitStack() as stack:
            try:
                for host in hosts:
                    s = stack.enter_context(socket.socket())
                    s.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError("no shared free port found")


def origins_on(hosts: list[str], names: list[str]) -> tuple[int, list[HttpOrigin]]:
    port = shared_port(hosts)
    return port, [HttpOrigin(n, host=h, port=port) for n, h in zip(names, hosts, strict=True)]


def bodies(port: int, n: int) -> list[str]:
    return [http_get(port) for _ in range(n)]


# --- plain routes -------------------------------------------------------------------------


def test_tcp_and_http_routes_at_once(
    tmp_path: Path, origin: HttpOrigin, origin_b: HttpOrigin
) -> None:
    ports = [free_port() for _ in range(3)]
    keys = {
        "tcp.yaml": {
            "routes": [
                {
                    "name": "tcp-a",
                    "listen": listen(ports[0]),
                    "destinations": [f"127.0.0.1:{origin.port}"],
                },
                {
                    "name": "tcp-b",
                    "listen": listen(ports[1]),
                    "destinations": [f"127.0.0.1:{origin_b.port}"],
                },
            ]
        },
        "http.yaml": {
            "routes": [
                {
                    "name": "http-b",
                    "listen": listen(ports[2]),
                    "mode": "http",
                    "destinations": [f"127.0.0.1:{origin_b.port}"],
                    "check": {"http_path": "/healthz"},
                }
            ]
        },
    }
    with router(tmp_path, keys):
        for _ in range(3):
            assert http_get(ports[0]) == "origin-a"
            assert http_get(ports[1]) == "origin-b"
            assert http_get(ports[2]) == "origin-b"
        # The http route speaks HTTP to the client itself: a garbage request gets a 400 from
        # haproxy, which a tcp route would have passed through to the origin.
        with socket.create_connection(("127.0.0.1", ports[2]), timeout=5) as s:
            s.sendall(b"NOT HTTP\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 400")


def test_roundrobin_and_ipv6(tmp_path: Path) -> None:
    port, origins = origins_on(["127.0.0.2", "127.0.0.3"], ["two", "three"])
    listen_port = free_port()
    keys = {
        "routes.yaml": {
            "routes": [
                {
                    "name": "rr",
                    "listen": f"[::1]:{listen_port}",
                    "destinations": [f"127.0.0.2:{port}", f"127.0.0.3:{port}"],
                    "check": FAST_CHECK,
                }
            ]
        }
    }
    with contextlib.ExitStack() as stack:
        for o in origins:
            stack.enter_context(started(o))
        with router(tmp_path, keys):
            seen = {http_get(listen_port, host="::1") for _ in range(6)}
            assert seen == {"two", "three"}


# --- DNS ----------------------------------------------------------------------------------


def dns_keys(dns: DnsServer, route: dict[str, Any]) -> dict[str, object]:
    return {
        "routes.yaml": {
            "resolvers": {
                "nameservers": [f"127.0.0.1:{dns.port}"],
                "hold_valid": "1s",
                "hold_obsolete": "1s",
                "timeout": "200ms",
            },
            "routes": [route],
        }
    }


def _dns_route(name: str, port: int) -> tuple[int, dict[str, object]]:
    """A route to `<name>.test:<port>` with fast checks, and the port it listens on."""
    lp = free_port()
    route: dict[str, object] = {
        "name": name,
        "listen": listen(lp),
        "destinations": [f"{name}.test:{port}"],
        "check": FAST_CHECK,
    }
    return lp, route


@contextlib.contextmanager
def _routed(
    tmp_path: Path, dns: DnsServer, route: dict[str, object], origins: list[HttpOrigin]
) -> Iterator[Router]:
    """The origins started, and a router serving `route` with `dns` as its nameserver."""
    with contextlib.ExitStack() as stack:
        for o in origins:
            stack.enter_context(started(o))
        with router(tmp_path, dns_keys(dns, route)) as r:
            yield r


def test_dns_name_follows_record_changes(tmp_path: Path, dns: DnsServer) -> None:
    port, origins = origins_on(["127.0.0.2", "127.0.0.3"], ["old", "new"])
    dns.records["svc.test"] = ["127.0.0.2"]
    lp, route = _dns_route("svc", port)
    with _routed(tmp_path, dns, route, origins) as r:
        assert "init-addr last,none" in r.config_text
        wait_for(lambda: bodies(lp, 3) == ["old"] * 3, timeout=15)
        dns.records["svc.test"] = ["127.0.0.3"]
        # Traffic follows the new record, and the old address leaves the rotation.
        wait_for(lambda: bodies(lp, 6) == ["new"] * 6, timeout=20)
    assert dns.queries >= 2


def test_every_a_record_gets_a_slot(tmp_path: Path, dns: DnsServer) -> None:
    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    port, origins = origins_on(hosts, ["o2", "o3", "o4"])
    dns.records["pool.test"] = hosts
    lp, route = _dns_route("pool", port)
    with _routed(tmp_path, dns, route, origins) as r:
        assert "server-template pool.test_" in r.config_text
        wait_for(lambda: set(bodies(lp, 9)) == {"o2", "o3", "o4"}, timeout=15)


def test_starts_before_the_name_resolves(
    tmp_path: Path, dns: DnsServer, origin: HttpOrigin
) -> None:
    lp, route = _dns_route("later", origin.port)
    with router(tmp_path, dns_keys(dns, route)) as r:  # NXDOMAIN for now
        with pytest.raises((ConnectionError, OSError)):
            http_get(lp, timeout=3)
        assert r.alive()
        dns.records["later.test"] = ["127.0.0.1"]
        wait_for(lambda: http_get(lp) == "origin-a", timeout=20)


# --- failover, access control, source address, PROXY protocol -----------------------------


def test_failover_to_the_second_destination(
    tmp_path: Path, origin: HttpOrigin, origin_b: HttpOrigin
) -> None:
    dead = free_port()  # nothing listens there
    lp, lp2 = free_port(), free_port()
    keys = {
        "routes.yaml": {
            "defaults": {"balance": "first", "check": FAST_CHECK},
            "routes": [
                {
                    "name": "down-first",
                    "listen": listen(lp),
                    "destinations": [f"127.0.0.1:{dead}", f"127.0.0.1:{origin_b.port}"],
                },
                {
                    "name": "ordered",
                    "listen": listen(lp2),
                    "destinations": [f"127.0.0.1:{origin.port}", f"127.0.0.1:{origin_b.port}"],
                },
            ],
        }
    }
    with router(tmp_path, keys):
        # Even before the health check has marked it down, a refused connect is redispatched.
        assert bodies(lp, 5) == ["origin-b"] * 5
        assert bodies(lp2, 5) == ["origin-a"] * 5  # `first`: the second is only a spare
        origin.stop()
        assert bodies(lp2, 5) == ["origin-b"] * 5


def connect_from(source: str, port: int) -> bytes:
    """Send a GET from a given loopback source address; return whatever comes back."""
    with socket.socket() as s:
        s.settimeout(5)
        s.bind((source, 0))
        try:
            # A connection refused by a `tcp-request connection reject` can be reset before
            # connect() even returns: that, too, is a refusal.
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            return b"<reset>"
        return data


def _one_route(name: str, lp: int, dest_port: int, **fields: object) -> dict[str, object]:
    """A ConfigMap with one route listening on `lp`, to 127.0.0.1:`dest_port`."""
    route = {"name": name, "listen": listen(lp), "destinations": [f"127.0.0.1:{dest_port}"]}
    return {"routes.yaml": {"routes": [{**route, **fields}]}}


def test_allow_from_refuses_other_clients(tmp_path: Path, origin: HttpOrigin) -> None:
    lp = free_port()
    keys = _one_route("guarded", lp, origin.port, allow_from=["127.0.0.1/32", "127.0.0.8/29"])
    with router(tmp_path, keys):
        assert connect_from("127.0.0.1", lp).endswith(b"origin-a")
        assert connect_from("127.0.0.9", lp).endswith(b"origin-a")
        served = len(origin.peers)
        assert connect_from("127.0.0.5", lp) in (b"", b"<reset>")
        assert len(origin.peers) == served  # the refused client never reached the origin


def test_fixed_source_address(tmp_path: Path, origin: HttpOrigin) -> None:
    lp = free_port()
    keys = {
        "routes.yaml": {
            "defaults": {"source": "127.0.0.6"},
            "routes": [
                {"name": "src", "listen": listen(lp), "destinations": [f"127.0.0.1:{origin.port}"]}
            ],
        }
    }
    with router(tmp_path, keys):
        origin.peers.clear()
        assert http_get(lp) == "origin-a"
        assert origin.peers == ["127.0.0.6"]


class ProxyV2Sink(TcpOrigin):
    """A TCP destination that records each connection's PROXY v2 header and payload."""

    SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

    def __init__(self) -> None:
        self.seen: list[tuple[int, tuple[str, int, str, int] | None, bytes]] = []
        super().__init__()

    def _read(self, conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(2)
        head = self._read(conn, 16)
        if head[:12] != self.SIGNATURE:
            self.seen.append((-1, None, head))
            return
        command, family, length = head[12] & 0x0F, head[13], struct.unpack("!H", head[14:16])[0]
        body = self._read(conn, length)
        addresses = None
        if family == 0x11:  # TCP over IPv4
            src, dst, sport, dport = struct.unpack("!4s4sHH", body[:12])
            addresses = (socket.inet_ntoa(src), sport, socket.inet_ntoa(dst), dport)
        payload = b""
        if command == 1:  # PROXY (relayed traffic); LOCAL (0) is haproxy's health check
            payload = conn.recv(100)
            conn.sendall(b"pong:" + payload)
        self.seen.append((command, addresses, payload))


def test_proxy_protocol_v2_reaches_the_destination(tmp_path: Path) -> None:
    sink = ProxyV2Sink()
    try:
        lp = free_port()
        keys = _one_route("pp", lp, sink.port, proxy_protocol="v2", check=FAST_CHECK)
        with router(tmp_path, keys), socket.socket() as client:
            client.settimeout(5)
            client.bind(("127.0.0.1", 0))
            client.connect(("127.0.0.1", lp))
            client.sendall(b"ping")
            assert client.recv(100) == b"pong:ping"
            client_port = client.getsockname()[1]
        relayed = [s for s in sink.seen if s[2]]
        assert relayed == [(1, ("127.0.0.1", client_port, "127.0.0.1", lp), b"ping")]
        # Health checks carry the header too, or a PROXY-only destination would fail them.
        assert len(sink.seen) > 1
        assert not [s for s in sink.seen if s[0] == -1], "a connection came without a header"
    finally:
        sink.stop()


# --- the seed example ---------------------------------------------------------------------


def test_seed_example_proxies(tmp_path: Path, dns: DnsServer, origin: HttpOrigin) -> None:
    """SERVICE_TCP_PORT / SERVICE_DEST_PORT / SERVICE_DEST, compiled by the real CLI."""
    dns.records["www.example.test"] = ["127.0.0.1"]
    cm = tmp_path / "configmap"
    write_configmap(cm, {"dns.yaml": {"resolvers": {"nameservers": [f"127.0.0.1:{dns.port}"]}}})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lp = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "EGRESS_CONFIG_DIR": str(cm),
        "EGRESS_RUN_DIR": str(run_dir),
        "EGRESS_LOG": "stdout",
        "SERVICE_NAME": "tst-scr-svc",
        "SERVICE_TCP_PORT": str(lp),
        "SERVICE_DEST_PORT": str(origin.port),
        "SERVICE_DEST": "www.example.test",
    }
    cli = [sys.executable, "-m", "haproxy_egress.cli"]
    check = subprocess.run(
        [*cli, "check"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert check.returncode == 0, check.stderr
    rendered = subprocess.run(
        [*cli, "render"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    cfg = run_dir / "haproxy.cfg"
    cfg.write_text(rendered.stdout)
    with started(HaproxyProcess(cfg)):
        wait_for(lambda: port_open(lp), timeout=10)
        wait_for(lambda: http_get(lp) == "origin-a", timeout=15)


@contextlib.contextmanager
def started(thing: HttpOrigin | HaproxyProcess) -> Iterator[None]:
    thing.start()
    try:
        yield
    finally:
        if isinstance(thing, HaproxyProcess):
            stop(thing)
        else:
            thing.stop()
