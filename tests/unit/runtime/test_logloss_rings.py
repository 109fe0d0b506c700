"""Counting what remote syslog rings drop: `show events` parsing, haproxy's "N events dropped"
lines, and the bookkeeping across haproxy's resets and exited workers."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

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
