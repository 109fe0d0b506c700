"""`show stat`: haproxy's CSV, split by row type; and the `show info;show stat` answer split.

The metrics' hot path (every scrape parses every row), so it splits plain strings and leaves
the cells as text: which column means what is metrics/families.py's table. The SSL statistics
module's columns come after the standard ones, at positions that differ between haproxy
versions, so those are found by name in the header (`backend_counters`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field

from haproxy_egress.haproxy.show import Info, parse_info

TYPE_FIELD = 32
STATUS_FIELD = 17
MIN_FIELDS = 33  # haproxy_exporter skips (and counts as a parse failure) shorter rows
_ROW_WIDTH = 84  # rows are split into (or padded to) this many cells; the last index used is 82
HEADER = "# pxname"  # the CSV's header line starts so
SSL_FAILED_HANDSHAKE = "ssl_failed_handshake"  # the SSL statistics module's failed handshakes


@dataclass
class StatTable:
    """`show stat` split by row type; rows padded so any used index is valid."""

    frontends: list[list[str]] = field(default_factory=list)
    backends: list[list[str]] = field(default_factory=list)
    servers: list[list[str]] = field(default_factory=list)
    failures: int = 0  # rows too short; cells are counted by whoever converts them


def parse_stat(text: str) -> StatTable:
    """Parse the CSV: plain split, or the csv module for the rare row with quotes."""
    table = StatTable()
    by_type = {"0": table.frontends, "1": table.backends, "2": table.servers}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        # Splitting only as far as the last field used saves a third of the string objects.
        row = next(csv.reader([line])) if '"' in line else line.split(",", _ROW_WIDTH - 1)
        if len(row) < MIN_FIELDS:
            table.failures += 1
            continue
        if len(row) < _ROW_WIDTH:
            row.extend([""] * (_ROW_WIDTH - len(row)))
        rows = by_type.get(row[TYPE_FIELD])
        if rows is not None:  # listeners (type 3) are ignored, as by haproxy_exporter
            rows.append(row)
    return table


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
