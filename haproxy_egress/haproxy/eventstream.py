"""A ring's lines as haproxy writes them: `show events <ring> -w` on a worker's stats socket,
kept open, of which only haproxy's "N events dropped" announcements are kept.

Why a stream and not a dump now and then: haproxy writes that announcement into the ring once
writing works again after drops, and resets its drop counter; a ring of 64 KiB turns over in
0.1 s on haproxy 3.0 under load, so a periodic dump misses it. A reader attached to the ring
holds its place there: haproxy never overwrites a line a reader has not read (it drops the new
line instead, and counts it), so this stream sees every line written after it attached. It
must keep up, or the ring fills behind it: the reader thread does little more than recv().
It reads what has arrived, then sleeps a little rather than wait in recv(): haproxy's sends
then find no sleeper on the socket to wake, which is most of what a reader costs haproxy.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

from haproxy_egress.errors import HaproxyError
from haproxy_egress.haproxy.show import announcements

_RECV_SIZE = 1 << 18
# An idle `show events -w` session ends after `stats timeout` on haproxy 2.6 (3.0 keeps it):
# this session's own timeout is raised to the most haproxy takes (seconds, kept in ms in an
# int), ~23 days without a single line.
_SESSION_TIMEOUT = 2_000_000
_PID = re.compile(rb"\nPid: (\d+)\n")
_MAX_TAIL = 1 << 16  # a partial line longer than any of haproxy's (`len 8192`) is not one


class RingStream:
    """One `show events <ring> -w` session on the stats socket (the current worker)."""

    def __init__(self, stats_socket: Path, ring: str, *, seek_new: bool = False) -> None:
        self._path = stats_socket
        self._ring = ring
        # -n: only lines written from now on (a second session on the same worker must not
        # read again what the first one booked); else from the oldest line the ring holds.
        self._flags = "-nw" if seek_new else "-w"
        self._sock: socket.socket | None = None
        self._tail = b""

    def open(self, timeout: float = 2.0) -> int:
        """Connect and start the stream; returns the pid of the worker that answers (the one
        holding the stats socket: after a reload, maybe not the one asked for)."""
        deadline = time.monotonic() + timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        data = b""
        try:
            sock.settimeout(timeout)
            sock.connect(str(self._path))
            # `show info` first, in the same session: it names the worker the stream is on.
            command = f"set timeout cli {_SESSION_TIMEOUT}; show info; show events {self._ring}"
            sock.sendall(f"{command} {self._flags}\n".encode())
            while True:
                found = _PID.search(data)
                end = data.find(b"\n\n", found.end() - 1) if found else -1
                if found and end >= 0:
                    break
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(_RECV_SIZE)
                if not chunk:
                    raise HaproxyError(f"{self._path}: show events {self._ring}: {data[-200:]!r}")
                data += chunk
        except (OSError, TimeoutError) as exc:
            sock.close()
            raise HaproxyError(f"{self._path}: show events {self._ring} failed: {exc}") from exc
        except HaproxyError:
            sock.close()
            raise
        sock.setblocking(False)  # `drain` reads what is there and never waits
        self._sock = sock
        self._tail = data[end + 2 :]
        return int(found.group(1))

    def drain(self, limit: int = 1 << 20) -> tuple[list[tuple[str, int]], int, bool]:
        """What has arrived, without waiting: (the announcements among it, bytes read, whether
        the session is still open). Read up to `limit` bytes at a time."""
        sock = self._sock
        if sock is None:
            return [], 0, False
        out: list[tuple[str, int]] = []
        got = 0
        while got < limit:
            try:
                chunk = sock.recv(_RECV_SIZE)
            except (BlockingIOError, TimeoutError):
                return out, got, True
            except OSError:
                chunk = b""
            if not chunk:  # the worker exited, or the session was closed
                self.close()
                return out, got, False
            got += len(chunk)
            out += self.feed(chunk)
        return out, got, True

    def feed(self, chunk: bytes) -> list[tuple[str, int]]:
        """The announcements among the whole lines `chunk` completes (the rest waits)."""
        data = self._tail + chunk
        cut = data.rfind(b"\n") + 1
        whole, self._tail = data[:cut], data[cut:]
        if len(self._tail) > _MAX_TAIL:
            self._tail = b""
        if b" dropped" not in whole:  # nearly always: skip decoding and the search
            return []
        return announcements(whole.decode("utf-8", "replace"))

    def close(self) -> None:
        """End the session (an old worker can only exit once its sessions are gone)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


__all__ = ["RingStream"]
