"""The /metrics renderer as it was before the column-wise one: the oracle of the differential
tests, which hold the new path to the same families and the same samples, byte for byte.

It parses `show stat` row by row (haproxy/stat.py's `parse_stat`), prints each sample with its
own format string, and builds the per-route denials with prometheus_client. Slow at 10,000
routes (~2 s a scrape), simple to read: kept here only to compare against.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from haproxy_egress.haproxy.stat import STATUS_FIELD, StatTable, parse_stat
from haproxy_egress.metrics import small_families as small

# The label escaping and the HELP/TYPE lines did not change: the same functions print them.
from haproxy_egress.metrics.exposition import (
    _header,
    _label_value,
    encode,
    render_scrape,
    status_families,
)
from haproxy_egress.metrics.families import (
    BACKEND_FAMILIES,
    FRONTEND_FAMILIES,
    Conversion,
    StatFamily,
)
from haproxy_egress.metrics.options import ExporterOptions
from haproxy_egress.metrics.stats import HaproxySnapshot, converter, int_text
from haproxy_egress.metrics.status import RouterStatus


def _cells_out(out: list[str], spec: StatFamily, labels: Sequence[str], cells: list[str]) -> int:
    sample = spec.name
    if spec.conversion is Conversion.INT and "" not in cells:
        joined = "".join(cells)
        if joined.isdigit() and joined.isascii():
            out.extend([f"{sample}{lbl} {v}\n" for lbl, v in zip(labels, cells, strict=True)])
            return 0
    convert = converter(spec)
    failures = 0
    for lbl, cell in zip(labels, cells, strict=True):
        if not cell:
            continue
        text = convert(cell)
        if text is None:
            failures += 1
            continue
        out.append(f"{sample}{lbl} {text}\n")
    return failures


def _rows_out(
    out: list[str],
    specs: Iterable[StatFamily],
    rows: list[list[str]],
    open_labels: list[str],
    openmetrics: bool,
) -> int:
    if not rows:
        return 0
    failures = 0
    closed = [lbl + "}" for lbl in open_labels]
    for spec in specs:
        start = len(out)
        out.append(_header(spec, openmetrics))
        for index, code in spec.fields:
            labels = [f'{lbl},code="{code}"}}' for lbl in open_labels] if code else closed
            failures += _cells_out(out, spec, labels, [row[index] for row in rows])
        if len(out) == start + 1:
            out.pop()
    return failures


def previous_render_stats(
    table: StatTable, options: ExporterOptions, openmetrics: bool = False
) -> tuple[str, int]:
    """The frontend, backend and server families of a parsed CSV, and the cells that failed."""
    out: list[str] = []
    servers = [row for row in table.servers if options.keeps_server(row[STATUS_FIELD])]
    groups = (
        (
            FRONTEND_FAMILIES,
            table.frontends,
            [f'{{frontend="{_label_value(r[0])}"' for r in table.frontends],
        ),
        (
            BACKEND_FAMILIES,
            table.backends,
            [f'{{backend="{_label_value(r[0])}"' for r in table.backends],
        ),
        (
            options.server_families(),
            servers,
            [f'{{backend="{_label_value(r[0])}",server="{_label_value(r[1])}"' for r in servers],
        ),
    )
    failures = 0
    for specs, rows, labels in groups:
        failures += _rows_out(out, specs, rows, labels, openmetrics)
    return "".join(out), failures


def previous_denied_family(table: StatTable) -> tuple[Metric | None, int]:
    """Denied connections/sessions/requests per route, from the routes' frontend rows."""
    fam = CounterMetricFamily(small.DENIED_FAMILY, small.HELP_DENIED, labels=["route", "stage"])
    failures = 0
    for row in table.frontends:
        if row[0].startswith("_"):
            continue
        for stage, index in small.DENIED_STAGES:
            cell = row[index]
            if not cell:
                continue
            text = int_text(cell)
            if text is None:
                failures += 1
                continue
            fam.add_metric([row[0], stage], float(text))
    return (fam if fam.samples else None), failures


def previous_render_scrape(
    snapshot: HaproxySnapshot,
    status: RouterStatus | None,
    options: ExporterOptions,
    *,
    counters: small.ScrapeCounters,
    extra: Collector | None = None,
    openmetrics: bool = False,
) -> bytes:
    """The whole /metrics body for one snapshot, as the previous renderer printed it (the
    families after haproxy's, unchanged, come from the same code)."""
    fast = ""
    failures = 0
    rest: list[Metric] = []
    if snapshot.up:
        table = parse_stat(snapshot.stat)
        fast, failures = previous_render_stats(table, options, openmetrics)
        denied, denied_failures = previous_denied_family(table)
        failures += table.failures + denied_failures
        rest.extend(f for f in (small.version_family(snapshot), denied) if f is not None)
    rest.extend(status_families(snapshot, status, counters.record(failures), extra))
    return fast.encode() + encode(rest, openmetrics)


def encoded(families: list[Metric], openmetrics: bool) -> str:
    """Families as prometheus_client's encoder for the format prints them."""
    return encode(families, openmetrics).decode()


def family_blocks(body: bytes) -> dict[str, str]:
    """Each family's text (its HELP and TYPE lines and its samples) by family name."""
    out: dict[str, str] = {}
    name = ""
    for line in body.decode().splitlines(keepends=True):
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in out, f"family {name} appears twice"
            out[name] = ""
        out[name] = out.get(name, "") + line
    return out


def assert_renders_as_before(
    snapshot: HaproxySnapshot, options: ExporterOptions, openmetrics: bool
) -> None:
    """The body of `render_scrape` has the same families as the previous renderer's, each
    byte for byte; the per-row haproxy families in the same order. Only the per-route denials
    moved: they now follow the per-row families instead of haproxy_version_info."""
    status = None
    new = render_scrape(
        snapshot, status, options, counters=small.ScrapeCounters(), openmetrics=openmetrics
    )
    old = previous_render_scrape(
        snapshot, status, options, counters=small.ScrapeCounters(), openmetrics=openmetrics
    )
    new_blocks, old_blocks = family_blocks(new), family_blocks(old)
    assert set(new_blocks) == set(old_blocks)
    for name, text in old_blocks.items():
        assert new_blocks[name] == text, name
    per_row = ("haproxy_frontend_", "haproxy_backend_", "haproxy_server_")
    assert [n for n in new_blocks if n.startswith(per_row)] == [
        n for n in old_blocks if n.startswith(per_row)
    ]
    assert new.endswith(b"# EOF\n") == openmetrics
