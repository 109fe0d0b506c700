"""The policy proxy's own attack surface: request smuggling basics and CONNECT to
ports the policy does not allow, through a supervised router. Every "refused" case is also
checked at the origin: nothing ambiguous, and nothing at all for a refusal, arrives there."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.policy_proxy import exchange, proxy_configmap
from tests.router import Router
from tests.support import DnsServer, TcpOrigin, free_port, recv_head


class RecordingOrigin(TcpOrigin):
    """A raw TCP origin: records every request head it gets and answers 200 "ok"."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(2)
        data = recv_head(conn)
        if data:
            self.heads.append(data.split(b"\r\n\r\n", 1)[0].lower())
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


def _post(proxy: int, origin: RecordingOrigin, rest: str) -> bytes:
    """An absolute-URI POST to `origin` through the proxy; `rest` is the framing and body."""
    host = f"origin.test:{origin.port}"
    return exchange(proxy, f"POST http://{host}/ HTTP/1.1\r\nHost: {host}\r\n{rest}".encode())


@pytest.fixture
def origins() -> Iterator[tuple[RecordingOrigin, RecordingOrigin]]:
    allowed, other = RecordingOrigin(), RecordingOrigin()
    yield allowed, other
    allowed.stop()
    other.stop()


@pytest.fixture
def proxy(
    tmp_path: Path, dns: DnsServer, origins: tuple[RecordingOrigin, RecordingOrigin]
) -> Iterator[int]:
    allowed, _ = origins
    port = free_port()
    dns.records["origin.test"] = ["127.0.0.1"]
    # That one port only.
    policy = f" ['127.0.0.1/32:{allowed.port}']\n"
    config = proxy_configmap(tmp_path / "configmap", dns.port, port, policy)
    router = Router(tmp_path / "router", config_dir=config)
    try:
        router.start()
        yield port
    finally:
        router.stop()


def test_connect_to_a_port_outside_the_policy_is_refused(
    proxy: int, origins: tuple[RecordingOrigin, RecordingOrigin]
) -> None:
    allowed, other = origins
    target = f"origin.test:{other.port}"
    answer = exchange(proxy, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert not answer.startswith(b"HTTP/1.1 200"), answer
    assert other.accepted == 0  # denied means no connection
    ok = f"origin.test:{allowed.port}"
    tunnel = exchange(
        proxy,
        f"CONNECT {ok} HTTP/1.1\r\nHost: {ok}\r\n\r\nGET / HTTP/1.0\r\n\r\n".encode(),
    )
    assert tunnel.startswith(b"HTTP/1.1 200"), tunnel
    assert tunnel.endswith(b"ok")


def test_conflicting_content_lengths_reach_no_origin(
    proxy: int, origins: tuple[RecordingOrigin, RecordingOrigin]
) -> None:
    allowed, _ = origins
    answer = _post(
        proxy, allowed, "Content-Length: 5\r\nContent-Length: 7\r\nConnection: close\r\n\r\nhello.."
    )
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert allowed.accepted == 0


def test_content_length_with_chunked_reaches_the_origin_unambiguous(
    proxy: int, origins: tuple[RecordingOrigin, RecordingOrigin]
) -> None:
    allowed, _ = origins
    answer = _post(
        proxy,
        allowed,
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        "5\r\nhello\r\n0\r\n\r\n",
    )
    # Either refused, or forwarded with only one framing header: never both.
    for head in allowed.heads:
        assert not (b"content-length:" in head and b"transfer-encoding:" in head), head
    assert answer.startswith((b"HTTP/1.1 200", b"HTTP/1.1 400")), answer
    if answer.startswith(b"HTTP/1.1 200"):
        assert len(allowed.heads) == 1
    else:
        assert allowed.accepted == 0
