"""Reading haproxy: one `show info;show stat` answer, split into fields and CSV rows."""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from prometheus_client.utils import floatToGoString

from haproxy_egress.errors import HaproxyError
from haproxy_egress.metrics.families import Conversion, StatFamily
from haproxy_egress.metrics.options import ExporterOptions

logger = logging.getLogger(__name__)

# The stats socket as the metrics package sees it: a command in, haproxy's answer out (the
# supervisor hands in a CLI client; tests hand in recorded answers). Raises HaproxyError.
Query = Callable[[str], str]


@dataclass(frozen=True)
class HaproxySnapshot:
    """One answer of the stats socket: `show info` fields and the raw `show stat` CSV."""

    info: Mapping[str, str] = field(default_factory=dict)
    stat: str = ""
    error: str = ""  # why haproxy could not be read; "" when it was

    @property
    def up(self) -> bool:
        """True when haproxy answered with a stats CSV (haproxy_up 1)."""
        return not self.error

    @property
    def haproxy_version(self) -> str:
        """The running haproxy's version from `show info`, or "unknown"."""
        return self.info.get("Version") or "unknown"


def parse_info(text: str) -> dict[str, str]:
    """`show info` lines ("Version: 2.6.12") into a mapping."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            info[key] = value
    return info


def read_snapshot(query: Query) -> HaproxySnapshot:
    """Ask haproxy for `show info;show stat` as one command; never raises.

    One command, so both answers come from the same worker even during a reload; `query`
    bounds the exchange in time, so a wedged socket costs at most its timeout.
    """
    try:
        text = query("show info;show stat")
    except HaproxyError as exc:
        logger.warning("cannot read haproxy stats: %s", exc)
        return HaproxySnapshot(error=str(exc))
    head, sep, tail = text.partition("# pxname")
    if not sep:
        logger.warning("unexpected answer from haproxy's stats socket: %r", text[:200])
        return HaproxySnapshot(error=f"unexpected answer: {text[:200]!r}")
    return HaproxySnapshot(info=parse_info(head), stat=sep + tail)


# --- parsing the CSV -------------------------------------------------------------------------

TYPE_FIELD = 32
STATUS_FIELD = 17
MIN_FIELDS = 33  # haproxy_exporter skips (and counts as a parse failure) shorter rows
_ROW_WIDTH = 84  # rows are split into (or padded to) this many cells; the last index used is 82
_INT = re.compile(r"[+-]?[0-9]+")
# A decimal number as Go's strconv.ParseFloat reads one (haproxy_exporter's parser). Python's
# float() alone would also take "٣", "1_000" and blanks.
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


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


def int_text(cell: str) -> str | None:
    """An integer cell as exposition text (the CSV's own digits), or None if not an integer."""
    if cell.isdigit() and cell.isascii():
        return cell
    if _INT.fullmatch(cell):
        return str(int(cell))
    return None


def count_text(cell: str) -> str | None:
    """A counter cell: a non-negative integer (OpenMetrics rejects a negative counter)."""
    text = int_text(cell)
    return None if text is None or text[0] == "-" else text


def millis_text(cell: str) -> str | None:
    """A milliseconds cell as seconds in exposition text, or None if not a number."""
    if not _FLOAT.fullmatch(cell):
        return None
    # The float formatting of prometheus_client's encoders (and Go's), e.g. 0.003, 1.5e-05.
    return str(floatToGoString(float(cell) / 1000))  # type: ignore[no-untyped-call]


def status_up(status: str) -> int:
    """1 for a serving status: UP, any "UP n/m", OPEN, DRAIN (any form), "no check"."""
    word = status.split(" ", 1)[0]
    return 1 if word in ("UP", "OPEN", "DRAIN") or status == "no check" else 0


def status_text(cell: str) -> str:
    """A status cell as exposition text."""
    return "1" if status_up(cell) else "0"


def converter(spec: StatFamily) -> Callable[[str], str | None]:
    """The function turning a cell of this family into exposition text (None: unusable)."""
    if spec.conversion is Conversion.MILLIS:
        return millis_text
    if spec.conversion is Conversion.STATUS:
        return status_text
    return count_text if spec.kind == "counter" else int_text


def server_rows(table: StatTable, options: ExporterOptions) -> list[list[str]]:
    """The server rows to export: excluded states and unused slots left out."""
    keep = options.keeps_server
    return [row for row in table.servers if keep(row[STATUS_FIELD])]
