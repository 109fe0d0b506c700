"""haproxy_exporter's metric families: CSV field, name, type and help, field by field.

The sidecar this replaces was prometheus/haproxy_exporter 0.14; dashboards and alerts use its
metric names, types and labels, so the tables below copy them field by field (CSV index, name,
type, help). Three of its defects are fixed rather than copied: any "UP n/m" counts as up (it
only knew "UP 1/3" and "UP 2/3"), "MAINT (resolution)" is spelled as HAProxy 2.x prints it, and
unused `server-template` slots are left out unless asked for.

These tables are the one definition of every per-row haproxy metric: `exposition.py` prints
them, and tests check the output against prometheus_client's parser and the reference table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
