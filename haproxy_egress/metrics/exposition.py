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

A scrape renders the CSV a block of rows at a time (`render_block`), each family's samples of
the block as one `Piece` of bytes, and `assemble` puts the pieces family by family, so a block
can be rendered while haproxy is still writing the next. For a gzipped answer a large piece
is kept deflated (`Deflated`), and one whose input cells did not change since the previous
gzipped scrape is taken as it was (`metrics/scrape.py` keeps them).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import compress

from prometheus_client import exposition as text_format
from prometheus_client.core import Metric
from prometheus_client.openmetrics import exposition as om_format
from prometheus_client.registry import Collector

from haproxy_egress.haproxy.stat import (
    BACKEND,
    FRONTEND,
    ROWS_PER_BLOCK,
    SERVER,
    STATUS_FIELD,
    StatColumns,
    add_lines,
    csv_lines,
    empty_columns,
)
from haproxy_egress.metrics.families import (
    BACKEND_FAMILIES,
    FRONTEND_FAMILIES,
    Conversion,
    StatFamily,
)
from haproxy_egress.metrics.options import ExporterOptions
from haproxy_egress.metrics.pieces import DEFLATED_ALONE, Deflated, Part, Piece, plain
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


# The output of one row type in one block: the cells of every column read, each column's
# joined into one string (what `render_block` compares to tell an unchanged column), and a
# piece per family (by position in the row type's families; DENIED_PIECE for the denials).
@dataclass(frozen=True)
class BlockPieces:
    """One row type's columns in one block of rows, and the families' pieces of them."""

    keys: Mapping[int, str]  # empty when the pieces are not for keeping
    pieces: Mapping[int, Part]


DENIED_PIECE = -1  # the key of the per-route denials among the frontends' pieces
# A separator no cell can hold (the CSV was cut into lines at it): joined cells compare
# equal only when every cell does.
_KEY_SEPARATOR = "\n"


def _piece(spec: StatFamily, columns: Mapping[int, list[str]], labels: _Labels) -> Piece:
    """One family's samples of a block's rows (b"" when none)."""
    out: list[str] = []
    failures = 0
    prefix = "\n" + spec.name
    for index, code in spec.fields:
        values, whole, failed = _values(spec, columns[index])
        failures += failed
        if whole or any(values):  # label sets are built only for columns with samples
            _append(out, prefix, labels.closed(code), values, whole)
    return Piece("".join(out).encode(), failures)


def _denied(names: list[str], columns: Mapping[int, list[str]]) -> Piece:
    """haproxy_egress_route_denied_total{route,stage} from the routes' frontend rows (names
    starting with "_" are the router's own proxies); its values print as prometheus_client
    prints a float."""
    routes = [not name.startswith("_") for name in names]
    labels = _escaped(list(compress(names, routes)))
    failures = 0
    # One route's stages side by side, route after route, as prometheus_client added them.
    width = len(DENIED_STAGES)
    merged_labels: list[str] = [""] * (width * len(labels))
    merged_values: list[str] = merged_labels.copy()
    for offset, (stage, index) in enumerate(DENIED_STAGES):
        cells = list(compress(columns[index], routes))
        texts = {cell: int_text(cell) for cell in set(cells)}
        failed = [cell for cell, text in texts.items() if cell and text is None]
        if failed:
            counts = Counter(cells)
            failures += sum(counts[cell] for cell in failed)
        floats = {cell: float_text(text) if text else "" for cell, text in texts.items()}
        merged_values[offset::width] = list(map(floats.__getitem__, cells))
        merged_labels[offset::width] = [f'{{route="{r}",stage="{stage}"}} ' for r in labels]
    out: list[str] = []
    if any(merged_values):
        whole = "" not in merged_values
        _append(out, "\n" + DENIED_FAMILY, merged_labels, merged_values, whole)
    return Piece("".join(out).encode(), failures)


_DENIED_SPEC = StatFamily(DENIED_FAMILY, "counter", HELP_DENIED, ())


def _inputs(row_type: str, options: ExporterOptions) -> dict[int, frozenset[int]]:
    """The columns each piece of a row type is made of, besides the label columns."""
    out = {
        n: frozenset(i for i, _ in spec.fields) for n, spec in enumerate(_specs(row_type, options))
    }
    if row_type == FRONTEND:
        out[DENIED_PIECE] = frozenset(i for _, i in DENIED_STAGES)
    return out


def render_block(
    stat: StatColumns,
    options: ExporterOptions,
    previous: Mapping[str, BlockPieces] | None = None,
    *,
    deflate: bool = False,
) -> dict[str, BlockPieces]:
    """The pieces of every family of one block of rows, by row type.

    `deflate`: pieces for a gzipped answer, to keep: a large one is deflated and its text
    dropped, and each column's cells are joined into a key. `previous`: what this function
    returned so for the rows at the same place in the previous scrape. A piece whose columns
    (and the row type's label columns: names, and the server status the exclusions read)
    hold the same cells as then is taken from it unchanged: the pieces are a pure function
    of those cells and `options`, so this keeps no state that could change what a scrape
    shows.
    """
    out: dict[str, BlockPieces] = {}
    for row_type, names in _ROW_TYPES:
        if not stat.rows(row_type):
            continue
        cells = stat.cells[row_type]
        keys = {i: _KEY_SEPARATOR.join(column) for i, column in cells.items()} if deflate else {}
        label_columns = set(range(len(names)))
        if row_type == SERVER:
            label_columns.add(STATUS_FIELD)
        old = previous.get(row_type) if previous is not None and deflate else None
        changed: set[int] | None = None
        if old is not None:
            changed = {i for i, key in keys.items() if old.keys.get(i) != key}
            if changed & label_columns:
                changed = None
        pieces: dict[int, Part] = {}
        fresh = _Fresh(row_type, names, cells, options)
        specs = _specs(row_type, options)
        for n, inputs in _inputs(row_type, options).items():
            if old is not None and changed is not None and not inputs & changed and n in old.pieces:
                pieces[n] = old.pieces[n]
                continue
            if n == DENIED_PIECE:
                piece = _denied(cells[0], cells)
            else:
                piece = _piece(specs[n], fresh.columns(), fresh.labels())
            large = deflate and len(piece.text) >= DEFLATED_ALONE
            pieces[n] = Deflated(piece) if large else piece
        out[row_type] = BlockPieces(keys, pieces)
    return out


class _Fresh:
    """The kept rows' columns and label sets of one row type in one block, made on first use
    (a block whose pieces all come from the previous scrape needs neither)."""

    def __init__(
        self,
        row_type: str,
        names: tuple[str, ...],
        cells: Mapping[int, list[str]],
        options: ExporterOptions,
    ) -> None:
        self._row_type = row_type
        self._names = names
        self._cells = cells
        self._options = options
        self._columns: Mapping[int, list[str]] | None = None
        self._labels: _Labels | None = None

    def columns(self) -> Mapping[int, list[str]]:
        if self._columns is None:
            columns = self._cells
            if self._row_type == SERVER:
                keep = _kept_servers(self._options, columns[STATUS_FIELD])
                if keep is not None:
                    columns = {i: list(compress(c, keep)) for i, c in columns.items()}
            self._columns = columns
        return self._columns

    def labels(self) -> _Labels:
        if self._labels is None:
            columns = self.columns()
            template = "{{" + ",".join(f'{name}="{{}}"' for name in self._names)
            escaped = (_escaped(columns[i]) for i in range(len(self._names)))
            self._labels = _Labels(list(map(template.format, *escaped)))
        return self._labels


@functools.cache
def _header_piece(spec: StatFamily, openmetrics: bool) -> Piece:
    """A family's HELP and TYPE lines, after the newline that ends the line before them."""
    return Piece(("\n" + _header(spec, openmetrics)[:-1]).encode())


def _order(options: ExporterOptions) -> list[tuple[str, int, StatFamily]]:
    """Every per-row family as (row type, piece key, family), in the order they print."""
    out = [
        (row_type, n, spec)
        for row_type, _ in _ROW_TYPES
        for n, spec in enumerate(_specs(row_type, options))
    ]
    out.append((FRONTEND, DENIED_PIECE, _DENIED_SPEC))
    return out


def assemble(
    blocks: Iterable[Mapping[str, BlockPieces]], options: ExporterOptions, openmetrics: bool
) -> tuple[list[Part], int]:
    """The per-row families of blocks of rows (`render_block`), family by family, as pieces
    to send one after the other, and the cells that failed to convert."""
    blocks = list(blocks)
    out: list[Part] = []
    failures = 0
    for row_type, n, spec in _order(options):
        pieces = [block[row_type].pieces[n] for block in blocks if row_type in block]
        failures += sum(piece.failures for piece in pieces)
        samples = [piece for piece in pieces if isinstance(piece, Deflated) or piece.text]
        if samples:  # no samples: no family (haproxy_exporter prints none either)
            out.append(_header_piece(spec, openmetrics))
            out.extend(samples)
    if out:
        # Every piece starts with the newline that ends the line before it.
        first = out[0]
        assert isinstance(first, Piece)  # a HELP line
        out[0] = Piece(first.text[1:])
        out.append(_NEWLINE)
    return out, failures


_NEWLINE = Piece(b"\n")


def render_stats(
    stat: StatColumns, options: ExporterOptions, openmetrics: bool = False
) -> tuple[list[str], int]:
    """The frontend, backend and server families and the per-route denials of the CSV's
    columns (`parse_columns(text, wanted_columns(options))`), as pieces of text, and the
    cells that failed (`render_block` and `assemble` of one block)."""
    pieces, failures = assemble([render_block(stat, options)], options, openmetrics)
    return [text.decode() for text in plain(pieces)], failures


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
    """The whole /metrics body for one snapshot (its CSV rendered in blocks, as a streamed
    scrape renders it, with nothing kept from another scrape)."""
    rows = RenderedRows(snapshot)
    if snapshot.up:
        wanted = wanted_columns(options)
        lines = csv_lines(snapshot.stat)
        for start in range(0, len(lines), ROWS_PER_BLOCK):
            stat = empty_columns(wanted)
            add_lines(stat, lines[start : start + ROWS_PER_BLOCK])
            rows.failures += stat.failures
            rows.blocks.append(render_block(stat, options))
    pieces = scrape_pieces(
        rows, options, openmetrics, status=status, counters=counters, extra=extra
    )
    return b"".join(plain(pieces))


@dataclass
class RenderedRows:
    """One answer of the stats socket and its rows rendered, block by block."""

    snapshot: HaproxySnapshot
    blocks: list[Mapping[str, BlockPieces]] = field(default_factory=list)
    failures: int = 0  # rows too short to read


def scrape_pieces(
    rows: RenderedRows,
    options: ExporterOptions,
    openmetrics: bool,
    *,
    status: RouterStatus | None,
    counters: ScrapeCounters,
    extra: Collector | None,
) -> list[Part]:
    """The whole /metrics body of one answer, in pieces: the per-row families, then the
    rest. Every family appears once; haproxy's per-row families first (OpenMetrics ends in
    # EOF)."""
    snapshot = rows.snapshot
    fast: list[Part] = []
    small: list[Metric] = []
    failures = rows.failures
    if snapshot.up:
        fast, failed = assemble(rows.blocks, options, openmetrics)
        failures += failed
        small.extend(f for f in (version_family(snapshot),) if f is not None)
    small.extend(status_families(snapshot, status, counters.record(failures), extra))
    fast.append(Piece(encode(small, openmetrics)))
    return fast


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
