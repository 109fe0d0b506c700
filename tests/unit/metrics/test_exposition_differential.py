"""The column-wise /metrics renderer against the previous, row-by-row one: same families,
same samples, byte for byte (tests/unit/metrics/previous_exposition.py is the oracle).

On `show info;show stat` recorded from haproxy 2.6 and 3.0 (tests/data/), on tables of odd
cells and names, and on CSV text cut into blocks of every shape the parser meets (quoted
cells, short rows, rows of unequal length). tests/integration/test_exporter_parity.py holds
a live haproxy (2.6, or 3.0 with EGRESS_HAPROXY_BIN) to the same comparison.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haproxy_egress.haproxy.show import parse_info
from haproxy_egress.haproxy.stat import (
    StatTable,
    parse_columns,
    parse_stat,
    split_info_stat,
)
from haproxy_egress.metrics.exposition import render_stats, wanted_columns
from haproxy_egress.metrics.options import ExporterOptions
from haproxy_egress.metrics.stats import HaproxySnapshot
from tests.unit.metrics.previous_exposition import (
    assert_renders_as_before,
    encoded,
    family_blocks,
    previous_denied_family,
    previous_render_stats,
)
from tests.unit.metrics.test_exporter import OPTION_SETS, SNAPSHOT, _tables, columns_of

DATA = Path(__file__).resolve().parent.parent.parent / "data"


def _recorded(version: str) -> HaproxySnapshot:
    split = split_info_stat((DATA / "haproxy" / version / "show_info_stat.txt").read_text())
    assert split is not None
    info, stat = split
    return HaproxySnapshot(info=info.fields, stat=stat)


RECORDED = {"exporter-2.6": SNAPSHOT, "2.6": _recorded("2.6"), "3.0": _recorded("3.0")}


@pytest.mark.parametrize("recording", sorted(RECORDED))
@pytest.mark.parametrize("options", OPTION_SETS)
@pytest.mark.parametrize("openmetrics", [False, True])
def test_recorded_answers_render_as_before(
    recording: str, options: ExporterOptions, openmetrics: bool
) -> None:
    snapshot = RECORDED[recording]
    assert parse_stat(snapshot.stat).servers  # every row type is there to compare
    assert_renders_as_before(snapshot, options, openmetrics)


def test_the_recordings_hold_every_kind_of_family() -> None:
    """Between them, the recordings print every per-row family and the per-route denials."""
    names: set[str] = set()
    for snapshot in RECORDED.values():
        options = ExporterOptions(None, frozenset(), include_unused_slots=True)
        stat = parse_columns(snapshot.stat, wanted_columns(options))
        parts, _ = render_stats(stat, options)
        names.update(family_blocks("".join(parts).encode()))
    assert "haproxy_egress_route_denied_total" in names
    assert "haproxy_server_http_responses_total" in names
    assert "haproxy_backend_http_total_time_average_seconds" in names
    assert "haproxy_server_check_duration_seconds" in names
    assert len([n for n in names if n.startswith("haproxy_")]) >= 60


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=_tables(), openmetrics=st.booleans(), unused=st.booleans(), drop=st.booleans())
def test_any_table_renders_as_before(
    table: StatTable, openmetrics: bool, unused: bool, drop: bool
) -> None:
    options = ExporterOptions(
        frozenset({2, 17, 38, 39, 44}) if drop else None,
        frozenset({"down"}),
        include_unused_slots=unused,
    )
    parts, failures = render_stats(columns_of(table, options), options, openmetrics)
    old, old_failures = previous_render_stats(table, options, openmetrics)
    denied, denied_failures = previous_denied_family(table)
    new_blocks = family_blocks("".join(parts).encode())
    name = "haproxy_egress_route_denied" + ("" if openmetrics else "_total")
    denied_text = new_blocks.pop(name, None)
    assert new_blocks == family_blocks(old.encode())
    assert failures == old_failures + denied_failures
    if denied is None:
        assert denied_text is None
    else:  # as prometheus_client printed it
        assert denied_text == encoded([denied], openmetrics).removesuffix("# EOF\n")


_CELL = st.sampled_from(["", "0", "7", "12", "-3", "UP", "no check", "x", '"a,b"', '""'])


@st.composite
def _csv(draw: st.DrawFn) -> str:
    """CSV text as haproxy writes it, and worse: quoted cells, short and long rows."""
    width = draw(st.sampled_from([40, 84, 90]))
    lines = ["# pxname,svname," + ",".join(f"f{i}" for i in range(2, width))]
    for n in range(draw(st.integers(0, 12))):
        cells = [draw(st.sampled_from(["", "0", "9"])) for _ in range(width)]
        cells[0], cells[1] = f"px{n % 3}", draw(st.sampled_from(["FRONTEND", "BACKEND", "s1"]))
        cells[32] = draw(st.sampled_from(["0", "1", "2", "3", "x"]))
        for i in draw(st.lists(st.integers(2, width - 1), max_size=4)):
            if i != 32:
                cells[i] = draw(_CELL)
        cut = draw(st.sampled_from([width, width, width, 20, 33, 60]))
        lines.append(",".join(cells[:cut]))
        if draw(st.booleans()):
            lines.append("")
    return "\n".join(lines) + "\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_csv(), block=st.sampled_from([1, 2, 3, 5, 2048]))
def test_columns_are_the_cells_of_the_rows(text: str, block: int) -> None:
    wanted = wanted_columns(ExporterOptions(None, frozenset()))
    table = parse_stat(text)
    stat = parse_columns(text, wanted, block=block)
    assert stat.failures == table.failures
    assert stat == columns_of(table, ExporterOptions(None, frozenset()))


def test_info_and_stat_of_one_answer() -> None:
    text = (DATA / "exporter_show_info.txt").read_text() + SNAPSHOT.stat
    split = split_info_stat(text)
    assert split is not None
    assert split[0].fields == parse_info(text.partition("# pxname")[0]).fields
