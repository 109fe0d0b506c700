"""Taps on the current worker's syslog rings: each reads its ring as haproxy writes it (a
`show events <ring> -w` session) and keeps the "N events dropped" lines, so that the loss
count never depends on reading an announcement before the ring overwrites it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from haproxy_egress.background import Background
from haproxy_egress.errors import EgressError
from haproxy_egress.haproxy.eventstream import RingStream

log = logging.getLogger(__name__)

# Between reads the tap sleeps rather than waits in recv(): a sender that finds no sleeper on
# the socket wakes nobody, and waking the reader at each send cost haproxy more than the
# send. What arrives meanwhile waits in the socket (~200 KiB) and in the ring itself; a read
# that finds much reads again at once, so the tap falls behind only in a burst of more than
# ring + socket within one pause.
PAUSE_SECONDS = 0.05
BUSY_BYTES = 1 << 16
# Each tap holds one of the stats socket's connections for good, and haproxy serves at most
# 10 at once (`stats maxconn`): the rest are for the metrics, the supervisor and operators.
# Rings beyond these (in name order) are counted from dumps, as an old worker's are.
MAX_TAPS = 4


class RingTap(Background):
    """One ring of one worker, read in its own thread; `take()` is for any thread."""

    def __init__(self, stream: RingStream, pid: int, ring: str) -> None:
        self.pid = pid
        self.ring = ring
        self._stream = stream
        self._lock = threading.Lock()
        self._pending: list[tuple[str, int]] = []
        self._ended = threading.Event()
        super().__init__(f"ring-tap-{ring}")

    def _run(self) -> None:
        while not self._stop.is_set():
            got, open_ = self._read()
            if not open_:
                break
            if got < BUSY_BYTES:
                self._stop.wait(PAUSE_SECONDS)
        self._ended.set()

    def _read(self) -> tuple[int, bool]:
        """Keep the announcements that have arrived; (bytes read, whether still open)."""
        found, got, open_ = self._stream.drain()
        if found:
            with self._lock:
                self._pending.extend(found)
        return got, open_

    @property
    def ended(self) -> bool:
        """The session is over (the worker exited, or `stop()`); `take()` still has its last
        announcements."""
        return self._ended.is_set()

    def take(self) -> list[tuple[str, int]]:
        """The announcements read since the last call, oldest first."""
        with self._lock:
            out, self._pending = self._pending, []
        return out

    def stop(self) -> None:
        """Stop the thread, keep what already arrived (an announcement in flight when the
        worker stopped being current), then close the session."""
        super().stop()
        self._read()
        self._stream.close()


Opener = Callable[[str, bool], RingStream]


class RingTaps:
    """The taps of the current worker's rings, kept in step with `show proc` by `sync()`.

    A tap is opened on the stats socket, which only the current worker answers; it is closed
    as soon as its worker is no longer current, since an open session would keep an old
    worker from ever exiting."""

    def __init__(self, stats_socket: Path, opener: Opener | None = None) -> None:
        self._opener: Opener = opener or (
            lambda ring, new: RingStream(stats_socket, ring, seek_new=new)
        )
        self._taps: dict[tuple[int, str], RingTap] = {}
        # (pid, ring) tapped before: a new session reads only what is new (-n), not again
        # what the ring still holds and the last one booked.
        self._tapped: set[tuple[int, str]] = set()

    def sync(self, current: Iterable[int], rings: Iterable[str]) -> list[RingTap]:
        """Open a tap on each ring of the current worker, close the others; returns the taps
        closed (their last announcements are still to `take()`)."""
        live = set(current)
        wanted = set(sorted(set(rings))[:MAX_TAPS])
        closed = [
            tap
            for key, tap in self._taps.items()
            if key[0] not in live or key[1] not in wanted or tap.ended
        ]
        for tap in closed:
            tap.stop()
            del self._taps[(tap.pid, tap.ring)]
        # A worker that is no longer current never is again.
        self._tapped = {key for key in self._tapped if key[0] in live}
        tapped = {ring for _, ring in self._taps}
        for ring in sorted(wanted - tapped):
            self._open(live, ring)
        return closed

    def _open(self, live: set[int], ring: str) -> None:
        again = any((pid, ring) in self._tapped for pid in live)
        stream = self._opener(ring, again)
        try:
            pid = stream.open()
        except EgressError as exc:
            log.debug("ring %s: no tap yet (%s)", ring, exc)
            return
        if pid not in live:
            # A worker `show proc` did not list as current (a reload in between): try at the
            # next poll.
            stream.close()
            return
        tap = RingTap(stream, pid, ring)
        self._taps[(pid, ring)] = tap
        self._tapped.add((pid, ring))
        tap.start()

    def get(self, pid: int, ring: str) -> RingTap | None:
        """The open tap on `ring` of worker `pid`, if any."""
        return self._taps.get((pid, ring))

    def stop(self) -> None:
        """Close every tap."""
        for tap in self._taps.values():
            tap.stop()
        self._taps.clear()


__all__ = ["RingTap", "RingTaps"]
