"""Long-lived connections for live-change tests: a named echo origin, held TCP connections and
CONNECT tunnels that can be pinged, and one-scrape metric reads."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Mapping

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.router import Router
from tests.support import TcpOrigin


class NamedEcho(TcpOrigin):
    """Echoes every chunk back prefixed with its name ("a:ping"), until the client leaves."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(1.0)
        while not self.stopping():
            try:
                data = conn.recv(4096)
            except TimeoutError:
                continue
            if not data:
                return
            conn.sendall(self.name.encode() + b":" + data)


class Held:
    """One client connection kept open through the router; `ping` proves it still carries."""

    def __init__(self, port: int, label: str = "") -> None:
        self.label = label or f"port {port}"
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.origin = ""

    def ping(self, text: str = "ping") -> bool:
        """Send one line, read the echo; False if the connection was ended."""
        try:
            self.sock.settimeout(5)
            self.sock.sendall(text.encode())
            data = self.sock.recv(4096)
        except OSError:
            return False
        if not data:
            return False
        self.origin = data.decode(errors="replace").split(":", 1)[0]
        return data.endswith(text.encode())

    def ended(self, timeout: float = 0.2) -> bool:
        """The router ended it: EOF or reset (without sending anything)."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096) == b""
        except TimeoutError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Tunnel(Held):
    """A CONNECT tunnel through a proxy route to host:port."""

    def __init__(self, port: int, target: str, label: str = "") -> None:
        super().__init__(port, label or f"tunnel {target}")
        self.sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = b""
        deadline = time.monotonic() + 5
        while b"\r\n\r\n" not in head and time.monotonic() < deadline:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            head += chunk
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"CONNECT {target} refused: {head[:120]!r}")


def scrape(router: Router) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one /metrics scrape: (name, sorted labels) → value."""
    text = requests.get(router.url("/metrics"), timeout=5).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def value(
    samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """One sample of a scrape (0 if absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def changes(router: Router) -> dict[str, float]:
    """haproxy_egress_config_changes_total by kind."""
    samples = scrape(router)
    name = "haproxy_egress_config_changes_total"
    return {k: value(samples, name, kind=k) for k in ("noop", "runtime", "reload")}


def recovery_time(probe: Callable[[], bool], window: float = 3.0, step: float = 0.005) -> float:
    """Seconds from now until the end of the first good probe after the last bad one, probing
    for `window` seconds at least (and until a good one): crash-to-serving as a client sees it,
    including a connection queued while haproxy restarts."""
    start = time.monotonic()
    results: list[tuple[float, bool]] = []
    while True:
        ok = probe()
        now = time.monotonic()
        results.append((now, ok))
        if now - start >= window and ok:
            break
        if now - start > window + 30:
            raise AssertionError("never served again")
        time.sleep(step)
    last_bad = max((i for i, (_, ok) in enumerate(results) if not ok), default=-1)
    return results[last_bad + 1][0] - start
