"""Counting what remote syslog rings drop: `show events` parsing, haproxy's "N events dropped"
lines, and the bookkeeping across haproxy's resets and exited workers."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from haproxy_egress.haproxy.eventstream import RingStream
from haproxy_egress.haproxy.show import announcements, parse_event_sinks, parse_info
from haproxy_egress.metrics.logs import LogLoss, log_families
from haproxy_egress.runtime.logloss import RingDrops

DATA = Path(__file__).parent.parent.parent / "data"
# Recorded from haproxy 2.6: one ring that dropped while its receiver was away.
DUMP = (
    "<134>1 2026-12-06T21:23:03.645250+00:00 - haproxy 12557 - - 127.0.0.1:1 [x] f f/s 0 200\n"
    "<134>1 2026-12-06T21:23:03.645250+00:00 - haproxy 12557 - - 208 events dropped\n"
    "<134>1 2026-12-06T21:23:03.645255+00:00 - haproxy 12557 - - GET /9 events dropped x\n"
    "<134>1 2026-12-06T21:23:09.251168+00:00 - haproxy 12557 - - 1 event dropped\n"
)


def test_show_events_lists_sinks_with_their_counters() -> None:
    sinks = parse_event_sinks((DATA / "show_events_2.6.txt").read_text())
    rings = {s.name: (s.kind, s.dropped, s.description) for s in sinks if s.kind == "buffer"}
    assert rings == {
        "buf0": ("buffer", 0, "in-memory ring buffer"),
        "egress_syslog_1": ("buffer", 208, "127.0.0.1:47515"),
        "egress_syslog_2": ("buffer", 0, "[::1]:5514"),
    }


def test_show_events_of_3_0_counts_each_drop_twice() -> None:
    """Recorded from haproxy 3.0.11 (a ring whose receiver went away, 59 lines dropped, and a
    log backend's two implicit rings): 3.0 keeps the count above bit 0 of the counter."""
    text = (DATA / "show_events_3.0.txt").read_text()
    sinks = parse_event_sinks(text, doubled=True)
    rings = {s.name: s.dropped for s in sinks if s.kind == "buffer"}
    assert rings == {
        "buf0": 0,
        "egress_syslog_1": 59,
        "egress_syslog_2/primary": 0,
        "egress_syslog_2/failover": 0,
    }
    info = (DATA / "haproxy" / "3.0" / "show_info.txt").read_text()
    assert parse_info(info).sink_drops_doubled
    assert not parse_info(
        (DATA / "haproxy" / "2.6" / "show_info.txt").read_text()
    ).sink_drops_doubled


def test_announcements_are_haproxy_lines_only() -> None:
    found = announcements(DUMP)
    assert [n for _, n in found] == [208, 1]  # a client's "GET /9 events dropped x" is not one
    assert announcements("12 events dropped\n") == [("12 events dropped", 12)]  # format raw
    # haproxy 3.0 writes the line with its C string's NUL, in a dump of an old worker's ring
    # as in a tap's stream; the line is booked without it.
    dump_3_0 = (
        "<133>1 2026-12-07T03:32:30.089391+00:00 - haproxy30 32540 - - 33896 events dropped\0\n"
    )
    assert announcements(dump_3_0) == [(dump_3_0[:-2], 33896)]


def test_a_tapped_ring_leaves_the_fast_polls_once_its_counter_is_quiet() -> None:
    """A ring with a tap is never dumped; its drops make the watch poll faster only while its
    counter moves."""
    rings = RingDrops()
    rings.stream(7, "egress_syslog_1", "10.0.0.5:6514", [])
    rings.see(7, "egress_syslog_1", "10.0.0.5:6514", 40)
    assert rings.busy
    rings.stream(7, "egress_syslog_1", "10.0.0.5:6514", [("40 events dropped", 40)])
    rings.see(7, "egress_syslog_1", "10.0.0.5:6514", 0)
    assert rings.busy  # just announced: one more poll
    rings.stream(7, "egress_syslog_1", "10.0.0.5:6514", [])
    rings.see(7, "egress_syslog_1", "10.0.0.5:6514", 0)
    assert not rings.busy
    assert rings.totals() == (("10.0.0.5:6514", 40),)


def test_drops_survive_the_reset_and_are_booked_once() -> None:
    rings = RingDrops()
    rings.see(7, "egress_syslog_1", "10.0.0.5:6514", 150)
    assert rings.totals() == (("10.0.0.5:6514", 150),)
    assert rings.to_read(7) == ["egress_syslog_1"]
    # haproxy announced 208 (150 seen + 58 since) and counts again from 0.
    rings.read(7, "egress_syslog_1", announcements(DUMP.split("\n", 2)[1]))
    rings.see(7, "egress_syslog_1", "10.0.0.5:6514", 0)
    assert rings.totals() == (("10.0.0.5:6514", 208),)
    # The same line read again is not booked again; a new one (the "1 event") is.
    rings.read(7, "egress_syslog_1", announcements(DUMP))
    rings.see(7, "egress_syslog_1", "10.0.0.5:6514", 0)
    assert rings.totals() == (("10.0.0.5:6514", 209),)
    rings.read(7, "egress_syslog_1", announcements(DUMP))
    rings.see(7, "egress_syslog_1", "10.0.0.5:6514", 0)
    assert rings.to_read(7) == []  # quiet again: no dump at the next poll
    assert rings.totals() == (("10.0.0.5:6514", 209),)


def test_a_reset_whose_announcement_was_not_read_books_what_was_seen() -> None:
    rings = RingDrops()
    rings.see(7, "egress_syslog_1", "10.0.0.5:6514", 150)
    # The ring turned over before it was read: the counter is back to 0, no line found.
    rings.read(7, "egress_syslog_1", [])
    rings.see(7, "egress_syslog_1", "10.0.0.5:6514", 0)
    assert rings.totals() == (("10.0.0.5:6514", 150),)  # never less than was seen
    # The announcement turns up at the next poll after all: only its excess is booked.
    rings.read(7, "egress_syslog_1", announcements(DUMP.split("\n", 2)[1]))
    rings.see(7, "egress_syslog_1", "10.0.0.5:6514", 0)
    assert rings.totals() == (("10.0.0.5:6514", 208),)
    # A later reset never read is floored again, from what the counter showed.
    rings.see(7, "egress_syslog_1", "10.0.0.5:6514", 40)
    rings.read(7, "egress_syslog_1", [])
    rings.see(7, "egress_syslog_1", "10.0.0.5:6514", 3)
    assert rings.totals() == (("10.0.0.5:6514", 208 + 40 + 3),)


def test_a_tapped_announcement_late_for_its_reset_is_booked_once() -> None:
    """A tap's announcement may reach the router a poll or two after the counter reset it
    explains (it was in the socket): the floor booked meanwhile waits for it, then only the
    excess is booked; the total never goes down."""
    rings = RingDrops()
    rings.see(7, "egress_syslog_1", "10.0.0.5:6514", 150)
    for _ in range(2):  # two polls: the counter was reset (and grew again), no line yet
        rings.stream(7, "egress_syslog_1", "10.0.0.5:6514", [])
        rings.see(7, "egress_syslog_1", "10.0.0.5:6514", 5)
        assert rings.totals() == (("10.0.0.5:6514", 155),)
    found = [("<133>1 t - haproxy30 9 - - 208 events dropped", 208)]
    rings.stream(7, "egress_syslog_1", "10.0.0.5:6514", found)
    rings.see(7, "egress_syslog_1", "10.0.0.5:6514", 5)
    assert rings.totals() == (("10.0.0.5:6514", 213),)
    # The same text announced again is another announcement: a stream never repeats a line.
    rings.stream(7, "egress_syslog_1", "10.0.0.5:6514", [("12 events dropped", 12)] * 2)
    rings.see(7, "egress_syslog_1", "10.0.0.5:6514", 0)
    assert rings.totals() == (("10.0.0.5:6514", 213 - 5 + 24),)
    # A dump of the ring once the tap is closed (an old worker) skips what the tap booked.
    rings.read(7, "egress_syslog_1", found)
    rings.see(7, "egress_syslog_1", "10.0.0.5:6514", 0)
    assert rings.totals() == (("10.0.0.5:6514", 232),)


def test_a_stream_keeps_only_announcements_and_reads_3_0s_nul() -> None:
    """Lines as `show events -w` sends them, cut anywhere by recv(): haproxy 3.0 writes its
    announcement with the C string's NUL (recorded from 3.0.11), 2.6 without."""
    data = (
        b"<134>1 2026-12-07T03:32:23.086846+00:00 - haproxy30 32540 - - 127.0.0.1:57348 "
        b"[07/Dec/2026:03:32:23.085] edge edge/127.0.0.1_18559 1/0/0 85 -- 4/4/3/3/0 0/0\n"
        b"<133>1 2026-12-07T03:32:30.089391+00:00 - haproxy30 32540 - - 33896 events dropped\0\n"
        b"<133>1 2026-12-07T03:33:06.402168+00:00 - haproxy 2555 - - 1 event dropped\n"
        b"GET /9 events dropped\n"
    )
    for cut in (1, 7, 100, len(data) - 3):
        stream = RingStream(Path("/nonexistent"), "egress_syslog_1")
        found = stream.feed(data[:cut]) + stream.feed(data[cut:])
        assert [n for _, n in found] == [33896, 1], cut
        assert found[0][0].endswith("- - 33896 events dropped")


def test_an_exited_worker_keeps_its_count() -> None:
    rings = RingDrops()
    rings.see(7, "egress_syslog_1", "10.0.0.5:6514", 40)
    rings.see(8, "egress_syslog_1", "10.0.0.5:6514", 2)
    rings.retire({8})
    rings.see(8, "egress_syslog_1", "10.0.0.5:6514", 3)
    assert rings.totals() == (("10.0.0.5:6514", 43),)
    assert rings.to_read(7) == []


class _Families(Collector):
    def __init__(self, loss: LogLoss) -> None:
        self._loss = loss

    def collect(self) -> Iterable[Metric]:
        return log_families(self._loss)


def test_the_syslog_stage_has_a_target_label() -> None:
    registry = CollectorRegistry()
    registry.register(_Families(LogLoss(syslog_dropped=(("10.0.0.5:6514", 209),))))
    text = generate_latest(registry).decode()
    assert 'haproxy_egress_log_dropped_total{stage="syslog",target="10.0.0.5:6514"} 209.0' in text
    assert 'haproxy_egress_log_dropped_total{reason="sink_full",stage="haproxy"} 0.0' in text
