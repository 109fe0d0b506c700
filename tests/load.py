"""A bounded HTTP load generator for reload and soak tests (new connection or keep-alive)."""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    """Counts of one load run; `errors` keeps the first few failures verbatim."""

    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class LoadGen:
    """Clients in threads hammering one port until stopped, or a count or time bound is hit."""

    def __init__(
        self,
        port: int,
        *,
        keepalive: bool,
        clients: int = 4,
        max_requests: int = 200_000,
        max_seconds: float = 300.0,
        host: str = "127.0.0.1",
        expect: str | None = None,
    ) -> None:
        self.port, self.keepalive, self.host, self.expect = port, keepalive, host, expect
        self.clients, self.max_requests, self.max_seconds = clients, max_requests, max_seconds
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> LoadGen:
        self._deadline = time.monotonic() + self.max_seconds
        for i in range(self.clients):
            t = threading.Thread(target=self._client, name=f"load-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> LoadResult:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        return self.result

    def _record(self, ok: bool, error: str = "") -> bool:
        with self._lock:
            if ok:
                self.result.ok += 1
            else:
                self.result.failed += 1
                if len(self.result.errors) < 20:
                    self.result.errors.append(error)
            return self.result.ok + self.result.failed < self.max_requests

    def _client(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                conn.request("GET", "/", headers={} if self.keepalive else {"Connection": "close"})
                resp = conn.getresponse()
                body = resp.read().decode()
                good = resp.status == 200 and (self.expect is None or body == self.expect)
                more = self._record(good, f"status {resp.status} body {body[:40]!r}")
                if not self.keepalive or resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                more = self._record(False, f"{type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                conn = None
            if not more:
                break
        if conn is not None:
            conn.close()
