"""A DNS server on 127.0.0.1 that answers every query wrongly, for the resolver fault tests.

tests.support.DnsServer answers correctly; this one takes its place on the same port and
answers with random bytes, a reply for another query id, or a reply cut short, so haproxy's
resolver sees a server that is up but useless.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field

from dnslib import QTYPE, RR, A, DNSRecord

MODES = ("random", "wrong-id", "truncated")


@dataclass
class GarbageDns:
    """Answers every datagram on 127.0.0.1:port according to `mode` (one of MODES)."""

    port: int
    mode: str
    queries: int = 0
    _sock: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> GarbageDns:
        assert self.mode in MODES, self.mode
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="garbage-dns", daemon=True)
        self._thread.start()
        return self

    def _answer(self, query: bytes) -> bytes:
        if self.mode == "random":
            return os.urandom(max(12, len(query)))
        try:
            request = DNSRecord.parse(query)
        except Exception:  # dnslib raises its own and struct errors alike; answer noise
            return os.urandom(12)
        reply = request.reply()
        # A plausible answer (another address than the real one), so a resolver that accepted it
        # anyway would move the route: the test would see it.
        reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A("127.0.0.254"), ttl=1))
        packed = bytearray(reply.pack())
        if self.mode == "wrong-id":
            packed[0] ^= 0xFF
            return bytes(packed)
        return bytes(packed[: len(packed) // 2])  # truncated, without the TC bit

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                query, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.queries += 1
            try:
                self._sock.sendto(self._answer(query), peer)
            except OSError:
                continue

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
