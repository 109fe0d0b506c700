"""The log relay on real pipes: whole lines out, nothing merged or cut, a killed predecessor's
losses counted; and the loss counters' parsing and metric families."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from haproxy_egress.metrics.logs import LogLoss, WorkerLogDrops, log_families
from haproxy_egress.runtime.logloss import LogLossWatch, worker_pids
from haproxy_egress.runtime.logrelay import LogPipe, Relay, StateFile, read_counters


def _relay(tmp_path: Path, buffer_bytes: int = 1 << 20) -> tuple[Relay, int, int, int]:
    """A relay from a pipe (what haproxy writes) to a pipe (the pod's stdout)."""
    src_r, src_w = os.pipe()
    out_r, out_w = os.pipe()
    relay = Relay(src_r, out_w, StateFile(tmp_path / "state"), buffer_bytes)
    return relay, src_w, out_r, out_w


def _run(relay: Relay) -> threading.Thread:
    t = threading.Thread(target=relay.run, daemon=True)
    t.start()
    return t


def _read_until(fd: int, lines: int, timeout: float = 10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    os.set_blocking(fd, False)
    while data.count(b"\n") < lines and time.monotonic() < deadline:
        try:
            data += os.read(fd, 1 << 20)
        except BlockingIOError:
            time.sleep(0.01)
    return data


@pytest.mark.timeout(30)
def test_lines_written_in_pieces_come_out_whole_and_in_order(tmp_path: Path) -> None:
    relay, src_w, out_r, _ = _relay(tmp_path)
    thread = _run(relay)
    lines = [f"line {i} ".encode() + b"x" * (i % 8000) + b"\n" for i in range(300)]
    blob = b"".join(lines)
    # Torn across writes at awkward places, as a reader may see a writer's line.
    for start in range(0, len(blob), 777):
        os.write(src_w, blob[start : start + 777])
    assert _read_until(out_r, 300) == blob
    relay.stop()
    thread.join(5)
    counters = read_counters(tmp_path / "state")
    assert counters is not None
    assert (counters.lines_in, counters.lines_out, counters.lost) == (300, 300, 0)


@pytest.mark.timeout(30)
def test_stop_drains_what_is_left_in_the_pipe(tmp_path: Path) -> None:
    relay, src_w, out_r, _ = _relay(tmp_path)
    os.write(src_w, b"a\nb\nc\n")
    relay.stop()
    relay.run()  # returns once the pipe is empty and everything is written
    assert _read_until(out_r, 3) == b"a\nb\nc\n"


@pytest.mark.timeout(30)
def test_a_successor_counts_what_a_killed_relay_held_and_skips_its_half_line(
    tmp_path: Path,
) -> None:
    state = StateFile(tmp_path / "state")
    # A relay was killed having read 10 whole lines and half of the 11th, written 7.
    state.set(lines_in=10, lines_out=7, tail_bytes=5, pid=1, starts=1)
    src_r, src_w = os.pipe()
    out_r, out_w = os.pipe()
    relay = Relay(src_r, out_w, StateFile(tmp_path / "state"), 1 << 20)
    assert relay.recover() == 4  # 3 whole lines + the half one
    os.write(src_w, b"second half of 11\nline 12\n")
    relay.stop()
    relay.run()
    assert _read_until(out_r, 1) == b"line 12\n"
    counters = read_counters(tmp_path / "state")
    assert counters is not None
    assert counters.lost_killed == 4
    assert counters.lines_out == 8
    assert counters.pid == os.getpid()


@pytest.mark.timeout(30)
def test_a_closed_stdout_is_counted_not_fatal(tmp_path: Path) -> None:
    relay, src_w, out_r, _ = _relay(tmp_path)
    os.close(out_r)  # nobody reads the pod's stdout any more: EPIPE
    os.write(src_w, b"1\n2\n")
    relay.stop()
    relay.run()
    counters = read_counters(tmp_path / "state")
    assert counters is not None
    assert counters.lost_unwritable == 2


def test_log_pipe_is_a_fifo_with_the_size_asked_for(tmp_path: Path) -> None:
    pipe = LogPipe(tmp_path / "log.pipe", 1 << 18)
    (tmp_path / "log.pipe").write_text("stale regular file")
    pipe.ensure()
    try:
        assert (tmp_path / "log.pipe").is_fifo()
        assert pipe.size >= 1 << 18
        # A writer opens without blocking and its line stays in the pipe for a reader to come.
        fd = os.open(tmp_path / "log.pipe", os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"kept\n")
        os.close(fd)
        reader = os.open(tmp_path / "log.pipe", os.O_RDONLY | os.O_NONBLOCK)
        assert os.read(reader, 100) == b"kept\n"
        os.close(reader)
    finally:
        pipe.close()


SHOW_PROC = """#<PID>          <type>          <reloads>       <uptime>        <version>
24728           master          2 [failed: 0]   0d00h00m10s     2.6.12-1+deb12u4
# workers
31496           worker          0               0d00h00m02s     2.6.12-1+deb12u4
# old workers
24731           worker          1               0d00h00m10s     2.6.12-1+deb12u4
24700           worker          2               0d00h00m12s     2.6.12-1+deb12u4
# programs
"""


def test_worker_pids_include_old_workers() -> None:
    assert worker_pids(SHOW_PROC) == [(31496, "current"), (24731, "old"), (24700, "old")]


def test_log_families_name_every_stage() -> None:
    loss = LogLoss(
        haproxy_dropped=5,
        workers=(WorkerLogDrops(31496, "current", 2), WorkerLogDrops(24731, "old", 3)),
        relay=True,
        relay_lines=100,
        relay_lost_killed=4,
    )
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in log_families(loss)
        for s in fam.samples
    }
    dropped = "haproxy_egress_log_dropped_total"
    assert samples[(dropped, (("reason", "sink_full"), ("stage", "haproxy")))] == 5
    assert samples[(dropped, (("reason", "killed"), ("stage", "relay")))] == 4
    assert samples[(dropped, (("reason", "stdout_closed"), ("stage", "relay")))] == 0
    worker = "haproxy_egress_log_worker_dropped"
    assert samples[(worker, (("pid", "24731"), ("role", "old")))] == 3
    assert samples[("haproxy_egress_log_lines_total", ())] == 100
    assert loss.total == 9
    assert log_families(None) == []


def test_loss_warning_is_rate_limited(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = StateFile(tmp_path / "state")
    # No master socket: haproxy's counters stay unknown; the relay's file is read alone.
    watch = LogLossWatch(tmp_path / "no-master.sock", tmp_path / "state", warn_interval=60)
    caplog.set_level("WARNING")
    assert watch.poll(now=0.0, force=True).total == 0
    state.add(lost_killed=3)
    assert watch.poll(now=1.0, force=True).relay_lost_killed == 3
    state.add(lost_killed=2)
    watch.poll(now=30.0, force=True)  # within the interval: counted, not logged again
    assert watch.snapshot().total == 5
    state.add(lost_unwritable=1)
    watch.poll(now=62.0, force=True)
    warnings = [r.getMessage() for r in caplog.records if "log line(s) lost" in r.getMessage()]
    assert len(warnings) == 2
    assert warnings[0].startswith("3 log line(s) lost")
    assert warnings[1].startswith("3 log line(s) lost")  # 2 + 1 since the first warning
    assert "6 in all this run" in warnings[1]


@pytest.mark.timeout(30)
def test_a_relay_killed_between_its_read_and_its_count_loses_nothing_uncounted(
    tmp_path: Path,
) -> None:
    """A read from the FIFO is destructive: a relay killed right after it returned had not
    counted those lines yet. They are in the state file's staging area, and its successor
    counts them, and the half line they end with, as lost."""
    state = StateFile(tmp_path / "state")
    state.set(lines_in=5, lines_out=5, tail_bytes=3, pid=1, starts=1)
    src_r, src_w = os.pipe()
    data = b"rest of 6\nline 7\nline 8\nhalf of 9"
    os.write(src_w, data)
    # What the dead relay's read did before the kill: the bytes left the pipe for the area.
    assert os.readv(src_r, [state.staging]) == len(data)
    relay = Relay(src_r, src_w, StateFile(tmp_path / "state"), 1 << 20)
    assert relay.recover() == 4  # lines 6, 7 and 8, and the half of 9
    assert StateFile(tmp_path / "state").staged() == b""
    counters = read_counters(tmp_path / "state")
    assert counters is not None
    assert counters.lost_killed == 4


@pytest.mark.timeout(30)
def test_every_counted_read_leaves_the_staging_area_empty(tmp_path: Path) -> None:
    relay, src_w, out_r, _ = _relay(tmp_path)
    os.write(src_w, b"a long first line\nb\nhalf")
    relay.stop()
    relay.run()
    assert _read_until(out_r, 2) == b"a long first line\nb\n"
    assert relay.state.staged() == b""
