"""The one exposition path of /metrics: per-row haproxy families printed from the CSV strings.

At 10,000 routes a scrape has ~900k samples (40,000 rows). prometheus_client's encoder spends
~4 µs a sample turning each value into a float and back and sorting every label dict: ~4 s.
Here the CSV is taken column by column (haproxy/stat.py `parse_columns`), each row's label
string is built once, the CSV's own digit strings are reused, and each column's samples are
laid out as (name, labels, value) triples by list slice assignment, then joined once: no
Python-level work per sample in the common case (a column of plain integers). The tables in
`families.py` are the one definition of these families; tests parse this output with
prometheus_client's text and OpenMetrics parsers, check it against an independent table of
haproxy_exporter's metrics and against haproxy_exporter itself, and hold it byte for byte to
the previous, row-by-row renderer. The per-route denials (from the same frontend rows) are
printed here too; the small families (haproxy_up, version, policy, the router's own, from
`small_families.py`) go through prometheus_client's encoders after them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import compress

from prometheus_client import exposition as text_format
from prometheus_client.core import Metric
from prometheus_client.openmetrics import exposition as om_format
from prometheus_client.registry import Collector

from haproxy_egress.haproxy.stat import (
    BACKEND,
    FRONTEND,
    SERVER,
    STATUS_FIELD,
    StatColumns,
    parse_columns,
)
from haproxy_egress.metrics.families import (
    BACKEND_FAMILIES,
    FRONTEND_FAMILIES,
    Conversion,
    StatFamily,
)
from haproxy_egress.metrics.options import ExporterOptions
from haproxy_egress.metrics.small_families import (
    DENIED_FAMILY,
    DENIED_STAGES,
    HELP_DENIED,
    ScrapeCounters,
    router_families,
    scrape_families,
    version_family,
)
from haproxy_egress.metrics.stats import HaproxySnapshot, converter, float_text, int_text
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


# The families of each row type, and the name column(s) that label them.
_ROW_TYPES = (
    (FRONTEND, ("frontend",)),
    (BACKEND, ("backend",)),
    (SERVER, ("backend", "server")),
)


def _specs(row_type: str, options: ExporterOptions) -> tuple[StatFamily, ...]:
    if row_type == FRONTEND:
        return FRONTEND_FAMILIES
    return BACKEND_FAMILIES if row_type == BACKEND else options.server_families()


def wanted_columns(options: ExporterOptions) -> dict[str, set[int]]:
    """The CSV columns a scrape reads, by row type: names, the families' fields, the server
    status (for the exclusions) and the frontends' denial counters."""
    out: dict[str, set[int]] = {}
    for row_type, labels in _ROW_TYPES:
        out[row_type] = {i for spec in _specs(row_type, options) for i, _ in spec.fields}
        out[row_type].update(range(len(labels)))
    out[SERVER].add(STATUS_FIELD)
    out[FRONTEND].update(i for _, i in DENIED_STAGES)
    return out


def _escaped(names: list[str]) -> list[str]:
    """Label values for a name column (names that need escaping are rare: check them once)."""
    joined = "".join(names)
    if "\\" in joined or '"' in joined or "\n" in joined:
        return [_label_value(name) for name in names]
    return names


def _values(spec: StatFamily, cells: list[str]) -> tuple[list[str], bool, int]:
    """One column as exposition values ("" where a cell gives no sample), whether every cell
    gives one, and how many cells failed to convert."""
    if spec.conversion is Conversion.INT:
        # The common case: every cell a plain non-negative integer, used as is.
        complete = "" not in cells
        joined = "".join(cells if complete else compress(cells, cells))
        if not joined or (joined.isdigit() and joined.isascii()):
            return cells, complete and bool(joined), 0
    convert = converter(spec)
    # Values repeat ("0", "UP"): each distinct cell is converted once.
    memo = {cell: convert(cell) or "" for cell in set(cells)}
    memo[""] = ""
    values = list(map(memo.__getitem__, cells))
    failed = [cell for cell, value in memo.items() if cell and not value]
    failures = 0
    if failed:
        counts = Counter(cells)
        failures = sum(counts[cell] for cell in failed)
    return values, "" not in values, failures


def _append(out: list[str], prefix: str, labels: list[str], values: list[str], whole: bool) -> None:
    """Append one sample per value, as `prefix`, label, value triples; `whole`: no value is
    "" (else the empty ones and their labels are left out)."""
    if not whole:
        labels = list(compress(labels, values))
        values = list(compress(values, values))
    if not values:
        return
    base = len(out)
    # The triples are laid down by slice assignment: no Python-level work per sample.
    out += [prefix] * (3 * len(values))
    out[base + 1 :: 3] = labels
    out[base + 2 :: 3] = values


class _Labels:
    """The label sets of one row type's rows, each ending in "} " (with a code label or not)."""

    def __init__(self, opened: list[str]) -> None:
        self._opened = opened
        self._by_code: dict[str, list[str]] = {}

    def closed(self, code: str) -> list[str]:
        labels = self._by_code.get(code)
        if labels is None:
            extra = f',code="{code}"' if code else ""
            labels = self._by_code[code] = [f"{lbl}{extra}}} " for lbl in self._opened]
        return labels


def _group(
    out: list[str],
    specs: Iterable[StatFamily],
    columns: Mapping[int, list[str]],
    labels: _Labels,
    openmetrics: bool,
) -> int:
    """Render the families of one row type; return how many cells failed to convert."""
    failures = 0
    for spec in specs:
        start = len(out)
        out.append("\n" + _header(spec, openmetrics)[:-1])
        prefix = "\n" + spec.name
        for index, code in spec.fields:
            values, whole, failed = _values(spec, columns[index])
            failures += failed
            if whole or any(values):  # label sets are built only for columns with samples
                _append(out, prefix, labels.closed(code), values, whole)
        if len(out) == start + 1:
            out.pop()  # no samples: no family (haproxy_exporter prints none either)
    return failures


def _denied(out: list[str], stat: StatColumns, openmetrics: bool) -> int:
    """haproxy_egress_route_denied_total{route,stage} from the routes' frontend rows (names
    starting with "_" are the router's own proxies); its values print as prometheus_client
    prints a float."""
    names = stat.column(FRONTEND, 0)
    routes = [not name.startswith("_") for name in names]
    labels = _escaped(list(compress(names, routes)))
    failures = 0
    # One route's stages side by side, route after route, as prometheus_client added them.
    width = len(DENIED_STAGES)
    merged_labels: list[str] = [""] * (width * len(labels))
    merged_values: list[str] = merged_labels.copy()
    for offset, (stage, index) in enumerate(DENIED_STAGES):
        cells = list(compress(stat.column(FRONTEND, index), routes))
        texts = {cell: int_text(cell) for cell in set(cells)}
        failed = [cell for cell, text in texts.items() if cell and text is None]
        if failed:
            counts = Counter(cells)
            failures += sum(counts[cell] for cell in failed)
        floats = {cell: float_text(text) if text else "" for cell, text in texts.items()}
        merged_values[offset::width] = list(map(floats.__getitem__, cells))
        merged_labels[offset::width] = [f'{{route="{r}",stage="{stage}"}} ' for r in labels]
    if any(merged_values):
        spec = StatFamily(DENIED_FAMILY, "counter", HELP_DENIED, ())
        out.append("\n" + _header(spec, openmetrics)[:-1])
        whole = "" not in merged_values
        _append(out, "\n" + DENIED_FAMILY, merged_labels, merged_values, whole)
    return failures


def render_stats(
    stat: StatColumns, options: ExporterOptions, openmetrics: bool = False
) -> tuple[list[str], int]:
    """The frontend, backend and server families and the per-route denials of the CSV's
    columns (`parse_columns(text, wanted_columns(options))`), as pieces of text to join (the
    body is joined once, with the small families), and the cells that failed."""
    out: list[str] = []
    failures = 0
    for row_type, names in _ROW_TYPES:
        if not stat.rows(row_type):
            continue
        columns = stat.cells[row_type]
        if row_type == SERVER:
            keep = _kept_servers(options, columns[STATUS_FIELD])
            if keep is not None:
                columns = {i: list(compress(c, keep)) for i, c in columns.items()}
        template = "{{" + ",".join(f'{name}="{{}}"' for name in names)
        opened = list(map(template.format, *(_escaped(columns[i]) for i in range(len(names)))))
        failures += _group(out, _specs(row_type, options), columns, _Labels(opened), openmetrics)
    if stat.rows(FRONTEND):
        failures += _denied(out, stat, openmetrics)
    if out:
        out[0] = out[0][1:]  # every piece starts with the newline that ends the line before it
        out.append("\n")
    return out, failures


def _kept_servers(options: ExporterOptions, statuses: list[str]) -> list[bool] | None:
    """Which server rows the exclusions keep; None for all of them."""
    verdicts = {status: options.keeps_server(status) for status in set(statuses)}
    if all(verdicts.values()):
        return None
    return list(map(verdicts.__getitem__, statuses))


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
    fast: list[str] = []
    failures = 0
    small: list[Metric] = []
    if snapshot.up:
        stat = parse_columns(snapshot.stat, wanted_columns(options))
        fast, failures = render_stats(stat, options, openmetrics)
        failures += stat.failures
        del stat  # 1M cells at 10,000 routes: gone before the body is joined
        small.extend(f for f in (version_family(snapshot),) if f is not None)
    small.extend(status_families(snapshot, status, counters.record(failures), extra))
    # OpenMetrics ends with "# EOF", so the fast part goes first; joined once, encoded once.
    fast.append(encode(small, openmetrics).decode())
    return "".join(fast).encode()


def status_families(
    snapshot: HaproxySnapshot,
    status: RouterStatus | None,
    totals: tuple[int, int],
    extra: Collector | None,
) -> list[Metric]:
    """The families after haproxy's: haproxy_up and the scrape counters (`totals`), the
    router's own, its TLS material, and `extra`'s."""
    small = scrape_families(snapshot.up, totals)
    small.extend(router_families(status, snapshot.haproxy_version))
    if status is not None and (status.tls or status.tls_rejected):
        small.extend(tls_families(status.tls, status.tls_rejected))
        handshakes = handshake_family(snapshot.stat, (m.route for m in status.tls))
        if handshakes is not None:
            small.append(handshakes)
    if extra is not None:
        small.extend(extra.collect())
    return small


def encode(families: list[Metric], openmetrics: bool) -> bytes:
    """Families through prometheus_client's encoder for the format."""
    if openmetrics:
        return bytes(om_format.generate_latest(_Families(families)))  # type: ignore[no-untyped-call]
    return text_format.generate_latest(_Families(families))
