"""Unit tests of the collector and the fast renderer, on `show stat` recorded from HAProxy 2.6.

tests/data/exporter_show_stat.csv and exporter_show_info.txt were recorded from haproxy 2.6.12
running a compiled config: an http route with a live and a dead origin, a route whose only
server was caught failing checks ("UP 9/10", fall 10), a tcp route without checks that refused
two clients by allow_from, a DNS route with 3 server-template slots of which 1 is used, and the
stats page.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.openmetrics import parser as om_parser
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from haproxy_egress.errors import ConfigError
from haproxy_egress.metrics.collector import (
    DENIED_STAGES,
    EgressCollector,
    ScrapeCounters,
    stat_families,
)
from haproxy_egress.metrics.exposition import render_scrape, render_stats
from haproxy_egress.metrics.families import BACKEND_FAMILIES, FRONTEND_FAMILIES, SERVER_FAMILIES
from haproxy_egress.metrics.options import ExporterOptions
from haproxy_egress.metrics.stats import (
    HaproxySnapshot,
    StatTable,
    parse_info,
    parse_stat,
    read_snapshot,
    status_up,
)
from haproxy_egress.metrics.status import RouterStatus
from haproxy_egress.runtime.haproxy import CliSocket
from haproxy_egress.settings import Settings

DATA = Path(__file__).parent.parent.parent / "data"
STAT = (DATA / "exporter_show_stat.csv").read_text()
INFO = (DATA / "exporter_show_info.txt").read_text()
SNAPSHOT = HaproxySnapshot(info=parse_info(INFO), stat=STAT)
ALL = ExporterOptions(server_metric_fields=None, server_exclude_states=frozenset())
STATUS = RouterStatus(
    alive=True,
    ready=True,
    reloads_total=3,
    reload_failures_total=1,
    last_reload_successful=True,
    last_reload_success_timestamp=1_795_700_000.5,
    config_digest="ab" * 32,
    config_routes=4,
    child_restarts={"haproxy": 2, "socklog": 0},
    start_time=1_795_600_000.0,
)

# The reference table (../shared/reference/haproxy-exporter-metrics.md): name -> (type, fields)
REFERENCE = {
    "frontend": {
        "current_sessions": ("gauge", "4:scur"),
        "max_sessions": ("gauge", "5:smax"),
        "limit_sessions": ("gauge", "6:slim"),
        "sessions_total": ("counter", "7:stot"),
        "bytes_in_total": ("counter", "8:bin"),
        "bytes_out_total": ("counter", "9:bout"),
        "requests_denied_total": ("counter", "10:dreq"),
        "request_errors_total": ("counter", "12:ereq"),
        "current_session_rate": ("gauge", "33:rate"),
        "limit_session_rate": ("gauge", "34:rate_lim"),
        "max_session_rate": ("gauge", "35:rate_max"),
        "http_responses_total": (
            "counter",
            "39:hrsp_1xx 40:hrsp_2xx 41:hrsp_3xx 42:hrsp_4xx 43:hrsp_5xx 44:hrsp_other",
        ),
        "http_requests_total": ("counter", "48:req_tot"),
        "compressor_bytes_in_total": ("counter", "51:comp_in"),
        "compressor_bytes_out_total": ("counter", "52:comp_out"),
        "compressor_bytes_bypassed_total": ("counter", "53:comp_byp"),
        "http_responses_compressed_total": ("counter", "54:comp_rsp"),
        "connections_total": ("counter", "79:conn_tot"),
    },
    "backend": {
        "current_queue": ("gauge", "2:qcur"),
        "max_queue": ("gauge", "3:qmax"),
        "current_sessions": ("gauge", "4:scur"),
        "max_sessions": ("gauge", "5:smax"),
        "limit_sessions": ("gauge", "6:slim"),
        "sessions_total": ("counter", "7:stot"),
        "bytes_in_total": ("counter", "8:bin"),
        "bytes_out_total": ("counter", "9:bout"),
        "connection_errors_total": ("counter", "13:econ"),
        "response_errors_total": ("counter", "14:eresp"),
        "retry_warnings_total": ("counter", "15:wretr"),
        "redispatch_warnings_total": ("counter", "16:wredis"),
        "up": ("gauge", "17:status"),
        "weight": ("gauge", "18:weight"),
        "current_server": ("gauge", "19:act"),
        "server_selected_total": ("counter", "30:lbtot"),
        "current_session_rate": ("gauge", "33:rate"),
        "max_session_rate": ("gauge", "35:rate_max"),
        "http_responses_total": (
            "counter",
            "39:hrsp_1xx 40:hrsp_2xx 41:hrsp_3xx 42:hrsp_4xx 43:hrsp_5xx 44:hrsp_other",
        ),
        "client_aborts_total": ("counter", "49:cli_abrt"),
        "server_aborts_total": ("counter", "50:srv_abrt"),
        "compressor_bytes_in_total": ("counter", "51:comp_in"),
        "compressor_bytes_out_total": ("counter", "52:comp_out"),
        "compressor_bytes_bypassed_total": ("counter", "53:comp_byp"),
        "http_responses_compressed_total": ("counter", "54:comp_rsp"),
        "http_queue_time_average_seconds": ("gauge", "58:qtime"),
        "http_connect_time_average_seconds": ("gauge", "59:ctime"),
        "http_response_time_average_seconds": ("gauge", "60:rtime"),
        "http_total_time_average_seconds": ("gauge", "61:ttime"),
    },
    "server": {
        "current_queue": ("gauge", "2:qcur"),
        "max_queue": ("gauge", "3:qmax"),
        "current_sessions": ("gauge", "4:scur"),
        "max_sessions": ("gauge", "5:smax"),
        "limit_sessions": ("gauge", "6:slim"),
        "sessions_total": ("counter", "7:stot"),
        "bytes_in_total": ("counter", "8:bin"),
        "bytes_out_total": ("counter", "9:bout"),
        "connection_errors_total": ("counter", "13:econ"),
        "response_errors_total": ("counter", "14:eresp"),
        "retry_warnings_total": ("counter", "15:wretr"),
        "redispatch_warnings_total": ("counter", "16:wredis"),
        "up": ("gauge", "17:status"),
        "weight": ("gauge", "18:weight"),
        "check_failures_total": ("counter", "21:chkfail"),
        "downtime_seconds_total": ("counter", "24:downtime"),
        "server_selected_total": ("counter", "30:lbtot"),
        "current_session_rate": ("gauge", "33:rate"),
        "max_session_rate": ("gauge", "35:rate_max"),
        "check_duration_seconds": ("gauge", "38:check_duration"),
        "http_responses_total": (
            "counter",
            "39:hrsp_1xx 40:hrsp_2xx 41:hrsp_3xx 42:hrsp_4xx 43:hrsp_5xx 44:hrsp_other",
        ),
        "client_aborts_total": ("counter", "49:cli_abrt"),
        "server_aborts_total": ("counter", "50:srv_abrt"),
        "http_queue_time_average_seconds": ("gauge", "58:qtime"),
        "http_connect_time_average_seconds": ("gauge", "59:ctime"),
        "http_response_time_average_seconds": ("gauge", "60:rtime"),
        "http_total_time_average_seconds": ("gauge", "61:ttime"),
    },
}

Parsed = dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]]


def parse(body: bytes | str, openmetrics: bool = False) -> Parsed:
    """Exposition text -> {family: (type, help, {(sample name, labels): value})}."""
    text = body.decode() if isinstance(body, bytes) else body
    parser = (
        om_parser.text_string_to_metric_families if openmetrics else text_string_to_metric_families
    )
    out: Parsed = {}
    for fam in parser(text):
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = s.value
        assert fam.name not in out, f"family {fam.name} appears twice"
        out[fam.name] = (fam.type, fam.documentation, samples)
    return out


def collector_body(
    snapshot: HaproxySnapshot,
    options: ExporterOptions,
    status: RouterStatus | None = STATUS,
    openmetrics: bool = False,
) -> bytes:
    """What prometheus_client's own encoder makes of the collector (the definition)."""

    def get_status() -> RouterStatus:
        if status is None:
            raise RuntimeError("supervisor gone")
        return status

    registry = CollectorRegistry(auto_describe=False)
    registry.register(EgressCollector(lambda: snapshot, get_status, options, ScrapeCounters()))
    if openmetrics:
        return bytes(om_exposition.generate_latest(registry))  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def fast_body(
    snapshot: HaproxySnapshot,
    options: ExporterOptions,
    status: RouterStatus | None = STATUS,
    openmetrics: bool = False,
) -> bytes:
    """What /metrics serves for the same snapshot."""
    return render_scrape(
        snapshot, status, options, counters=ScrapeCounters(), openmetrics=openmetrics
    )


def samples_of(parsed: Parsed, family: str) -> dict[tuple[tuple[str, str], ...], float]:
    """{labels: value} of one family (sample names dropped)."""
    return {labels: value for (_, labels), value in parsed[family][2].items()}


# --- the metric tables ------------------------------------------------------------------------


def test_tables_match_the_reference_names_types_and_csv_fields() -> None:
    header = STAT.splitlines()[0].lstrip("# ").split(",")
    for kind, specs in (
        ("frontend", FRONTEND_FAMILIES),
        ("backend", BACKEND_FAMILIES),
        ("server", SERVER_FAMILIES),
    ):
        ours = {}
        for spec in specs:
            fields = " ".join(f"{i}:{header[i]}" for i, _ in spec.fields)
            ours[spec.name.removeprefix(f"haproxy_{kind}_")] = (spec.kind, fields)
        assert ours == REFERENCE[kind], kind
    assert len(FRONTEND_FAMILIES) + len(BACKEND_FAMILIES) + len(SERVER_FAMILIES) == 74


def test_rows_are_split_far_enough_for_every_field_used() -> None:
    used = [
        i
        for fam in (*FRONTEND_FAMILIES, *BACKEND_FAMILIES, *SERVER_FAMILIES)
        for i, _ in fam.fields
    ]
    used += [i for _, i in DENIED_STAGES]
    table = parse_stat(STAT)
    width = len(table.servers[0])
    assert max(used) < width - 1  # the last cell holds the unsplit rest of the line
    header = STAT.splitlines()[0].lstrip("# ").split(",")
    assert [header[i] for _, i in DENIED_STAGES] == ["dcon", "dses", "dreq"]


def test_parse_failures_are_counted_not_raised() -> None:
    table = parse_stat("# pxname,svname\nshort,row\n\n")
    assert table.failures == 1
    assert (table.frontends, table.backends, table.servers) == ([], [], [])


def test_quoted_csv_rows_are_split_by_the_csv_rules() -> None:
    row = STAT.splitlines()[3].split(",")
    row[65] = '"Layer4, connection problem"'
    table = parse_stat(",".join(row))
    assert table.servers[0][65] == "Layer4, connection problem"
    assert table.servers[0][17] == row[17]


@pytest.mark.parametrize(
    ("status", "up"),
    [
        ("UP", 1),
        ("UP 1/3", 1),
        ("UP 2/3", 1),
        ("UP 1/6", 1),  # haproxy_exporter says 0: it only knew "UP 1/3" and "UP 2/3"
        ("UP 9/10", 1),
        ("OPEN", 1),
        ("no check", 1),
        ("DRAIN", 1),
        ("DRAIN 1/3", 1),
        ("DRAIN (agent)", 1),
        ("DOWN", 0),
        ("DOWN 1/2", 0),
        ("DOWN (agent)", 0),
        ("NOLB", 0),
        ("NOLB 1/3", 0),
        ("MAINT", 0),
        ("MAINT (resolution)", 0),
        ("MAINT (via b/s)", 0),
        ("STOP", 0),
        ("", 0),
    ],
)
def test_status_up(status: str, up: int) -> None:
    assert status_up(status) == up


# --- the collector on the recorded CSV -----------------------------------------------------


def test_collector_exports_the_recorded_haproxy() -> None:
    parsed = parse(collector_body(SNAPSHOT, ALL))
    assert samples_of(parsed, "haproxy_up") == {(): 1.0}
    assert samples_of(parsed, "haproxy_version_info") == {
        (("release_date", "2026/10/17"), ("version", "2.6.12-1+deb12u4")): 1.0
    }
    up = samples_of(parsed, "haproxy_server_up")
    assert up[(("backend", "web"), ("server", "127.0.0.1_34673"))] == 1
    assert up[(("backend", "web"), ("server", "127.0.0.1_57439"))] == 0
    assert up[(("backend", "flaky"), ("server", "127.0.0.1_44871"))] == 1  # "UP 9/10"
    assert up[(("backend", "db"), ("server", "127.0.0.1_57439"))] == 1  # "no check"
    # unused server-template slots are left out by default, the used one stays
    assert (("backend", "api"), ("server", "api.test_34673-1")) in up
    assert not any("api.test_34673-2" in str(k) or "-3" in str(k) for k in up)
    responses = samples_of(parsed, "haproxy_frontend_http_responses")
    assert responses[(("code", "2xx"), ("frontend", "web"))] == 5
    # tcp routes have no HTTP counters: empty cells give no series
    assert not any(("frontend", "db") in k for k in responses)
    assert samples_of(parsed, "haproxy_frontend_connections")[(("frontend", "db"),)] == 2
    assert parsed["haproxy_backend_http_total_time_average_seconds"][0] == "gauge"
    assert parsed["haproxy_server_sessions"][0] == "counter"
    assert samples_of(parsed, "haproxy_exporter_scrapes") == {(): 1.0}
    assert samples_of(parsed, "haproxy_exporter_csv_parse_failures") == {(): 0.0}


def test_milliseconds_become_seconds() -> None:
    row = STAT.splitlines()[3].split(",")
    row[58], row[59], row[60], row[61], row[38] = "0", "3", "1500", "12", "7"
    snap = HaproxySnapshot(info={}, stat=",".join(row))
    parsed = parse(collector_body(snap, ALL))
    key = (("backend", "web"), ("server", "127.0.0.1_34673"))
    assert samples_of(parsed, "haproxy_server_http_queue_time_average_seconds")[key] == 0
    assert samples_of(parsed, "haproxy_server_http_connect_time_average_seconds")[key] == 0.003
    assert samples_of(parsed, "haproxy_server_http_response_time_average_seconds")[key] == 1.5
    assert samples_of(parsed, "haproxy_server_http_total_time_average_seconds")[key] == 0.012
    assert samples_of(parsed, "haproxy_server_check_duration_seconds")[key] == 0.007


def test_policy_metrics_count_denied_per_route_and_skip_internal_proxies() -> None:
    parsed = parse(collector_body(SNAPSHOT, ALL))
    denied = samples_of(parsed, "haproxy_egress_route_denied")
    assert denied[(("route", "db"), ("stage", "connection"))] == 2
    assert denied[(("route", "web"), ("stage", "request"))] == 0
    assert {dict(k)["route"] for k in denied} == {"web", "flaky", "db", "api"}  # not _stats
    assert parsed["haproxy_egress_route_denied"][0] == "counter"


def test_router_metrics_names_and_values() -> None:
    parsed = parse(collector_body(SNAPSHOT, ALL))
    assert samples_of(parsed, "haproxy_egress_up") == {(): 1}
    assert samples_of(parsed, "haproxy_egress_ready") == {(): 1}
    assert samples_of(parsed, "haproxy_egress_reloads") == {(): 3}
    assert samples_of(parsed, "haproxy_egress_reload_failures") == {(): 1}
    assert samples_of(parsed, "haproxy_egress_config_last_reload_successful") == {(): 1}
    assert samples_of(parsed, "haproxy_egress_config_last_reload_success_timestamp_seconds") == {
        (): 1_795_700_000.5
    }
    assert samples_of(parsed, "haproxy_egress_config_info") == {(("digest", "ab" * 32),): 1}
    assert samples_of(parsed, "haproxy_egress_config_routes") == {(): 4}
    assert samples_of(parsed, "haproxy_egress_child_restarts") == {
        (("child", "haproxy"),): 2,
        (("child", "socklog"),): 0,
    }
    (build,) = samples_of(parsed, "haproxy_egress_build_info")
    assert dict(build)["haproxy_version"] == "2.6.12-1+deb12u4"
    assert set(dict(build)) == {"version", "haproxy_version", "python_version"}
    text = collector_body(SNAPSHOT, ALL).decode()
    for name, kind in [
        ("haproxy_egress_config_last_reload_successful", "gauge"),
        ("haproxy_egress_config_last_reload_success_timestamp_seconds", "gauge"),
        ("haproxy_egress_reloads_total", "counter"),
        ("haproxy_egress_reload_failures_total", "counter"),
        ("haproxy_egress_config_info", "gauge"),
        ("haproxy_egress_config_routes", "gauge"),
        ("haproxy_egress_child_restarts_total", "counter"),
        ("haproxy_egress_build_info", "gauge"),
        ("haproxy_egress_up", "gauge"),
        ("haproxy_egress_ready", "gauge"),
        ("haproxy_egress_route_denied_total", "counter"),
    ]:
        assert f"# TYPE {name} {kind}\n" in text


def test_a_failing_status_callable_gives_router_down_not_an_exception() -> None:
    parsed = parse(collector_body(SNAPSHOT, ALL, status=None))
    assert samples_of(parsed, "haproxy_egress_up") == {(): 0}
    assert "haproxy_egress_reloads" not in parsed
    assert samples_of(parsed, "haproxy_up") == {(): 1}


def test_socket_down_gives_haproxy_up_0_and_no_exception(tmp_path: Path) -> None:
    snapshot = read_snapshot(CliSocket(tmp_path / "missing.sock", 1.0).command)
    assert not snapshot.up
    parsed = parse(collector_body(snapshot, ALL))
    assert samples_of(parsed, "haproxy_up") == {(): 0}
    assert not any(name.startswith(("haproxy_server", "haproxy_frontend")) for name in parsed)
    assert samples_of(parsed, "haproxy_egress_up") == {(): 1}
    assert fast_body(snapshot, ALL) == collector_body(snapshot, ALL)


# --- selection options -----------------------------------------------------------------------


def test_unused_slots_are_included_on_request() -> None:
    options = ExporterOptions(None, frozenset(), include_unused_slots=True)
    up = samples_of(parse(collector_body(SNAPSHOT, options)), "haproxy_server_up")
    assert up[(("backend", "api"), ("server", "api.test_34673-2"))] == 0
    assert up[(("backend", "api"), ("server", "api.test_34673-3"))] == 0


def test_excluded_states_leave_out_those_servers() -> None:
    settings = Settings(server_exclude_states="DOWN, no check")
    options = ExporterOptions.from_settings(settings)
    assert options.server_exclude_states == {"down", "nocheck"}
    up = samples_of(parse(collector_body(SNAPSHOT, options)), "haproxy_server_up")
    assert set(up) == {
        (("backend", "web"), ("server", "127.0.0.1_34673")),
        (("backend", "flaky"), ("server", "127.0.0.1_44871")),
        (("backend", "api"), ("server", "api.test_34673-1")),
    }


def test_exclude_states_accepts_the_exporters_spelling_of_maint_resolution() -> None:
    options = ExporterOptions.from_settings(
        Settings(server_exclude_states="MAINT(resolution)", include_unused_slots=True)
    )
    up = samples_of(parse(collector_body(SNAPSHOT, options)), "haproxy_server_up")
    assert not any("api.test_34673-2" in str(k) for k in up)


def test_server_metric_fields_select_server_families() -> None:
    options = ExporterOptions.from_settings(Settings(server_metric_fields="17, 40,8"))
    assert options.server_metric_fields == frozenset({8, 17, 40})
    parsed = parse(collector_body(SNAPSHOT, options))
    server = {name for name in parsed if name.startswith("haproxy_server_")}
    assert server == {
        "haproxy_server_up",
        "haproxy_server_bytes_in",
        "haproxy_server_http_responses",
    }
    codes = {dict(k)["code"] for k in samples_of(parsed, "haproxy_server_http_responses")}
    assert codes == {"2xx"}
    assert "haproxy_backend_weight" in parsed  # frontends and backends are not filtered


def test_options_default_to_everything() -> None:
    options = ExporterOptions.from_settings(Settings())
    assert options.server_metric_fields is None
    assert options.server_exclude_states == frozenset()
    assert not options.include_unused_slots
    assert options.scrape_timeout == 5.0


def test_bad_options_report_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        ExporterOptions.from_settings(
            Settings(server_metric_fields="2,x,99", server_exclude_states="UP,MIANT")
        )
    messages = [str(p) for p in info.value.problems]
    assert len(messages) == 3
    assert any("EGRESS_SERVER_METRIC_FIELDS" in m and "'x'" in m for m in messages)
    assert any("EGRESS_SERVER_METRIC_FIELDS" in m and "field 99" in m for m in messages)
    assert any("EGRESS_SERVER_EXCLUDE_STATES" in m and "MIANT" in m for m in messages)


# --- the fast renderer is the collector, sample for sample --------------------------------

OPTION_SETS = [
    ALL,
    ExporterOptions(None, frozenset(), include_unused_slots=True),
    ExporterOptions(frozenset({2, 17, 38, 39, 44}), frozenset({"down", "nocheck"})),
    ExporterOptions(frozenset(), frozenset()),
]


@pytest.mark.parametrize("options", OPTION_SETS)
@pytest.mark.parametrize("openmetrics", [False, True])
def test_fast_renderer_equals_the_collector(options: ExporterOptions, openmetrics: bool) -> None:
    ours = parse(fast_body(SNAPSHOT, options, openmetrics=openmetrics), openmetrics)
    reference = parse(collector_body(SNAPSHOT, options, openmetrics=openmetrics), openmetrics)
    assert ours == reference
    assert len(ours) > 40


def _edge_csv() -> str:
    """The recorded CSV with cells haproxy could (or could not) print, to stress both paths."""
    lines = STAT.splitlines()
    rows = [line.split(",") for line in lines[1:]]
    rows[2][1] = 'we"ird\\name'  # a server; names reach labels, so escaping matters
    rows[2][8] = "abc"  # not an integer: a parse failure, no sample
    rows[2][18] = "-1"
    rows[2][13] = "+5"
    rows[2][15] = "-2"  # a negative counter: invalid in OpenMetrics, so a parse failure
    rows[2][14] = "٣"  # a non-ASCII digit: not an integer for Go either
    rows[2][9] = "18446744073709551616"
    rows[2][60] = "2.5"
    rows[2][61] = "x"
    rows[3][17] = "DRAIN 1/3"
    rows[3][65] = '"Layer4, connection problem"'
    rows[4][17] = "UP 1/6"
    out = [lines[0], *(",".join(r) for r in rows), "too,short,row"]
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("openmetrics", [False, True])
def test_fast_renderer_equals_the_collector_on_odd_cells(openmetrics: bool) -> None:
    snapshot = HaproxySnapshot(info=parse_info(INFO), stat=_edge_csv())
    ours = parse(fast_body(snapshot, ALL, openmetrics=openmetrics), openmetrics)
    reference = parse(collector_body(snapshot, ALL, openmetrics=openmetrics), openmetrics)
    assert ours == reference
    failures = samples_of(ours, "haproxy_exporter_csv_parse_failures")
    assert failures == {(): 5.0}  # abc, ٣, -2, x, and the short row
    up = samples_of(ours, "haproxy_server_up")
    assert up[(("backend", "web"), ("server", 'we"ird\\name'))] == 1


_CELLS = st.sampled_from(["", "0", "1", "42", "-3", "+4", "007", "x", "1e3", "٣", "2.5"])
_STATES = st.sampled_from(
    ["UP", "DOWN", "UP 1/3", "UP 4/6", "MAINT (resolution)", "no check", "DRAIN", "NOLB", ""]
)
_NAMES = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    min_size=1,
    max_size=6,
)


@st.composite
def _tables(draw: st.DrawFn) -> StatTable:
    def row(kind: str, n: int) -> list[str]:
        cells = [draw(_CELLS) for _ in range(100)]
        # haproxy keeps proxy names and server names within a proxy unique
        cells[0], cells[1], cells[32] = f"{draw(_NAMES)}{n}", f"{draw(_NAMES)}{n}", kind
        cells[17] = draw(_STATES)
        return cells

    return StatTable(
        frontends=[row("0", n) for n in range(draw(st.integers(0, 3)))],
        backends=[row("1", n) for n in range(draw(st.integers(0, 3)))],
        servers=[row("2", n) for n in range(draw(st.integers(0, 4)))],
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=_tables(), openmetrics=st.booleans(), unused=st.booleans())
def test_fast_renderer_equals_the_collector_on_any_table(
    table: StatTable, openmetrics: bool, unused: bool
) -> None:
    options = ExporterOptions(None, frozenset({"down"}), include_unused_slots=unused)
    text, failures = render_stats(table, options, openmetrics)
    families, reference_failures = stat_families(table, options)
    reference = (
        om_exposition.generate_latest(_Registry(families))  # type: ignore[no-untyped-call]
        if openmetrics
        else generate_latest(_Registry(families))
    )
    if openmetrics:
        text += "# EOF\n"
    assert parse(text, openmetrics) == parse(reference, openmetrics)
    assert failures == reference_failures


class _Registry(Collector):
    """Given families, for prometheus_client's encoders."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def test_fast_renderer_is_much_faster_than_the_collector() -> None:
    """At 1,000 servers the fast path must stay far below prometheus_client's encoder."""
    lines = STAT.splitlines()
    server = lines[3].split(",")
    rows = [lines[0]]
    for b in range(100):
        for s in range(10):
            server[0], server[1] = f"route-{b:03d}", f"10.0.{b}.{s}_443"
            rows.append(",".join(server))
    snapshot = HaproxySnapshot(info=parse_info(INFO), stat="\n".join(rows) + "\n")

    def best(fn: object, n: int = 3) -> float:
        times = []
        for _ in range(n):
            start = time.process_time()
            fn()  # type: ignore[operator]
            times.append(time.process_time() - start)
        return min(times)

    fast = best(lambda: fast_body(snapshot, ALL))
    slow = best(lambda: collector_body(snapshot, ALL), n=1)
    assert fast * 4 < slow, (fast, slow)
    if os.environ.get("EGRESS_BENCH_VERBOSE"):
        print(f"fast {fast * 1000:.1f} ms, collector {slow * 1000:.1f} ms")
