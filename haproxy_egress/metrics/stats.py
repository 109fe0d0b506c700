"""Reading haproxy for a scrape: one `show info;show stat` answer (parsed by
haproxy/stat.py), and the cell conversions into exposition text."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from prometheus_client.utils import floatToGoString

from haproxy_egress.errors import HaproxyError
from haproxy_egress.haproxy.stat import split_info_stat
from haproxy_egress.metrics.families import Conversion, StatFamily

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


def scrape_snapshot(query: Query) -> HaproxySnapshot:
    """Ask haproxy for `show info;show stat` as one command; never raises.

    One command, so both answers come from the same worker even during a reload; `query`
    bounds the exchange in time, so a wedged socket costs at most its timeout.
    """
    try:
        text = query("show info;show stat")
    except HaproxyError as exc:
        logger.warning("cannot read haproxy stats: %s", exc)
        return HaproxySnapshot(error=str(exc))
    split = split_info_stat(text)
    if split is None:
        logger.warning("unexpected answer from haproxy's stats socket: %r", text[:200])
        return HaproxySnapshot(error=f"unexpected answer: {text[:200]!r}")
    info, stat = split
    return HaproxySnapshot(info=info.fields, stat=stat)


# --- parsing the CSV -------------------------------------------------------------------------

_INT = re.compile(r"[+-]?[0-9]+")
# A decimal number as Go's strconv.ParseFloat reads one (haproxy_exporter's parser). Python's
# float() alone would also take "٣", "1_000" and blanks.
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


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


def float_text(text: str) -> str:
    """A number as prometheus_client's encoders print a sample value (12 -> "12.0")."""
    return str(floatToGoString(float(text)))  # type: ignore[no-untyped-call]


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
