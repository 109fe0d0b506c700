"""The policy proxy in a supervised router (`haproxy-egress run`), not just a bare haproxy:
its Lua file must be staged by the reload machinery like any hook."""

from __future__ import annotations

import base64
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from haproxy_egress.config.users import hash_password
from tests.kubelet import ConfigMapVolume
from tests.longlived import changes
from tests.policy_proxy import proxy_configmap
from tests.router import Router
from tests.support import DnsServer, HttpOrigin, free_port, wait_for


def _proxy_get(port: int, url: str, host: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


@pytest.fixture
def proxy_router(
    tmp_path: Path, dns: DnsServer, origin: HttpOrigin
) -> Iterator[tuple[Router, int]]:
    port = free_port()
    dns.records["allowed.test"] = ["127.0.0.1"]
    dns.records["other.test"] = ["198.18.0.1"]  # denied before any connection is tried
    # Only an address rule may allow a loopback target (the guard denies it otherwise).
    policy = "\n      - 127.0.0.1/32\n"
    config = proxy_configmap(tmp_path / "configmap", dns.port, port, policy)
    router = Router(tmp_path / "router", config_dir=config)
    try:
        router.start()
        yield router, port
    finally:
        router.stop()


def test_supervised_proxy_route_allows_and_denies(
    proxy_router: tuple[Router, int], origin: HttpOrigin
) -> None:
    router, port = proxy_router
    target = f"allowed.test:{origin.port}"
    allowed = _proxy_get(port, f"http://{target}/", target)
    assert allowed.startswith(b"HTTP/1.1 200"), allowed[:200]
    assert allowed.endswith(b"origin-a")
    denied = _proxy_get(port, "http://other.test/", "other.test")
    assert denied.startswith(b"HTTP/1.1 403"), denied[:200]
    wait_for(
        lambda: (
            router.metric(
                "haproxy_egress_policy_decisions_total",
                {"route": "pxy", "rule": "default", "verdict": "deny"},
            )
            == 1.0
        ),
        timeout=5,
    )


def test_supervised_connect_tunnel_and_dead_origin(
    proxy_router: tuple[Router, int], origin: HttpOrigin
) -> None:
    _, port = proxy_router
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        target = f"allowed.test:{origin.port}"
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head
        s.sendall(b"GET / HTTP/1.0\r\nHost: allowed.test\r\n\r\n")
        data = head.split(b"\r\n\r\n", 1)[1]
        while chunk := s.recv(65536):
            data += chunk
        assert data.endswith(b"origin-a")
    dead = free_port()  # nothing listens: no fake 200 may come back
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        target = f"allowed.test:{dead}"
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        answer = b""
        try:
            while chunk := s.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
        assert not answer.startswith(b"HTTP/1.1 200"), answer


def test_a_rotated_users_secret_applies_without_a_reload(
    tmp_path: Path, dns: DnsServer, origin: HttpOrigin
) -> None:
    """The users file is a Secret mounted apart from the ConfigMap: a kubelet swap of it is
    an input change like a ConfigMap edit, and only map files change, so it goes through the
    runtime API (no new worker); a broken new file keeps the last good users."""
    port = free_port()
    secret = ConfigMapVolume(tmp_path / "secret")  # Secrets use the same `..data` layout
    secret.write({"users": hash_password("alice", "old-password").line + "\n"})
    config = proxy_configmap(
        tmp_path / "configmap",
        dns.port,
        port,
        "\n      - 127.0.0.1/32\n    proxy_auth: required\n",
    )
    router = Router(
        tmp_path / "router",
        config_dir=config,
        env={"EGRESS_PROXY_USERS_FILE": str(secret.directory / "users")},
    )
    target = f"127.0.0.1:{origin.port}"

    def status(password: str) -> bytes:
        credential = base64.b64encode(f"alice:{password}".encode()).decode()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(
                f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n"
                f"Proxy-Authorization: Basic {credential}\r\nConnection: close\r\n\r\n".encode()
            )
            return s.recv(12)

    try:
        router.start()
        assert status("old-password") == b"HTTP/1.1 200"
        assert status("new-password") == b"HTTP/1.1 407"
        worker = router.worker_pid()
        before = changes(router)
        secret.write({"users": hash_password("alice", "new-password").line + "\n"})
        wait_for(lambda: changes(router)["runtime"] > before["runtime"], timeout=15)
        assert status("new-password") == b"HTTP/1.1 200"
        assert status("old-password") == b"HTTP/1.1 407"
        assert changes(router)["reload"] == before["reload"]
        assert router.worker_pid() == worker, "the same worker serves"
        # A broken file is refused as a whole, naming the file and line; alice keeps working.
        failures = router.metric("haproxy_egress_reload_failures_total") or 0.0
        secret.write({"users": "alice:plain-text-password\n"})
        wait_for(
            lambda: (router.metric("haproxy_egress_reload_failures_total") or 0) > failures,
            timeout=15,
        )
        assert "EGRESS_PROXY_USERS_FILE" in router.stdout() + router.stderr()
        assert status("new-password") == b"HTTP/1.1 200"
    finally:
        router.stop()


def _tls_request(port: int, server_name: str) -> bytes:
    """A TLS handshake with `server_name` as SNI, then one request; what came back."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        tls.sendall(f"GET /metrics HTTP/1.1\r\nHost: {server_name}\r\n\r\n".encode())
        return tls.recv(4096)


def test_the_metrics_port_is_the_router_itself_on_proxy_and_tls_routes(
    tmp_path: Path, dns: DnsServer
) -> None:
    """`self` covers every port the router listens on, the metrics endpoint included: with
    loopback opened (`guard: [default, -loopback]`) and `*` allowed, neither a proxy route nor
    a tls route reaches the router's own /metrics."""
    dns.records["metrics.test"] = ["127.0.0.1"]
    proxy_port, tls_port = free_port(), free_port()
    while tls_port == proxy_port:
        tls_port = free_port()
    metrics_port = free_port()
    opened = {"source": "127.0.0.1", "guard": ["default", "-loopback"], "policy": ["*"]}
    doc = {
        "resolvers": {"nameservers": [f"127.0.0.1:{dns.port}"], "timeout": "200ms"},
        "routes": [
            {"name": "pxy", "listen": f"127.0.0.1:{proxy_port}", "mode": "proxy", **opened},
            {
                "name": "sni",
                "listen": f"127.0.0.1:{tls_port}",
                "mode": "tls",
                "destination_port": metrics_port,
                **opened,
            },
        ],
    }
    config = tmp_path / "configmap"
    config.mkdir()
    (config / "routes.yaml").write_text(yaml.safe_dump(doc))
    router = Router(tmp_path / "router", config_dir=config, metrics_port=metrics_port)
    try:
        router.start()
        for url in (
            f"http://127.0.0.1:{metrics_port}/metrics",
            f"http://metrics.test:{metrics_port}/metrics",
        ):
            host = url.split("/")[2]
            reply = _proxy_get(proxy_port, url, host)
            assert reply.startswith(b"HTTP/1.1 403"), reply[:300]
            assert b"is the router itself" in reply, reply[:300]
        with pytest.raises((ssl.SSLError, OSError)):
            _tls_request(tls_port, "metrics.test")  # closed: no handshake, no metrics page
        denied = {"rule": "guard-self", "verdict": "deny"}

        def both_denied() -> bool:
            name = "haproxy_egress_policy_decisions_total"
            return all(router.metric(name, {"route": r, **denied}) for r in ("pxy", "sni"))

        wait_for(both_denied, timeout=10)
    finally:
        router.stop()
