"""`show stat`: haproxy's CSV, split by row type; and the `show info;show stat` answer split.

The metrics' hot path (every scrape parses every row), so it splits plain strings and leaves
the cells as text: which column means what is metrics/families.py's table. The SSL statistics
module's columns come after the standard ones, at positions that differ between haproxy
versions, so those are found by name in the header (`backend_counters`). A scrape reads
the answer as it arrives (`AnswerLines`: its rows in blocks) and takes each block's columns
with `add_lines` (`parse_columns` does the same for a whole CSV): at 10,000 routes the CSV
has 40,000 rows of 129 (2.6) to 206 (3.0) cells, and taking whole columns with C-level
slices instead of a list per row makes the parse ~3x cheaper. `parse_stat` (a list per row)
is for readers of a few rows.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import chain, compress, repeat

from haproxy_egress.haproxy.show import Info, parse_info

TYPE_FIELD = 32
STATUS_FIELD = 17
MIN_FIELDS = 33  # haproxy_exporter skips (and counts as a parse failure) shorter rows
_ROW_WIDTH = 84  # rows are split into (or padded to) this many cells; the last index used is 82
HEADER = "# pxname"  # the CSV's header line starts so
SSL_FAILED_HANDSHAKE = "ssl_failed_handshake"  # the SSL statistics module's failed handshakes
FRONTEND, BACKEND, SERVER = "0", "1", "2"  # the values of the type column
# Lines split at once by `parse_columns`: bounds the list of cells it holds (~200 per row).
ROWS_PER_BLOCK = 2048


@dataclass
class StatTable:
    """`show stat` split by row type; rows padded so any used index is valid."""

    frontends: list[list[str]] = field(default_factory=list)
    backends: list[list[str]] = field(default_factory=list)
    servers: list[list[str]] = field(default_factory=list)
    failures: int = 0  # rows too short; cells are counted by whoever converts them


def _split_row(line: str) -> list[str] | None:
    """One CSV row padded to _ROW_WIDTH cells; None when it is too short to be a row."""
    # Splitting only as far as the last field used saves a third of the string objects.
    row = next(csv.reader([line])) if '"' in line else line.split(",", _ROW_WIDTH - 1)
    if len(row) < MIN_FIELDS:
        return None
    if len(row) < _ROW_WIDTH:
        row.extend([""] * (_ROW_WIDTH - len(row)))
    return row


def parse_stat(text: str) -> StatTable:
    """Parse the CSV: plain split, or the csv module for the rare row with quotes."""
    table = StatTable()
    by_type = {FRONTEND: table.frontends, BACKEND: table.backends, SERVER: table.servers}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        row = _split_row(line)
        if row is None:
            table.failures += 1
            continue
        rows = by_type.get(row[TYPE_FIELD])
        if rows is not None:  # listeners (type 3) are ignored, as by haproxy_exporter
            rows.append(row)
    return table


@dataclass
class StatColumns:
    """`show stat` column by column: for each row type asked for, the cells of each CSV index
    asked for, rows in CSV order ("" where a row has no such cell)."""

    cells: dict[str, dict[int, list[str]]]
    failures: int = 0  # rows too short; cells are counted by whoever converts them

    def column(self, row_type: str, index: int) -> list[str]:
        """The cells at `index` of the rows of `row_type` (one that was asked for)."""
        return self.cells[row_type][index]

    def rows(self, row_type: str) -> int:
        """How many rows of `row_type` the CSV has."""
        columns = self.cells.get(row_type)
        return len(next(iter(columns.values()))) if columns else 0


def parse_columns(
    text: str, wanted: Mapping[str, Iterable[int]], block: int = ROWS_PER_BLOCK
) -> StatColumns:
    """The columns `wanted` (row type → CSV indexes, each below 83) of the CSV.

    The same cells as `parse_stat` gives, for the same rows. Rows come in blocks of `block`
    lines (`parse_lines`).
    """
    table = empty_columns(wanted)
    lines = csv_lines(text)
    for start in range(0, len(lines), block):
        add_lines(table, lines[start : start + block])
    return table


def csv_lines(text: str) -> list[str]:
    """The rows of CSV text: its lines but the empty ones and the comments (the header)."""
    return [line for line in text.splitlines() if line and line[0] != "#"]


def empty_columns(wanted: Mapping[str, Iterable[int]]) -> StatColumns:
    """A table with the columns `wanted` and no rows yet."""
    return StatColumns({t: {i: [] for i in sorted(set(idx))} for t, idx in wanted.items()})


def add_lines(table: StatColumns, some: list[str]) -> None:
    """Add the cells of CSV rows (`csv_lines`) to `table`, in order.

    Rows that all reach the last column used, none quoted, are laid end to end and each
    column taken as a slice of them; any others go row by row as `parse_stat` does.
    """
    if not some:
        return
    # Each row split only as far as the last column used: the 40-120 columns after it
    # (more on 3.0 than on 2.6) stay one string.
    cells = list(chain.from_iterable(map(str.split, some, repeat(","), repeat(_ROW_WIDTH - 1))))
    if len(cells) != _ROW_WIDTH * len(some) or '"' in "".join(some):
        _add_rows(table, some)  # a row too short for every column, or quoted cells
        return
    types = cells[TYPE_FIELD::_ROW_WIDTH]
    for row_type, columns in table.cells.items():
        if row_type not in types:
            continue
        mask = list(map(row_type.__eq__, types))
        for index, column in columns.items():
            column.extend(compress(cells[index::_ROW_WIDTH], mask))


class AnswerLines:
    """The answer of `show info;show stat` read as it arrives: the `show info` text, then
    the CSV's rows (`csv_lines`) in blocks of a fixed number of lines.

    Fed the answer's text in pieces cut anywhere; gives the same rows, in the same blocks,
    as `csv_lines` of the whole CSV cut every `block` rows.
    """

    def __init__(self, block: int = ROWS_PER_BLOCK) -> None:
        self._block = block
        self._head: list[str] = []  # the text before the CSV header, while looking for it
        self.info: Info | None = None  # set once the CSV header has arrived
        self._tail = ""  # an incomplete last line
        self._rows: list[str] = []

    def feed(self, text: str) -> list[list[str]]:
        """Take the next piece of the answer; return the blocks it completes."""
        if self.info is None:
            self._head.append(text)
            head = "".join(self._head)
            before, sep, after = head.partition(HEADER)
            if not sep:
                self._head = [head]
                return []
            self.info = parse_info(before)
            self._head = []
            text = sep + after
        text = self._tail + text
        cut = text.rfind("\n") + 1
        self._tail = text[cut:]
        self._rows += csv_lines(text[:cut])
        full = len(self._rows) - len(self._rows) % self._block
        out = [self._rows[i : i + self._block] for i in range(0, full, self._block)]
        del self._rows[:full]
        return out

    def end(self) -> list[list[str]]:
        """The answer is complete: the blocks left (the last one may be short)."""
        rows = self._rows + csv_lines(self._tail)
        self._rows, self._tail = [], ""
        return [rows[i : i + self._block] for i in range(0, len(rows), self._block)]

    def head(self) -> str:
        """The text read before any CSV header (for a message when none came)."""
        return "".join(self._head)


def _add_rows(table: StatColumns, lines: list[str]) -> None:
    """Rows the block split cannot take (quoted cells, rows of unequal length)."""
    by_type: dict[str, list[list[str]]] = {t: [] for t in table.cells}
    for line in lines:
        row = _split_row(line)
        if row is None:
            table.failures += 1
            continue
        rows = by_type.get(row[TYPE_FIELD])
        if rows is not None:
            rows.append(row)
    for row_type, columns in table.cells.items():
        for index, column in columns.items():
            column.extend(row[index] for row in by_type[row_type])


def split_info_stat(text: str) -> tuple[Info, str] | None:
    """The answer of `show info;show stat` as its Info and its raw CSV (from the header on);
    None when the answer holds no CSV."""
    head, sep, tail = text.partition(HEADER)
    if not sep:
        return None
    return parse_info(head), sep + tail


def backend_counters(text: str, column: str) -> dict[str, int] | None:
    """One counter column of the backend rows, found by name in the CSV header: backend →
    value (a backend whose cell is empty is left out); None when haproxy has no such column."""
    index = -1
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("# "):
            header = line[2:].split(",")
            index = header.index(column) if column in header else -1
            continue
        name, _, rest = line.partition(",")
        if index < 0 or not rest.startswith("BACKEND,"):
            continue
        cells = line.split(",", index + 1)
        if len(cells) > index and cells[index].isdigit():
            out[name] = int(cells[index])
    return out if index >= 0 else None
