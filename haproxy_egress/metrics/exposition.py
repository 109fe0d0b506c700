"""The one exposition path of /metrics: per-row haproxy families printed from the CSV strings.

At 1,000 servers a scrape has ~32k samples. prometheus_client's encoder spends ~4 µs a sample
turning each value into a float and back and sorting every label dict; a scrape would hold
the interpreter for ~150 ms. Here each row's label string is built once and the CSV's own
digit strings are reused, about ten times faster. The tables in `families.py` are the one
definition of these families; tests parse this output with prometheus_client's text and
OpenMetrics parsers and check it against an independent table of haproxy_exporter's metrics
and against haproxy_exporter itself. The small families (haproxy_up, version, policy, the
router's own, from `collector.py`) go through prometheus_client's encoders after them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import exposition as text_format
from prometheus_client.core import Metric
from prometheus_client.openmetrics import exposition as om_format
from prometheus_client.registry import Collector

from haproxy_egress.haproxy.stat import STATUS_FIELD, StatTable, parse_stat
from haproxy_egress.metrics.collector import (
    ScrapeCounters,
    policy_family,
    router_families,
    scrape_families,
    version_family,
)
from haproxy_egress.metrics.families import (
    BACKEND_FAMILIES,
    FRONTEND_FAMILIES,
    Conversion,
    StatFamily,
)
from haproxy_egress.metrics.options import ExporterOptions
from haproxy_egress.metrics.stats import HaproxySnapshot, converter
from haproxy_egress.metrics.status import RouterStatus
from haproxy_egress.metrics.tls import handshake_family, tls_families

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def _label_value(value: str) -> str:
    """Escape a label value for both text formats (backslash, double quote, newline)."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _header(spec: StatFamily, openmetrics: bool) -> str:
    """The HELP and TYPE lines, as prometheus_client writes them for this format."""
    name = spec.name
    if openmetrics:
        if spec.kind == "counter":
            name = name[: -len("_total")]  # OpenMetrics names the family without the suffix
        help_ = spec.help.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    else:
        help_ = spec.help.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {name} {help_}\n# TYPE {name} {spec.kind}\n"


def _samples(out: list[str], spec: StatFamily, labels: Sequence[str], cells: list[str]) -> int:
    """Append one field's sample lines; return how many cells failed to convert."""
    sample = spec.name
    if spec.conversion is Conversion.INT and "" not in cells:
        joined = "".join(cells)
        if joined.isdigit() and joined.isascii():
            # The common case: every cell is a plain non-negative integer, used as is.
            out.extend([f"{sample}{lbl} {v}\n" for lbl, v in zip(labels, cells, strict=True)])
            return 0
    convert = converter(spec)
    failures = 0
    memo: dict[str, str | None] = {}  # per scrape only: values repeat ("0", "UP")
    for lbl, cell in zip(labels, cells, strict=True):
        if not cell:
            continue
        text = memo.get(cell, "")
        if text == "":
            text = memo[cell] = convert(cell)
        if text is None:
            failures += 1
            continue
        out.append(f"{sample}{lbl} {text}\n")
    return failures


def _group(
    out: list[str],
    specs: Iterable[StatFamily],
    rows: list[list[str]],
    open_labels: list[str],
    openmetrics: bool,
) -> int:
    """Render the families of one row type; `open_labels` lack their closing brace."""
    if not rows:
        return 0
    failures = 0
    closed = [lbl + "}" for lbl in open_labels]
    for spec in specs:
        start = len(out)
        out.append(_header(spec, openmetrics))
        for index, code in spec.fields:
            labels = [f'{lbl},code="{code}"}}' for lbl in open_labels] if code else closed
            cells = [row[index] for row in rows]
            failures += _samples(out, spec, labels, cells)
        if len(out) == start + 1:
            out.pop()  # no samples: no family (haproxy_exporter prints none either)
    return failures


def render_stats(
    table: StatTable, options: ExporterOptions, openmetrics: bool = False
) -> tuple[str, int]:
    """The frontend, backend and server families of a parsed CSV, and the cells that failed."""
    out: list[str] = []
    frontends = table.frontends
    backends = table.backends
    keep = options.keeps_server
    servers = [row for row in table.servers if keep(row[STATUS_FIELD])]
    failures = _group(
        out,
        FRONTEND_FAMILIES,
        frontends,
        [f'{{frontend="{_label_value(r[0])}"' for r in frontends],
        openmetrics,
    )
    failures += _group(
        out,
        BACKEND_FAMILIES,
        backends,
        [f'{{backend="{_label_value(r[0])}"' for r in backends],
        openmetrics,
    )
    failures += _group(
        out,
        options.server_families(),
        servers,
        [f'{{backend="{_label_value(r[0])}",server="{_label_value(r[1])}"' for r in servers],
        openmetrics,
    )
    return "".join(out), failures


class _Families(Collector):
    """Already built families, for prometheus_client's encoders."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def render_scrape(
    snapshot: HaproxySnapshot,
    status: RouterStatus | None,
    options: ExporterOptions,
    *,
    counters: ScrapeCounters,
    extra: Collector | None = None,
    openmetrics: bool = False,
) -> bytes:
    """The whole /metrics body for one snapshot: fast per-row families, then the rest.

    Every family appears once; haproxy's per-row families first (OpenMetrics ends in # EOF).
    """
    fast = ""
    failures = 0
    small: list[Metric] = []
    if snapshot.up:
        table = parse_stat(snapshot.stat)
        fast, failures = render_stats(table, options, openmetrics)
        denied, denied_failures = policy_family(table)
        failures += table.failures + denied_failures
        small.extend(f for f in (version_family(snapshot), denied) if f is not None)
    small.extend(scrape_families(snapshot.up, counters.record(failures)))
    small.extend(router_families(status, snapshot.haproxy_version))
    if status is not None and (status.tls or status.tls_rejected):
        small.extend(tls_families(status.tls, status.tls_rejected))
        handshakes = handshake_family(snapshot.stat, (m.route for m in status.tls))
        if handshakes is not None:
            small.append(handshakes)
    if extra is not None:
        small.extend(extra.collect())
    if openmetrics:
        # OpenMetrics ends with "# EOF", so the fast part goes first.
        tail = om_format.generate_latest(_Families(small))  # type: ignore[no-untyped-call]
        return fast.encode() + bytes(tail)
    return fast.encode() + text_format.generate_latest(_Families(small))
