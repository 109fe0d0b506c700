"""Parent proxies (docs/policy.md "Parent proxies") against real parents on loopback: Debian's
squid with basic_ncsa_auth credentials and tinyproxy. The parents' own access logs prove what
reached them; the decision log and `show stat` what the router did."""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from haproxy_egress.haproxy.cli import CliSocket
from haproxy_egress.metrics.decisions import COMMAND, parse_parent_auth
from tests.parents import SquidParent, TinyproxyParent
from tests.policy_proxy import PolicyProxy, connect_reply, exchange, get
from tests.router import Router
from tests.support import HAPROXY, DnsServer, HttpOrigin, free_port, wait_for

USER, PASSWORD = "egress", "parent-secret-1"
CLIENT_CREDENTIAL = base64.b64encode(b"client:client-secret").decode()


def _secret(directory: Path, user: str, password: str) -> Path:
    """A kubernetes.io/basic-auth Secret as the kubelet mounts it: one file per key."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "username").write_text(user)
    (directory / "password").write_text(password)
    return directory


def _route(port: int, parent: dict[str, Any] | str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "web",
        "listen": f"127.0.0.1:{port}",
        "mode": "proxy",
        # Loopback destinations need an address rule (the guard refuses them otherwise);
        # *.parent.test are names only the parent resolves.
        "policy": ["127.0.0.1/32", "*.parent.test", "direct.test"],
        "parent": parent,
        **extra,
    }


def _doc(dns: DnsServer, *routes: dict[str, Any]) -> dict[str, Any]:
    return {"resolvers": {"nameservers": [f"127.0.0.1:{dns.port}"]}, "routes": list(routes)}


def _tunnel_get(port: int, authority: str, extra: str = "") -> tuple[bytes, bytes]:
    """CONNECT (with `extra` head lines), then a GET through the tunnel: (head, answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{extra}\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                return head, b""
            head += chunk
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = head.split(b"\r\n\r\n", 1)[1]
        while chunk := s.recv(65536):
            data += chunk
    return head, data


@pytest.fixture
def squid(tmp_path: Path) -> Iterator[SquidParent]:
    hosts = {"only.parent.test": "127.0.0.1"}
    parent = SquidParent("squid", user=USER, password=PASSWORD, hosts=hosts)
    try:
        yield parent.start()
    finally:
        parent.stop()


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[TinyproxyParent]:
    parent = TinyproxyParent("tinyproxy")
    try:
        yield parent.start()
    finally:
        parent.stop()


@dataclass
class Bed:
    """What every test here has: a scratch dir, the test DNS server, an origin, and the bare
    proxies it started (stopped by the fixture)."""

    tmp_path: Path
    dns: DnsServer
    origin: HttpOrigin
    started: list[PolicyProxy] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.origin.port}"

    @property
    def proxy(self) -> PolicyProxy:
        return self.started[0]

    def start(
        self, parent: dict[str, Any] | str, env: dict[str, str] | None = None, **extra: Any
    ) -> int:
        """A bare proxy with one route `web` through `parent`; its port."""
        port = free_port()
        p = PolicyProxy(self.tmp_path / "px", _doc(self.dns, _route(port, parent, **extra)))
        p.env = env or {}
        self.started.append(p)
        p.start()
        return port


@pytest.fixture
def bed(tmp_path: Path, dns: DnsServer, origin: HttpOrigin) -> Iterator[Bed]:
    b = Bed(tmp_path, dns, origin)
    try:
        yield b
    finally:
        for p in b.started:
            p.stop()


def test_http_and_connect_go_through_squid_with_the_routers_credentials(
    bed: Bed, squid: SquidParent
) -> None:
    secret = _secret(bed.tmp_path / "parent-auth", USER, PASSWORD)
    parent = {"proxies": [squid.address], "credentials_dir": str(secret)}
    port = bed.start(parent)
    # A name the router cannot resolve (NXDOMAIN here) but the parent can: it goes as named.
    for authority in (bed.target, f"only.parent.test:{bed.origin.port}"):
        answer = exchange(
            port,
            f"GET http://{authority}/ HTTP/1.1\r\nHost: {authority}\r\n"
            f"Proxy-Authorization: Basic {CLIENT_CREDENTIAL}\r\nConnection: close\r\n\r\n".encode(),
        )
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert answer.endswith(b"origin-a")
        head, body = _tunnel_get(
            port, authority, f"Proxy-Authorization: Basic {CLIENT_CREDENTIAL}\r\n"
        )
        assert head == b"HTTP/1.1 200 Connection established\r\n\r\n", head
        assert body.endswith(b"origin-a"), body[-200:]
    wait_for(lambda: squid.log_text().count(" 200 egress ") == 4, timeout=10)
    log = squid.log_text()
    # squid saw the absolute URI and the CONNECT authority as the client named them, with
    # the router's credential (user `egress`) and never the client's own.
    assert f"GET http://only.parent.test:{bed.origin.port}/ 200 egress" in log
    assert f"CONNECT only.parent.test:{bed.origin.port} 200 egress" in log
    assert f"CONNECT 127.0.0.1:{bed.origin.port} 200 egress" in log
    assert CLIENT_CREDENTIAL not in log
    decisions = [d for d in bed.proxy.decisions() if d["dst"].endswith(f":{bed.origin.port}")]
    assert {(d["via"], d["parent_status"]) for d in decisions} == {("parent", "200")}
    # The credential is in the map file the proxy reads (0600), nowhere in haproxy.cfg or logs.
    credential = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    run = bed.proxy.run
    assert credential not in run.config.read_text()
    assert credential not in bed.proxy.log.read_text()
    held = [f for f in run.maps.iterdir() if credential in f.read_text()]
    assert [f.name for f in held] == ["web.parent.map"]
    assert held[0].stat().st_mode & 0o777 == 0o600


def test_direct_list_and_local_deny_never_reach_the_parent(
    bed: Bed, tinyproxy: TinyproxyParent
) -> None:
    bed.dns.records["direct.test"] = ["127.0.0.1"]
    parent = {"proxies": [tinyproxy.address], "direct": ["direct.test"]}
    port = bed.start(parent)
    direct = get(port, f"direct.test:{bed.origin.port}")
    assert direct.endswith(b"origin-a"), direct[:300]
    head, body = _tunnel_get(port, f"direct.test:{bed.origin.port}")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body.endswith(b"origin-a")
    denied = get(port, "denied.example:80")
    assert denied.startswith(b"HTTP/1.1 403"), denied[:300]
    assert connect_reply(port, "denied.example:443").startswith(b"HTTP/1.1 403")
    via = get(port, bed.target)
    assert via.endswith(b"origin-a")
    wait_for(lambda: bed.target in tinyproxy.log_text(), timeout=10)
    log = tinyproxy.log_text()
    assert "direct.test" not in log
    assert "denied.example" not in log
    wait_for(lambda: len(bed.proxy.decisions()) == 5, timeout=10)
    vias = {(d["dst"], d["verdict"], d["via"]) for d in bed.proxy.decisions()}
    assert (f"direct.test:{bed.origin.port}", "allow", "direct") in vias
    assert (bed.target, "allow", "parent") in vias
    assert ("denied.example:80", "deny", "-") in vias


def _answer_with(port: int, target: str, text: bytes) -> bytes | None:
    """A GET's answer if it holds `text` (for wait_for), else None."""
    answer = get(port, target)
    return answer if text in answer else None


def _server_rows(p: PolicyProxy, backend: str) -> dict[str, dict[str, str]]:
    text = CliSocket(p.run.stats_socket, timeout=5).command("show stat")
    lines = text.strip().splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
    return {r["svname"]: r for r in rows if r["pxname"] == backend}


def test_failover_then_fail_closed(bed: Bed, tinyproxy: TinyproxyParent) -> None:
    first = SquidParent("squid-plain").start()
    try:
        parent = {"proxies": [first.address, tinyproxy.address]}
        port = bed.start(parent, check={"interval": "500ms", "rise": 1, "fall": 1})
        target = bed.target
        assert get(port, target).endswith(b"origin-a")
        wait_for(lambda: target in first.log_text(), timeout=10)
        # Under load (4 clients, 40 requests): the first parent dies mid-run. A GET it had not
        # answered yet is sent again to the second parent (replayable), a new one fails over
        # when its connect is refused; only a response already under way when it died is
        # cut: at most one per client.
        with ThreadPoolExecutor(4) as pool:
            pending = [pool.submit(get, port, target) for _ in range(40)]
            first.kill()
            answers = [f.result() for f in pending]
        failed = [a[:100] for a in answers if not a.endswith(b"origin-a")]
        assert len(failed) <= 4, failed
        assert all(get(port, target).endswith(b"origin-a") for _ in range(5))
        assert _tunnel_get(port, target)[1].endswith(b"origin-a")
        wait_for(lambda: target in tinyproxy.log_text(), timeout=10)
        # Its health check takes the dead parent out; meanwhile each request was retried on
        # the next one (a redispatch: the failover counter).
        dead = first.address.replace(":", "_")
        wait_for(
            lambda: _server_rows(bed.proxy, "web-parent-tunnel")[dead]["status"].startswith("DOWN"),
            timeout=10,
        )
        rows = _server_rows(bed.proxy, "web-parent-tunnel")
        assert rows[tinyproxy.address.replace(":", "_")]["status"].startswith("UP")
        http_rows = _server_rows(bed.proxy, "web-parent-http")
        failovers = sum(
            int(r["wredis"] or 0) for r in http_rows.values() if r["svname"] != "BACKEND"
        )
        assert failovers >= 1
        assert int(rows[dead]["chkdown"]) == 1
        hits = len(bed.origin.peers)
        tinyproxy.kill()
        # All parents down: a 503 naming the route, never a direct connection.
        closed = wait_for(lambda: _answer_with(port, target, b"no parent proxy reachable"))
        assert closed is not None
        assert closed.startswith(b"HTTP/1.1 503"), closed[:200]
        assert b"route web" in closed
        refused = connect_reply(port, target)
        assert refused.startswith(b"HTTP/1.1 503"), refused
        assert len(bed.origin.peers) == hits
        counters = bed.proxy.counters()
        assert counters[("web", "default", "no-parent", "unresolved")] >= 2
    finally:
        first.stop()


def test_parent_refusing_the_credentials_is_a_502_not_the_destinations_answer(
    bed: Bed, squid: SquidParent
) -> None:
    secret = _secret(bed.tmp_path / "parent-auth", USER, "wrong-password")
    parent = {"proxies": [squid.address], "credentials_dir": str(secret)}
    port = bed.start(parent)
    target = bed.target
    answer = get(port, target)
    assert answer.startswith(b"HTTP/1.1 502"), answer[:300]
    assert b"refused the router's credentials (407)" in answer
    assert b"Proxy-Authenticate" not in answer
    head = connect_reply(port, target)
    assert head.startswith(b"HTTP/1.1 502"), head
    wait_for(lambda: len(bed.proxy.decisions()) == 2, timeout=10)
    assert [d["parent_status"] for d in bed.proxy.decisions()] == ["407", "407"]
    table = CliSocket(bed.proxy.run.stats_socket, timeout=5).command(COMMAND)
    assert parse_parent_auth(table) == {"web": 2}


def test_parent_from_the_environment(bed: Bed, tinyproxy: TinyproxyParent) -> None:
    bed.dns.records["direct.test"] = ["127.0.0.1"]
    env = {
        "HTTPS_PROXY": f"http://{tinyproxy.address}/",
        "NO_PROXY": ".svc,.cluster.local,direct.test,10.0.0.0/8",
    }
    port = bed.start("env", env)
    assert get(port, f"direct.test:{bed.origin.port}").endswith(b"origin-a")
    assert _tunnel_get(port, bed.target)[1].endswith(b"origin-a")
    wait_for(lambda: bed.target in tinyproxy.log_text(), timeout=10)
    assert "direct.test" not in tinyproxy.log_text()


def _rotate(secret: Path, password: str) -> None:
    """Replace the Secret's password file atomically, as a kubelet swap does."""
    tmp = secret / ".password.new"
    tmp.write_text(password)
    tmp.rename(secret / "password")


def test_credentials_rotate_at_runtime_without_a_reload_and_never_leak(
    tmp_path: Path, dns: DnsServer, origin: HttpOrigin, squid: SquidParent
) -> None:
    secret = _secret(tmp_path / "parent-auth", USER, PASSWORD)
    port = free_port()
    parent = {"proxies": [squid.address], "credentials_dir": str(secret)}
    config = tmp_path / "configmap"
    config.mkdir()
    (config / "routes.yaml").write_text(yaml.safe_dump(_doc(dns, _route(port, parent))))
    # The haproxy under test (EGRESS_HAPROXY_BIN: 3.0 in the image) runs the router too.
    router = Router(tmp_path / "router", {"EGRESS_HAPROXY_BIN": HAPROXY}, config_dir=config)
    try:
        router.start()
        target = f"127.0.0.1:{origin.port}"
        assert get(port, target).endswith(b"origin-a")
        worker = router.worker_pid()
        new = "parent-secret-2"
        squid.set_password(new)
        # squid now refuses the old credential: the client learns it is the router's problem.
        refused = wait_for(lambda: _answer_with(port, target, b"refused the router's"), timeout=10)
        assert refused is not None
        assert refused.startswith(b"HTTP/1.1 502")
        _rotate(secret, new)
        wait_for(lambda: _answer_with(port, target, b"origin-a"), timeout=20)
        assert _tunnel_get(port, target)[1].endswith(b"origin-a")
        assert router.worker_pid() == worker
        assert "applied at runtime; no reload" in router.stderr()
        output = router.stdout() + router.stderr()
        for value in (PASSWORD, new, base64.b64encode(f"{USER}:{new}".encode()).decode()):
            assert value not in output
            assert value not in (router.run_dir / "haproxy.cfg").read_text()
    finally:
        router.stop()
