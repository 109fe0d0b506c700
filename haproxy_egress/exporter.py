"""Prometheus collectors: haproxy's stats socket in haproxy_exporter's names, and the router's own.

The sidecar this replaces was prometheus/haproxy_exporter 0.14; dashboards and alerts use its
metric names, types and labels, so the tables below copy them field by field (CSV index, name,
type, help). Three of its defects are fixed rather than copied: any "UP n/m" counts as up (it
only knew "UP 1/3" and "UP 2/3"), "MAINT (resolution)" is spelled as HAProxy 2.x prints it, and
unused `server-template` slots are left out unless asked for.

`EgressCollector` is the definition of every metric: one `show info;show stat` per scrape, fresh
families, nothing kept between scrapes except haproxy_exporter's two scrape counters. The HTTP
endpoint renders the large per-row families through `exposition.py` instead, whose output a test
proves equal to this collector's.
"""

from __future__ import annotations

import csv
import enum
import logging
import platform
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from . import __version__
from .errors import ConfigError, HaproxyError, Problem
from .haproxy import CliSocket
from .policy_metrics import PolicyCollector, socket_table
from .settings import Settings

logger = logging.getLogger(__name__)

# --- the router's state, as the supervisor hands it out -------------------------------------


@dataclass(frozen=True)
class RouterStatus:
    """A snapshot of the supervisor's state, taken on every scrape."""

    alive: bool  # supervisor loop alive -> /healthz 200, else 503
    ready: bool  # haproxy runs a config with listeners bound -> /readyz 200, else 503
    reloads_total: int
    reload_failures_total: int
    last_reload_successful: bool
    last_reload_success_timestamp: float  # unix seconds, 0 if never
    config_digest: str
    config_routes: int
    child_restarts: Mapping[str, int]  # {"haproxy": n, "socklog": n}
    start_time: float


# --- options: haproxy_exporter's selection flags --------------------------------------------


class Conversion(enum.Enum):
    """How a CSV cell becomes a sample value."""

    INT = "int"  # an integer, exported as is
    MILLIS = "ms"  # milliseconds, exported in seconds
    STATUS = "status"  # a status string, exported as 1 (serving) or 0


@dataclass(frozen=True)
class StatFamily:
    """One haproxy_exporter metric family and the CSV field(s) it comes from."""

    name: str
    kind: str  # "counter" | "gauge"
    help: str
    # (CSV index, value of the `code` label or "") pairs; several only for http_responses_total
    fields: tuple[tuple[int, str], ...]
    conversion: Conversion = Conversion.INT


def _family(
    name: str, kind: str, help_: str, index: int, conversion: Conversion = Conversion.INT
) -> StatFamily:
    return StatFamily(name, kind, help_, ((index, ""),), conversion)


_CODES = ((39, "1xx"), (40, "2xx"), (41, "3xx"), (42, "4xx"), (43, "5xx"), (44, "other"))
_H_SESSIONS = "Current number of active sessions."
_H_MAX_SESSIONS = "Maximum observed number of active sessions."
_H_LIMIT_SESSIONS = "Configured session limit."
_H_STOT = "Total number of sessions."
_H_BIN = "Current total of incoming bytes."
_H_BOUT = "Current total of outgoing bytes."
_H_RATE = "Current number of sessions per second over last elapsed second."
_H_RESPONSES = "Total of HTTP responses."
_H_ECON = "Total of connection errors."
_H_ERESP = "Total of response errors."
_H_WRETR = "Total of retry warnings."
_H_WREDIS = "Total of redispatch warnings."
_H_LBTOT = (
    "Total number of times a server was selected, either for new sessions, or when re-dispatching."
)
_H_CLI_ABRT = "Total number of data transfers aborted by the client."
_H_SRV_ABRT = "Total number of data transfers aborted by the server."
_H_COMP_IN = "Number of HTTP response bytes fed to the compressor"
_H_COMP_OUT = "Number of HTTP response bytes emitted by the compressor"
_H_COMP_BYP = "Number of bytes that bypassed the HTTP compressor"
_H_COMP_RSP = "Number of HTTP responses that were compressed"
_H_TIMES = "Avg. HTTP {} time for last 1024 successful connections."

FRONTEND_FAMILIES: tuple[StatFamily, ...] = (
    _family("haproxy_frontend_current_sessions", "gauge", _H_SESSIONS, 4),
    _family("haproxy_frontend_max_sessions", "gauge", _H_MAX_SESSIONS, 5),
    _family("haproxy_frontend_limit_sessions", "gauge", _H_LIMIT_SESSIONS, 6),
    _family("haproxy_frontend_sessions_total", "counter", _H_STOT, 7),
    _family("haproxy_frontend_bytes_in_total", "counter", _H_BIN, 8),
    _family("haproxy_frontend_bytes_out_total", "counter", _H_BOUT, 9),
    _family(
        "haproxy_frontend_requests_denied_total",
        "counter",
        "Total of requests denied for security.",
        10,
    ),
    _family("haproxy_frontend_request_errors_total", "counter", "Total of request errors.", 12),
    _family("haproxy_frontend_current_session_rate", "gauge", _H_RATE, 33),
    _family(
        "haproxy_frontend_limit_session_rate",
        "gauge",
        "Configured limit on new sessions per second.",
        34,
    ),
    _family(
        "haproxy_frontend_max_session_rate",
        "gauge",
        "Maximum observed number of sessions per second.",
        35,
    ),
    StatFamily("haproxy_frontend_http_responses_total", "counter", _H_RESPONSES, _CODES),
    _family("haproxy_frontend_http_requests_total", "counter", "Total HTTP requests.", 48),
    _family("haproxy_frontend_compressor_bytes_in_total", "counter", _H_COMP_IN, 51),
    _family("haproxy_frontend_compressor_bytes_out_total", "counter", _H_COMP_OUT, 52),
    _family("haproxy_frontend_compressor_bytes_bypassed_total", "counter", _H_COMP_BYP, 53),
    _family("haproxy_frontend_http_responses_compressed_total", "counter", _H_COMP_RSP, 54),
    _family("haproxy_frontend_connections_total", "counter", "Total number of connections", 79),
)

BACKEND_FAMILIES: tuple[StatFamily, ...] = (
    _family(
        "haproxy_backend_current_queue",
        "gauge",
        "Current number of queued requests not assigned to any server.",
        2,
    ),
    _family(
        "haproxy_backend_max_queue",
        "gauge",
        "Maximum observed number of queued requests not assigned to any server.",
        3,
    ),
    _family("haproxy_backend_current_sessions", "gauge", _H_SESSIONS, 4),
    _family("haproxy_backend_max_sessions", "gauge", _H_MAX_SESSIONS, 5),
    _family("haproxy_backend_limit_sessions", "gauge", _H_LIMIT_SESSIONS, 6),
    _family("haproxy_backend_sessions_total", "counter", _H_STOT, 7),
    _family("haproxy_backend_bytes_in_total", "counter", _H_BIN, 8),
    _family("haproxy_backend_bytes_out_total", "counter", _H_BOUT, 9),
    _family("haproxy_backend_connection_errors_total", "counter", _H_ECON, 13),
    _family("haproxy_backend_response_errors_total", "counter", _H_ERESP, 14),
    _family("haproxy_backend_retry_warnings_total", "counter", _H_WRETR, 15),
    _family("haproxy_backend_redispatch_warnings_total", "counter", _H_WREDIS, 16),
    _family(
        "haproxy_backend_up",
        "gauge",
        "Current health status of the backend (1 = UP, 0 = DOWN).",
        17,
        Conversion.STATUS,
    ),
    _family("haproxy_backend_weight", "gauge", "Total weight of the servers in the backend.", 18),
    _family("haproxy_backend_current_server", "gauge", "Current number of active servers", 19),
    _family("haproxy_backend_server_selected_total", "counter", _H_LBTOT, 30),
    _family("haproxy_backend_current_session_rate", "gauge", _H_RATE, 33),
    _family(
        "haproxy_backend_max_session_rate", "gauge", "Maximum number of sessions per second.", 35
    ),
    StatFamily("haproxy_backend_http_responses_total", "counter", _H_RESPONSES, _CODES),
    _family("haproxy_backend_client_aborts_total", "counter", _H_CLI_ABRT, 49),
    _family("haproxy_backend_server_aborts_total", "counter", _H_SRV_ABRT, 50),
    _family("haproxy_backend_compressor_bytes_in_total", "counter", _H_COMP_IN, 51),
    _family("haproxy_backend_compressor_bytes_out_total", "counter", _H_COMP_OUT, 52),
    _family("haproxy_backend_compressor_bytes_bypassed_total", "counter", _H_COMP_BYP, 53),
    _family("haproxy_backend_http_responses_compressed_total", "counter", _H_COMP_RSP, 54),
    _family(
        "haproxy_backend_http_queue_time_average_seconds",
        "gauge",
        _H_TIMES.format("queue"),
        58,
        Conversion.MILLIS,
    ),
    _family(
        "haproxy_backend_http_connect_time_average_seconds",
        "gauge",
        _H_TIMES.format("connect"),
        59,
        Conversion.MILLIS,
    ),
    _family(
        "haproxy_backend_http_response_time_average_seconds",
        "gauge",
        _H_TIMES.format("response"),
        60,
        Conversion.MILLIS,
    ),
    _family(
        "haproxy_backend_http_total_time_average_seconds",
        "gauge",
        _H_TIMES.format("total"),
        61,
        Conversion.MILLIS,
    ),
)

SERVER_FAMILIES: tuple[StatFamily, ...] = (
    _family(
        "haproxy_server_current_queue",
        "gauge",
        "Current number of queued requests assigned to this server.",
        2,
    ),
    _family(
        "haproxy_server_max_queue",
        "gauge",
        "Maximum observed number of queued requests assigned to this server.",
        3,
    ),
    _family("haproxy_server_current_sessions", "gauge", _H_SESSIONS, 4),
    _family("haproxy_server_max_sessions", "gauge", _H_MAX_SESSIONS, 5),
    _family("haproxy_server_limit_sessions", "gauge", _H_LIMIT_SESSIONS, 6),
    _family("haproxy_server_sessions_total", "counter", _H_STOT, 7),
    _family("haproxy_server_bytes_in_total", "counter", _H_BIN, 8),
    _family("haproxy_server_bytes_out_total", "counter", _H_BOUT, 9),
    _family("haproxy_server_connection_errors_total", "counter", _H_ECON, 13),
    _family("haproxy_server_response_errors_total", "counter", _H_ERESP, 14),
    _family("haproxy_server_retry_warnings_total", "counter", _H_WRETR, 15),
    _family("haproxy_server_redispatch_warnings_total", "counter", _H_WREDIS, 16),
    _family(
        "haproxy_server_up",
        "gauge",
        "Current health status of the server (1 = UP, 0 = DOWN).",
        17,
        Conversion.STATUS,
    ),
    _family("haproxy_server_weight", "gauge", "Current weight of the server.", 18),
    _family(
        "haproxy_server_check_failures_total",
        "counter",
        "Total number of failed health checks.",
        21,
    ),
    _family("haproxy_server_downtime_seconds_total", "counter", "Total downtime in seconds.", 24),
    _family("haproxy_server_server_selected_total", "counter", _H_LBTOT, 30),
    _family("haproxy_server_current_session_rate", "gauge", _H_RATE, 33),
    _family(
        "haproxy_server_max_session_rate",
        "gauge",
        "Maximum observed number of sessions per second.",
        35,
    ),
    _family(
        "haproxy_server_check_duration_seconds",
        "gauge",
        "Previously run health check duration, in seconds",
        38,
        Conversion.MILLIS,
    ),
    StatFamily("haproxy_server_http_responses_total", "counter", _H_RESPONSES, _CODES),
    _family("haproxy_server_client_aborts_total", "counter", _H_CLI_ABRT, 49),
    _family("haproxy_server_server_aborts_total", "counter", _H_SRV_ABRT, 50),
    _family(
        "haproxy_server_http_queue_time_average_seconds",
        "gauge",
        _H_TIMES.format("queue"),
        58,
        Conversion.MILLIS,
    ),
    _family(
        "haproxy_server_http_connect_time_average_seconds",
        "gauge",
        _H_TIMES.format("connect"),
        59,
        Conversion.MILLIS,
    ),
    _family(
        "haproxy_server_http_response_time_average_seconds",
        "gauge",
        _H_TIMES.format("response"),
        60,
        Conversion.MILLIS,
    ),
    _family(
        "haproxy_server_http_total_time_average_seconds",
        "gauge",
        _H_TIMES.format("total"),
        61,
        Conversion.MILLIS,
    ),
)

# haproxy_exporter's --haproxy.server-metric-fields default: every server field it knows.
SERVER_FIELDS: frozenset[int] = frozenset(i for f in SERVER_FAMILIES for i, _ in f.fields)

# Words a server status starts with in HAProxy 2.x ("UP 2/3", "MAINT (via b/s)", "no check").
_STATE_WORDS = frozenset({"up", "down", "nolb", "maint", "drain", "no", "nocheck"})
UNUSED_SLOT_STATE = "maint(resolution)"  # normalised; an unused server-template slot


def normalise_state(state: str) -> str:
    """A status string in the form exclusions compare: lower case, no blanks.

    So "MAINT (resolution)" (what HAProxy 2.x prints) and "MAINT(resolution)" (what
    haproxy_exporter's documentation spells) both match.
    """
    return "".join(state.split()).lower()


@dataclass(frozen=True)
class ExporterOptions:
    """Which haproxy series to export; haproxy_exporter's selection flags."""

    server_metric_fields: frozenset[int] | None  # None = all (--haproxy.server-metric-fields)
    server_exclude_states: frozenset[str]  # normalised (--haproxy.server-exclude-states)
    include_unused_slots: bool = False
    scrape_timeout: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ExporterOptions:
        """Parse the raw selection settings; ConfigError lists every problem found."""
        problems: list[Problem] = []
        fields: frozenset[int] | None = None
        raw_fields = settings.server_metric_fields.strip()
        if raw_fields:
            chosen: set[int] = set()
            for item in (part.strip() for part in raw_fields.split(",")):
                if not item.isdigit():
                    problems.append(
                        Problem(
                            "EGRESS_SERVER_METRIC_FIELDS",
                            "",
                            f"must be comma-separated CSV field numbers (got {item!r})",
                        )
                    )
                elif int(item) not in SERVER_FIELDS:
                    known = ",".join(str(i) for i in sorted(SERVER_FIELDS))
                    problems.append(
                        Problem(
                            "EGRESS_SERVER_METRIC_FIELDS",
                            "",
                            f"field {item} has no server metric (known: {known})",
                        )
                    )
                else:
                    chosen.add(int(item))
            fields = frozenset(chosen)
        states: set[str] = set()
        for item in (part.strip() for part in settings.server_exclude_states.split(",")):
            if not item:
                continue
            state = normalise_state(item)
            word = item.split()[0].split("(")[0].lower()
            if word not in _STATE_WORDS:
                problems.append(
                    Problem(
                        "EGRESS_SERVER_EXCLUDE_STATES",
                        "",
                        f"unknown server state {item!r} (states look like UP, DOWN, "
                        "MAINT, MAINT (resolution), DRAIN, NOLB, no check, UP 1/3)",
                    )
                )
            states.add(state)
        if problems:
            raise ConfigError(problems)
        return cls(
            server_metric_fields=fields,
            server_exclude_states=frozenset(states),
            include_unused_slots=settings.include_unused_slots,
        )

    def server_families(self) -> tuple[StatFamily, ...]:
        """The server families (and, for http_responses_total, codes) selected by field."""
        if self.server_metric_fields is None:
            return SERVER_FAMILIES
        selected = []
        for fam in SERVER_FAMILIES:
            kept = tuple(f for f in fam.fields if f[0] in self.server_metric_fields)
            if kept:
                selected.append(StatFamily(fam.name, fam.kind, fam.help, kept, fam.conversion))
        return tuple(selected)

    def keeps_server(self, status: str) -> bool:
        """False for a server row whose status is excluded, or an unused template slot."""
        if not self.server_exclude_states and self.include_unused_slots:
            return True
        state = normalise_state(status)
        if state in self.server_exclude_states:
            return False
        return self.include_unused_slots or state != UNUSED_SLOT_STATE


# --- reading haproxy -------------------------------------------------------------------------


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


def read_snapshot(stats_socket: Path, timeout: float) -> HaproxySnapshot:
    """Ask haproxy for `show info;show stat` on one connection; never raises.

    One connection, so both answers come from the same worker even during a reload; the
    whole exchange is bounded by `timeout`, so a wedged socket costs at most that.
    """
    try:
        text = CliSocket(stats_socket, timeout).command("show info;show stat")
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
    try:
        # The same float formatting prometheus_client's encoders use, so both paths agree.
        return str(floatToGoString(float(cell) / 1000))  # type: ignore[no-untyped-call]
    except ValueError:
        return None


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


# --- the metric families ---------------------------------------------------------------------

HELP_UP = "Was the last scrape of HAProxy successful."
HELP_SCRAPES = "Current total HAProxy scrapes."
HELP_PARSE_FAILURES = "Number of errors while parsing CSV."
DENIED_FAMILY = "haproxy_egress_route_denied_total"
HELP_DENIED = (
    "Connections, sessions and requests a route refused by policy (allow_from, deny rules), "
    "from haproxy's frontend counters dcon, dses and dreq."
)
# stage label value -> CSV index: tcp-request connection, tcp-request session, request rules.
DENIED_STAGES: tuple[tuple[str, int], ...] = (("connection", 81), ("session", 82), ("request", 10))


class ScrapeCounters:
    """haproxy_exporter's own counters (scrapes, CSV parse failures), shared by all scrapes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scrapes = 0
        self._failures = 0

    def record(self, failures: int) -> tuple[int, int]:
        """Count one scrape and its parse failures; the totals including this scrape."""
        with self._lock:
            self._scrapes += 1
            self._failures += failures
            return self._scrapes, self._failures


def _stat_family(
    spec: StatFamily,
    labelnames: Sequence[str],
    rows: Iterable[tuple[Sequence[str], list[str]]],
    counter: list[int],
) -> Metric | None:
    """One family from the rows; `counter[0]` accumulates cells that failed to convert."""
    convert = converter(spec)
    coded = spec.fields[0][1] != ""
    names = [*labelnames, "code"] if coded else list(labelnames)
    fam: GaugeMetricFamily | CounterMetricFamily
    if spec.kind == "counter":
        fam = CounterMetricFamily(spec.name, spec.help, labels=names)
    else:
        fam = GaugeMetricFamily(spec.name, spec.help, labels=names)
    rows = list(rows)
    for index, code in spec.fields:
        for labels, row in rows:
            cell = row[index]
            if not cell:
                continue  # haproxy leaves fields empty that mean nothing for this row
            text = convert(cell)
            if text is None:
                counter[0] += 1
                continue
            fam.add_metric([*labels, code] if coded else labels, float(text))
    return fam if fam.samples else None


def stat_families(table: StatTable, options: ExporterOptions) -> tuple[list[Metric], int]:
    """The frontend, backend and server families of one CSV, and the cells that failed."""
    failures = [0]
    out: list[Metric] = []
    groups: list[tuple[Sequence[StatFamily], list[str], list[tuple[Sequence[str], list[str]]]]] = [
        (FRONTEND_FAMILIES, ["frontend"], [([r[0]], r) for r in table.frontends]),
        (BACKEND_FAMILIES, ["backend"], [([r[0]], r) for r in table.backends]),
        (
            options.server_families(),
            ["backend", "server"],
            [([r[0], r[1]], r) for r in server_rows(table, options)],
        ),
    ]
    for specs, labelnames, rows in groups:
        for spec in specs:
            fam = _stat_family(spec, labelnames, rows, failures)
            if fam is not None:
                out.append(fam)
    return out, failures[0]


def policy_family(table: StatTable) -> tuple[Metric | None, int]:
    """Denied connections/sessions/requests per route, from the routes' frontend rows."""
    fam = CounterMetricFamily(DENIED_FAMILY, HELP_DENIED, labels=["route", "stage"])
    failures = 0
    for row in table.frontends:
        if row[0].startswith("_"):
            continue  # internal proxies (_stats) are not routes
        for stage, index in DENIED_STAGES:
            cell = row[index]
            if not cell:
                continue
            text = int_text(cell)
            if text is None:
                failures += 1
                continue
            fam.add_metric([row[0], stage], float(text))
    return (fam if fam.samples else None), failures


def version_family(snapshot: HaproxySnapshot) -> Metric | None:
    """haproxy_version_info{release_date,version}, when `show info` answered."""
    if "Version" not in snapshot.info:
        return None
    return InfoMetricFamily(
        "haproxy_version",
        "HAProxy version info.",
        value={
            "release_date": snapshot.info.get("Release_date", ""),
            "version": snapshot.info["Version"],
        },
    )


def scrape_families(up: bool, totals: tuple[int, int]) -> list[Metric]:
    """haproxy_up and haproxy_exporter's two counters."""
    return [
        GaugeMetricFamily("haproxy_up", HELP_UP, value=1 if up else 0),
        CounterMetricFamily("haproxy_exporter_scrapes_total", HELP_SCRAPES, value=totals[0]),
        CounterMetricFamily(
            "haproxy_exporter_csv_parse_failures_total", HELP_PARSE_FAILURES, value=totals[1]
        ),
    ]


def router_families(status: RouterStatus | None, haproxy_version: str) -> list[Metric]:
    """The router's own metrics; only build info and `haproxy_egress_up 0` without a status."""
    build = InfoMetricFamily(
        "haproxy_egress_build",
        "Versions of haproxy-egress, the haproxy it runs, and Python.",
        value={
            "version": __version__,
            "haproxy_version": haproxy_version,
            "python_version": platform.python_version(),
        },
    )
    up = GaugeMetricFamily(
        "haproxy_egress_up",
        "1 while the supervisor loop is alive.",
        value=1 if status is not None and status.alive else 0,
    )
    if status is None:
        return [build, up]
    restarts = CounterMetricFamily(
        "haproxy_egress_child_restarts_total",
        "Times the supervisor restarted a child process after it died.",
        labels=["child"],
    )
    for child, count in sorted(status.child_restarts.items()):
        restarts.add_metric([child], count)
    return [
        build,
        up,
        GaugeMetricFamily(
            "haproxy_egress_ready",
            "1 while haproxy runs a configuration with its listeners bound.",
            value=1 if status.ready else 0,
        ),
        CounterMetricFamily(
            "haproxy_egress_reloads_total",
            "Configuration reloads attempted (changed ConfigMap, SIGHUP).",
            value=status.reloads_total,
        ),
        CounterMetricFamily(
            "haproxy_egress_reload_failures_total",
            "Reloads that failed (invalid config, haproxy -c refused, worker did not start); "
            "the previous configuration kept running.",
            value=status.reload_failures_total,
        ),
        GaugeMetricFamily(
            "haproxy_egress_config_last_reload_successful",
            "1 if the last reload attempt succeeded.",
            value=1 if status.last_reload_successful else 0,
        ),
        GaugeMetricFamily(
            "haproxy_egress_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful (re)load; 0 if none yet.",
            value=status.last_reload_success_timestamp,
        ),
        InfoMetricFamily(
            "haproxy_egress_config",
            "sha256 of the configuration haproxy runs.",
            value={"digest": status.config_digest},
        ),
        GaugeMetricFamily(
            "haproxy_egress_config_routes",
            "Routes in the configuration haproxy runs.",
            value=status.config_routes,
        ),
        restarts,
        GaugeMetricFamily(
            "haproxy_egress_start_time_seconds",
            "Unix time the router started.",
            value=status.start_time,
        ),
    ]


def safe_status(status: Callable[[], RouterStatus]) -> RouterStatus | None:
    """Call the supervisor's status callable; None (and a log line) if it fails."""
    try:
        return status()
    except Exception:
        logger.exception("router status unavailable for metrics")
        return None


def haproxy_families(
    snapshot: HaproxySnapshot, options: ExporterOptions, counters: ScrapeCounters
) -> list[Metric]:
    """Every family read from one stats snapshot, as the definition the fast path must match."""
    out: list[Metric] = []
    failures = 0
    if snapshot.up:
        table = parse_stat(snapshot.stat)
        stats, failures = stat_families(table, options)
        denied, denied_failures = policy_family(table)
        failures += table.failures + denied_failures
        version = version_family(snapshot)
        out.extend(f for f in (version, *stats, denied) if f is not None)
    out.extend(scrape_families(snapshot.up, counters.record(failures)))
    return out


class EgressCollector(Collector):
    """All of the router's metrics, read fresh on every scrape: haproxy's and its own."""

    def __init__(
        self,
        source: Callable[[], HaproxySnapshot],
        status: Callable[[], RouterStatus],
        options: ExporterOptions,
        counters: ScrapeCounters | None = None,
    ) -> None:
        self._source = source
        self._status = status
        self._options = options
        self._counters = counters or ScrapeCounters()

    def collect(self) -> Iterator[Metric]:
        """One stats snapshot and one status snapshot per scrape; never raises for haproxy."""
        snapshot = self._source()
        yield from haproxy_families(snapshot, self._options, self._counters)
        yield from router_families(safe_status(self._status), snapshot.haproxy_version)


def socket_source(stats_socket: Path, timeout: float) -> Callable[[], HaproxySnapshot]:
    """A snapshot source reading haproxy's stats socket, bounded by `timeout`."""
    return lambda: read_snapshot(stats_socket, timeout)


def build_registry(
    stats_socket: Path, status: Callable[[], RouterStatus], options: ExporterOptions
) -> CollectorRegistry:
    """A private registry with the router's collector and this process's process_* metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        EgressCollector(socket_source(stats_socket, options.scrape_timeout), status, options)
    )
    registry.register(PolicyCollector(socket_table(stats_socket, options.scrape_timeout)))
    ProcessCollector(registry=registry)
    return registry
