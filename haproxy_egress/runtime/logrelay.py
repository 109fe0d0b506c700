"""The log relay: haproxy's log lines from a FIFO in the run dir to the pod's stdout, whole.

haproxy writes every log line with one non-blocking writev() to its stdout (`log stdout`), and
that stdout is the FIFO `RunDir.log_pipe`, not the pod's pipe. The relay child reads the FIFO
in large chunks and writes whole lines to the real stdout in batches. Why this shape:

* Every haproxy process writes to the same FIFO for as long as it lives: a worker left behind
  by a reload keeps logging its last connections (a `ring` forwarder in haproxy 2.6 closes as
  soon as its worker is stopping, and what the ring still holds is lost; see
  docs/operations.md).
* The supervisor keeps its own read-write descriptor of the FIFO open (`LogPipe`): haproxy's
  writes never fail with EPIPE while the relay restarts, and whatever the FIFO holds survives
  a relay that is killed; the next relay carries on from there.
* Nothing here drops a line. When stdout is slow the relay buffers up to `buffer_bytes`, then
  stops reading, the FIFO fills (`pipe_bytes`), and haproxy counts what it cannot write in
  `DroppedLogs` (exported as haproxy_egress_log_dropped_total{stage="haproxy"}).

The relay's counters live in a small memory-mapped state file, so a relay killed with SIGKILL
leaves behind what it had read but not written; the next one adds that to `lost_killed`. A read
from the FIFO is destructive, and a kill can land between the read and the count: so the relay
reads into a staging area of that same shared mapping, and a successor counts whatever a dead
relay left there. No window remains in which a line is gone and not counted.

This module is also the relay process's entry point (`python -m haproxy_egress.runtime.logrelay`):
the child imports nothing of the router, so a restarted relay reads again within ~0.1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import logging
import mmap
import os
import select
import signal
import stat
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from haproxy_egress.errors import EgressError
from haproxy_egress.logsetup import configure
from haproxy_egress.runtime.children import Child
from haproxy_egress.settings import LogFormat

log = logging.getLogger(__name__)

F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ exists only from Python 3.10 on some builds
READ_CHUNK = 1 << 16
WRITE_BATCH = 1 << 18  # bytes per write() to stdout: few syscalls, bounded latency
MAX_LINE = 1 << 16  # haproxy's lines are at most `len 8192`; anything longer is not a line

# --- the state file ---------------------------------------------------------------------------

MAGIC = 0x45474C52  # "EGLR"
# magic, pid, lines_in, lines_out, tail_bytes, lost_killed, lost_unwritable, starts, cut
_LAYOUT = struct.Struct("<9Q")
_FIELDS = (
    "magic",
    "pid",
    "lines_in",
    "lines_out",
    "tail_bytes",
    "lost_killed",
    "lost_unwritable",
    "starts",
    "cut",
)


@dataclass(frozen=True)
class RelayCounters:
    """What the relay's state file says (cumulative over relay restarts within one run)."""

    pid: int = 0
    lines_in: int = 0  # whole lines read from the FIFO
    lines_out: int = 0  # whole lines written to stdout
    tail_bytes: int = 0  # bytes of a line read but not yet complete
    lost_killed: int = 0  # lines a killed relay had read and not written
    lost_unwritable: int = 0  # lines stdout refused (closed: EPIPE, EIO)
    starts: int = 0
    cut: int = 0  # over-long "lines" (> MAX_LINE) passed on in pieces

    @property
    def lost(self) -> int:
        """Every line the relay itself lost."""
        return self.lost_killed + self.lost_unwritable


def read_counters(path: Path) -> RelayCounters | None:
    """The relay's counters, or None when there is no valid state file (no relay yet)."""
    try:
        data = path.read_bytes()[: _LAYOUT.size]
    except OSError:
        return None
    if len(data) < _LAYOUT.size:
        return None
    values = dict(zip(_FIELDS, _LAYOUT.unpack(data), strict=True))
    if values.pop("magic") != MAGIC:
        return None
    return RelayCounters(**values)


_STATE_SIZE = _LAYOUT.size + READ_CHUNK  # the counters, then the staging area
_ZEROS = bytes(READ_CHUNK)


class StateFile:
    """The relay's counters in a shared mapping: every update is a store, no syscall, and it
    outlives the process (the page cache), so a SIGKILL cannot take the counts with it.

    After the counters comes the staging area: the relay reads the FIFO straight into it, so
    bytes taken from the FIFO are in the page cache before the read returns. Haproxy's log
    lines hold no NUL byte, and the area is zeroed once a read is counted, so what a dead
    relay left uncounted is the area up to its first NUL.
    """

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _STATE_SIZE:
                # Real bytes, not ftruncate: a sparse page on a full tmpfs would be allocated
                # at the first store and kill the relay with SIGBUS; this fails with ENOSPC.
                os.pwrite(fd, bytes(_STATE_SIZE), 0)
            self._map = mmap.mmap(fd, _STATE_SIZE)
        finally:
            os.close(fd)
        self.staging = memoryview(self._map)[_LAYOUT.size :]
        self._lock = threading.Lock()
        values = list(_LAYOUT.unpack_from(self._map, 0))
        self.values: dict[str, int] = dict(zip(_FIELDS, values, strict=True))
        if self.values["magic"] != MAGIC:
            self.values = dict.fromkeys(_FIELDS, 0)
            self.values["magic"] = MAGIC

    def add(self, **deltas: int) -> None:
        """Add to counters and store them at once."""
        with self._lock:
            for name, delta in deltas.items():
                self.values[name] += delta
            self._store()

    def set(self, **values: int) -> None:
        """Set counters and store them at once."""
        with self._lock:
            self.values.update(values)
            self._store()

    def _store(self) -> None:
        _LAYOUT.pack_into(self._map, 0, *(self.values[f] for f in _FIELDS))

    def staged(self) -> bytes:
        """What a relay read into the staging area and did not count."""
        end = self._map.find(b"\0", _LAYOUT.size, _STATE_SIZE)
        return bytes(self.staging[: (end if end >= 0 else _STATE_SIZE) - _LAYOUT.size])

    def unstage(self, size: int) -> None:
        """The first `size` staged bytes are counted: clear them for the next read."""
        self.staging[:size] = _ZEROS[:size]


# --- the FIFO ---------------------------------------------------------------------------------


class LogPipe:
    """The FIFO haproxy's stdout is opened on; the supervisor holds it open for its whole life."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.fd: int | None = None

    def ensure(self) -> None:
        """Create the FIFO (replacing anything else at that path) and hold it open read-write,
        so haproxy's open never blocks and the buffer outlives every reader."""
        if self.fd is not None:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISFIFO(os.lstat(self.path).st_mode):
                    self.path.unlink()
            if not self.path.exists():
                os.mkfifo(self.path, 0o600)
            # O_RDWR on a FIFO never blocks (Linux); not inherited by children (O_CLOEXEC).
            self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise EgressError(f"cannot create the log FIFO {self.path}: {exc}") from exc
        self.size = set_pipe_size(self.fd, self.size)
        log.debug("log pipe %s holds %d bytes", self.path, self.size)

    def close(self) -> None:
        """Release the supervisor's descriptor (at exit)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def set_pipe_size(fd: int, size: int) -> int:
    """Grow a pipe's buffer towards `size` (capped by /proc/sys/fs/pipe-max-size for an
    unprivileged process); returns the size the kernel granted."""
    try:
        return int(fcntl.fcntl(fd, F_SETPIPE_SZ, size))
    except OSError:
        with contextlib.suppress(OSError):
            cap = int(Path("/proc/sys/fs/pipe-max-size").read_text())
            return int(fcntl.fcntl(fd, F_SETPIPE_SZ, min(size, cap)))
        return 65536


# --- the relay ---------------------------------------------------------------------------------


class Relay:
    """Reads the FIFO in one thread, writes whole lines to stdout in another."""

    def __init__(self, source: int, sink: int, state: StateFile, buffer_bytes: int) -> None:
        self.source = source
        self.sink = sink
        self.state = state
        self.buffer_bytes = buffer_bytes
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._buffered = 0
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._reader_done = threading.Event()
        self._tail = b""
        self._skip_fragment = False

    def recover(self) -> int:
        """Account for a predecessor that died without writing what it had read; returns
        the lines it lost. Its half-read line continues at the head of the FIFO: skip it.

        Lost: the lines it counted in and did not write out, every line with a byte in what
        it read and had not yet counted (its staging area), and the line it held half of.
        (Killed after counting a read but before clearing the staging area, a read is
        counted twice: an over-count by one read, never a line gone uncounted.)
        """
        v = self.state.values
        staged = self.state.staged()
        lost = max(0, v["lines_in"] - v["lines_out"]) + staged.count(b"\n")
        open_line = not staged.endswith(b"\n") if staged else bool(v["tail_bytes"])
        if open_line:
            lost += 1
            self._skip_fragment = True
        self.state.unstage(len(staged))
        self.state.set(
            lines_in=v["lines_out"],
            tail_bytes=0,
            lost_killed=v["lost_killed"] + lost,
            starts=v["starts"] + 1,
            pid=os.getpid(),
        )
        return lost

    # reader thread
    def read_loop(self) -> None:
        """Take whole lines from the FIFO until asked to stop, then drain what is left."""
        poller = select.poll()
        poller.register(self.source, select.POLLIN)
        try:
            while True:
                stopping = self._stopping.is_set()
                # A bounded wait: someone (the supervisor) always holds a write end, so the
                # FIFO never reports EOF and a blocking read would never see the stop.
                if stopping:
                    os.set_blocking(self.source, False)
                elif not poller.poll(200):
                    continue
                try:
                    size = os.readv(self.source, [self.state.staging])
                except BlockingIOError:
                    return  # stopping, and the FIFO is empty
                except InterruptedError:
                    continue
                if not size:
                    if stopping:
                        return
                    time.sleep(0.01)  # no writer at all (cannot happen beside LogPipe)
                    continue
                self._take(bytes(self.state.staging[:size]))
        finally:
            self._reader_done.set()
            with self._cond:
                self._cond.notify_all()

    def _take(self, data: bytes) -> None:
        size = len(data)  # the staged bytes this read counts
        if self._skip_fragment:
            cut = data.find(b"\n")
            if cut < 0:
                self.state.unstage(size)  # still inside the half line, counted as lost
                return
            data = data[cut + 1 :]
            self._skip_fragment = False
        data = self._tail + data
        end = data.rfind(b"\n") + 1
        whole, self._tail = data[:end], data[end:]
        cut = 0
        if len(self._tail) > MAX_LINE:  # not a haproxy line: pass it on rather than hoard it
            whole, self._tail, cut = whole + self._tail + b"\n", b"", 1
        lines = whole.count(b"\n")
        with self._cond:
            if lines:
                self._chunks.append((whole, lines))
                self._buffered += len(whole)
            self.state.add(lines_in=lines, cut=cut)
            self.state.set(tail_bytes=len(self._tail))
            self.state.unstage(size)
            self._cond.notify_all()
            # Full: stop reading. The FIFO then fills and haproxy counts what it cannot write.
            while self._buffered >= self.buffer_bytes and not self._stopping.is_set():
                self._cond.wait(0.5)

    # writer (main thread)
    def write_loop(self) -> None:
        """Write batches of whole lines until the reader is done and the buffer is empty."""
        while True:
            with self._cond:
                while not self._chunks and not self._reader_done.is_set():
                    self._cond.wait(0.5)
                if not self._chunks:
                    return
                batch: list[bytes] = []
                size = lines = 0
                while self._chunks and size < WRITE_BATCH:
                    chunk, n = self._chunks.popleft()
                    batch.append(chunk)
                    size += len(chunk)
                    lines += n
            written = self._write(b"".join(batch))
            with self._cond:
                self._buffered -= size
                self._cond.notify_all()
            if written:
                self.state.add(lines_out=lines)
            else:
                self.state.add(lines_out=lines, lost_unwritable=lines)

    def _write(self, data: bytes) -> bool:
        """Write all of `data`; False if stdout refuses it for good (closed)."""
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.sink, view)
            except InterruptedError:
                continue
            except BlockingIOError:  # someone made the shared stdout non-blocking: wait
                _wait_writable(self.sink)
                continue
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.EIO, errno.EBADF, errno.ENOSPC):
                    return False
                raise
            view = view[n:]
        return True

    def stop(self) -> None:
        """Finish: drain the FIFO, write everything, then return from run(). Only sets an
        event, so a signal handler may call it."""
        self._stopping.set()

    def run(self) -> None:
        """Relay until stopped."""
        reader = threading.Thread(target=self.read_loop, name="log-relay-read", daemon=True)
        reader.start()
        self.write_loop()


def _wait_writable(fd: int) -> None:
    select.select([], [fd], [], 1.0)


def relay_child(
    pipe: LogPipe, state: Path, buffer_bytes: int, log_format: LogFormat = LogFormat.TEXT
) -> Child:
    """The supervised relay: started first (it creates the FIFO haproxy's stdout opens), ready
    once it has written its pid into the state file."""
    argv = [sys.executable, "-m", __name__, "--input", str(pipe.path), "--state", str(state)]
    argv += ["--log-format", log_format.value]
    child = Child("log-relay", [*argv, "--buffer-bytes", str(buffer_bytes)])

    def ready() -> bool:
        counters = read_counters(state)
        return counters is not None and child.pid is not None and counters.pid == child.pid

    child.probe = ready
    child.before_start = pipe.ensure
    return child


def main(argv: Sequence[str] | None = None) -> int:
    """The relay child: `python -m haproxy_egress.runtime.logrelay --input FIFO --state FILE`."""
    parser = argparse.ArgumentParser(prog="haproxy-egress-log-relay")
    parser.add_argument("--input", required=True, type=Path, help="the FIFO haproxy writes to")
    parser.add_argument("--state", required=True, type=Path, help="the counters file")
    parser.add_argument("--buffer-bytes", type=int, default=16 << 20)
    parser.add_argument("--log-format", type=LogFormat, default=LogFormat.TEXT)
    args = parser.parse_args(argv)
    # The relay's own (rare) lines go to stderr in the supervisor's format, one write() each.
    configure(args.log_format)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    source = os.open(args.input, os.O_RDONLY)
    state = StateFile(args.state)
    relay = Relay(source, sys.stdout.fileno(), state, args.buffer_bytes)
    lost = relay.recover()
    if lost:
        log.warning("the previous relay died with %d log line(s) unwritten (counted)", lost)

    def on_term(_signum: int, _frame: object) -> None:
        relay.stop()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    relay.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
