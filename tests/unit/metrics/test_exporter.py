"""Unit tests of /metrics' one exposition path, on `show stat` recorded from HAProxy 2.6.

tests/data/exporter_show_stat.csv and exporter_show_info.txt were recorded from haproxy 2.6.12
running a compiled config: an http route with a live and a dead origin, a route whose only
server was caught failing checks ("UP 9/10", fall 10), a tcp route without checks that refused
two clients by allow_from, a DNS route with 3 server-template slots of which 1 is used, and the
stats page.

The output is read back with prometheus_client's text and OpenMetrics parsers and checked
against an independent oracle: tests/data/haproxy_exporter_metrics.tsv (haproxy_exporter's
metric table) applied to the CSV cells. tests/integration/test_exporter_parity.py compares it
with haproxy_exporter itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics import parser as om_parser
from prometheus_client.parser import text_string_to_metric_families

from haproxy_egress.errors import ConfigError
from haproxy_egress.haproxy.cli import CliSocket
from haproxy_egress.haproxy.show import parse_info
from haproxy_egress.haproxy.stat import (
    BACKEND,
    FRONTEND,
    SERVER,
    StatColumns,
    StatTable,
    parse_stat,
)
from haproxy_egress.metrics.exposition import render_scrape, render_stats, wanted_columns
from haproxy_egress.metrics.families import BACKEND_FAMILIES, FRONTEND_FAMILIES, SERVER_FAMILIES
from haproxy_egress.metrics.options import ExporterOptions
from haproxy_egress.metrics.small_families import DENIED_STAGES, ScrapeCounters
from haproxy_egress.metrics.stats import HaproxySnapshot, scrape_snapshot, status_up
from haproxy_egress.metrics.status import RouterStatus
from haproxy_egress.settings import Settings
from tests.unit.metrics.previous_exposition import family_blocks

DATA = Path(__file__).parent.parent.parent / "data"
STAT = (DATA / "exporter_show_stat.csv").read_text()
INFO = (DATA / "exporter_show_info.txt").read_text()
SNAPSHOT = HaproxySnapshot(info=parse_info(INFO).fields, stat=STAT)
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


@dataclass(frozen=True)
class Reference:
    """One row of haproxy_exporter's metric table (tests/data/haproxy_exporter_metrics.tsv)."""

    name: str
    kind: str
    labels: tuple[str, ...]
    fields: tuple[tuple[int, str], ...]  # (CSV index, CSV field name)
    conversion: str  # int | ms | status

    @property
    def row_type(self) -> str:
        return self.name.split("_")[1]  # frontend | backend | server


def _reference() -> dict[str, Reference]:
    out = {}
    for line in (DATA / "haproxy_exporter_metrics.tsv").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, kind, labels, fields, conversion = line.split("\t")
        pairs = tuple((int(i), n) for i, n in (f.split(":") for f in fields.split()))
        out[name] = Reference(name, kind, tuple(labels.split(",")), pairs, conversion)
    return out


REFERENCE = _reference()
CSV_HEADER = STAT.splitlines()[0].lstrip("# ").split(",")

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


def fast_body(
    snapshot: HaproxySnapshot,
    options: ExporterOptions,
    status: RouterStatus | None = STATUS,
    openmetrics: bool = False,
) -> bytes:
    """What /metrics serves for this snapshot."""
    return render_scrape(
        snapshot, status, options, counters=ScrapeCounters(), openmetrics=openmetrics
    )


def samples_of(parsed: Parsed, family: str) -> dict[tuple[tuple[str, str], ...], float]:
    """{labels: value} of one family (sample names dropped)."""
    return {labels: value for (_, labels), value in parsed[family][2].items()}


# --- the metric tables ------------------------------------------------------------------------


def test_tables_match_the_reference_names_types_labels_and_csv_fields() -> None:
    ours = {}
    for specs, labels in (
        (FRONTEND_FAMILIES, ("frontend",)),
        (BACKEND_FAMILIES, ("backend",)),
        (SERVER_FAMILIES, ("backend", "server")),
    ):
        for spec in specs:
            coded = spec.fields[0][1] != ""
            conversion = {"int": "int", "ms": "ms", "status": "status"}[spec.conversion.value]
            ours[spec.name] = Reference(
                spec.name,
                spec.kind,
                (*labels, "code") if coded else labels,
                tuple((i, CSV_HEADER[i]) for i, _ in spec.fields),
                conversion,
            )
            if coded:  # the code label's values are the CSV field names' suffixes
                assert [c for _, c in spec.fields] == [
                    CSV_HEADER[i].removeprefix("hrsp_") for i, _ in spec.fields
                ]
    assert ours == REFERENCE
    assert len(REFERENCE) == 74


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


# --- /metrics on the recorded CSV ---------------------------------------------------------


def test_metrics_export_the_recorded_haproxy() -> None:
    parsed = parse(fast_body(SNAPSHOT, ALL))
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
    parsed = parse(fast_body(snap, ALL))
    key = (("backend", "web"), ("server", "127.0.0.1_34673"))
    assert samples_of(parsed, "haproxy_server_http_queue_time_average_seconds")[key] == 0
    assert samples_of(parsed, "haproxy_server_http_connect_time_average_seconds")[key] == 0.003
    assert samples_of(parsed, "haproxy_server_http_response_time_average_seconds")[key] == 1.5
    assert samples_of(parsed, "haproxy_server_http_total_time_average_seconds")[key] == 0.012
    assert samples_of(parsed, "haproxy_server_check_duration_seconds")[key] == 0.007


def test_policy_metrics_count_denied_per_route_and_skip_internal_proxies() -> None:
    parsed = parse(fast_body(SNAPSHOT, ALL))
    denied = samples_of(parsed, "haproxy_egress_route_denied")
    assert denied[(("route", "db"), ("stage", "connection"))] == 2
    assert denied[(("route", "web"), ("stage", "request"))] == 0
    assert {dict(k)["route"] for k in denied} == {"web", "flaky", "db", "api"}  # not _stats
    assert parsed["haproxy_egress_route_denied"][0] == "counter"


def test_router_metrics_names_and_values() -> None:
    parsed = parse(fast_body(SNAPSHOT, ALL))
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
    text = fast_body(SNAPSHOT, ALL).decode()
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
    parsed = parse(fast_body(SNAPSHOT, ALL, status=None))
    assert samples_of(parsed, "haproxy_egress_up") == {(): 0}
    assert "haproxy_egress_reloads" not in parsed
    assert samples_of(parsed, "haproxy_up") == {(): 1}


def test_socket_down_gives_haproxy_up_0_and_no_exception(tmp_path: Path) -> None:
    snapshot = scrape_snapshot(CliSocket(tmp_path / "missing.sock", 1.0).command)
    assert not snapshot.up
    parsed = parse(fast_body(snapshot, ALL))
    assert samples_of(parsed, "haproxy_up") == {(): 0}
    assert not any(name.startswith(("haproxy_server", "haproxy_frontend")) for name in parsed)
    assert samples_of(parsed, "haproxy_egress_up") == {(): 1}
    om = parse(fast_body(snapshot, ALL, openmetrics=True), openmetrics=True)
    assert samples_of(om, "haproxy_up") == {(): 0}


# --- selection options -----------------------------------------------------------------------


def test_unused_slots_are_included_on_request() -> None:
    options = ExporterOptions(None, frozenset(), include_unused_slots=True)
    up = samples_of(parse(fast_body(SNAPSHOT, options)), "haproxy_server_up")
    assert up[(("backend", "api"), ("server", "api.test_34673-2"))] == 0
    assert up[(("backend", "api"), ("server", "api.test_34673-3"))] == 0


def test_excluded_states_leave_out_those_servers() -> None:
    settings = Settings(server_exclude_states="DOWN, no check")
    options = ExporterOptions.from_settings(settings)
    assert options.server_exclude_states == {"down", "nocheck"}
    up = samples_of(parse(fast_body(SNAPSHOT, options)), "haproxy_server_up")
    assert set(up) == {
        (("backend", "web"), ("server", "127.0.0.1_34673")),
        (("backend", "flaky"), ("server", "127.0.0.1_44871")),
        (("backend", "api"), ("server", "api.test_34673-1")),
    }


def test_exclude_states_accepts_the_exporters_spelling_of_maint_resolution() -> None:
    options = ExporterOptions.from_settings(
        Settings(server_exclude_states="MAINT(resolution)", include_unused_slots=True)
    )
    up = samples_of(parse(fast_body(SNAPSHOT, options)), "haproxy_server_up")
    assert not any("api.test_34673-2" in str(k) for k in up)


def test_server_metric_fields_select_server_families() -> None:
    options = ExporterOptions.from_settings(Settings(server_metric_fields="17, 40,8"))
    assert options.server_metric_fields == frozenset({8, 17, 40})
    parsed = parse(fast_body(SNAPSHOT, options))
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


# --- the output against the reference table, through both parsers ----------------------

_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_UP = re.compile(r"UP|UP [0-9]+/[0-9]+|OPEN|no check|DRAIN|DRAIN .*")


def oracle_value(ref: Reference, cell: str) -> float | None:
    """What the reference table says a cell becomes; None: no sample (a parse failure)."""
    if ref.conversion == "status":
        return 1.0 if _UP.fullmatch(cell) else 0.0
    if ref.conversion == "ms":
        return float(cell) / 1000 if _FLOAT.fullmatch(cell) else None
    if not re.fullmatch(r"[+-]?[0-9]+", cell):
        return None
    value = int(cell)
    if ref.kind == "counter" and value < 0:
        return None  # a counter cannot go negative (OpenMetrics refuses it)
    return float(value)


def oracle(table: StatTable, options: ExporterOptions) -> tuple[Parsed, int]:
    """The per-row families the reference table makes of `table`, and the cells it refuses."""
    selected = {f.name: {i for i, _ in f.fields} for f in options.server_families()}
    unused = "MAINT (resolution)"
    servers = [
        r
        for r in table.servers
        if "".join(r[17].split()).lower() not in options.server_exclude_states
        and (options.include_unused_slots or r[17] != unused)
    ]
    rows = {"frontend": table.frontends, "backend": table.backends, "server": servers}
    out: Parsed = {}
    failures = 0
    for ref in REFERENCE.values():
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for index, field_name in ref.fields:
            if ref.row_type == "server" and index not in selected.get(ref.name, ()):
                continue
            for row in rows[ref.row_type]:
                cell = row[index]
                if not cell:
                    continue
                value = oracle_value(ref, cell)
                if value is None:
                    failures += 1
                    continue
                names = dict(
                    zip(
                        ("frontend",) if ref.row_type == "frontend" else ("backend", "server"),
                        row[:2],
                        strict=False,
                    )
                )
                if "code" in ref.labels:
                    names["code"] = field_name.removeprefix("hrsp_")
                labels = tuple(sorted((k, v) for k, v in names.items() if k in ref.labels))
                samples[(ref.name, labels)] = value
        if samples:
            family = ref.name.removesuffix("_total") if ref.kind == "counter" else ref.name
            out[family] = (ref.kind, "", samples)
    return out, failures


def per_row(parsed: Parsed) -> Parsed:
    """The per-row haproxy families of a parsed body, help left out (checked separately)."""
    prefixes = ("haproxy_frontend_", "haproxy_backend_", "haproxy_server_")
    return {
        name: (kind, "", samples)
        for name, (kind, _, samples) in parsed.items()
        if name.startswith(prefixes)
    }


def assert_matches_the_reference(
    body: bytes | str, table: StatTable, options: ExporterOptions, openmetrics: bool
) -> None:
    parsed = parse(body, openmetrics)
    expected, _ = oracle(table, options)
    assert per_row(parsed) == expected
    helps = {
        f.name.removesuffix("_total") if f.kind == "counter" else f.name: f.help
        for f in (*FRONTEND_FAMILIES, *BACKEND_FAMILIES, *SERVER_FAMILIES)
    }
    for name in expected:
        assert parsed[name][1] == helps[name]


OPTION_SETS = [
    ALL,
    ExporterOptions(None, frozenset(), include_unused_slots=True),
    ExporterOptions(frozenset({2, 17, 38, 39, 44}), frozenset({"down", "nocheck"})),
    ExporterOptions(frozenset(), frozenset()),
]


@pytest.mark.parametrize("options", OPTION_SETS)
@pytest.mark.parametrize("openmetrics", [False, True])
def test_output_is_the_reference_table_applied_to_the_csv(
    options: ExporterOptions, openmetrics: bool
) -> None:
    body = fast_body(SNAPSHOT, options, openmetrics=openmetrics)
    assert_matches_the_reference(body, parse_stat(STAT), options, openmetrics)
    assert len(parse(body, openmetrics)) > 20


def _edge_csv() -> str:
    """The recorded CSV with cells haproxy could (or could not) print."""
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
def test_odd_cells_match_the_reference(openmetrics: bool) -> None:
    snapshot = HaproxySnapshot(info=parse_info(INFO).fields, stat=_edge_csv())
    body = fast_body(snapshot, ALL, openmetrics=openmetrics)
    assert_matches_the_reference(body, parse_stat(snapshot.stat), ALL, openmetrics)
    ours = parse(body, openmetrics)
    failures = samples_of(ours, "haproxy_exporter_csv_parse_failures")
    assert failures == {(): 5.0}  # abc, ٣, -2, x, and the short row
    up = samples_of(ours, "haproxy_server_up")
    assert up[(("backend", "web"), ("server", 'we"ird\\name'))] == 1


_CELLS = st.sampled_from(["", "0", "1", "42", "-3", "+4", "007", "x", "1e3", "٣", "2.5", "1_0"])
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


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=_tables(), openmetrics=st.booleans(), unused=st.booleans())
def test_any_table_parses_and_matches_the_reference(
    table: StatTable, openmetrics: bool, unused: bool
) -> None:
    options = ExporterOptions(None, frozenset({"down"}), include_unused_slots=unused)
    parts, failures = render_stats(columns_of(table, options), options, openmetrics)
    # The per-row families only: the per-route denials print a negative cell as it is (as
    # they always did), which OpenMetrics' parser refuses in a counter.
    blocks = family_blocks("".join(parts).encode())
    text = "".join(b for n, b in blocks.items() if not n.startswith("haproxy_egress_"))
    if openmetrics:
        text += "# EOF\n"
    assert_matches_the_reference(text, table, options, openmetrics)
    denials = [
        row[i] for row in table.frontends if not row[0].startswith("_") for _, i in DENIED_STAGES
    ]
    refused = [cell for cell in denials if cell and not re.fullmatch(r"[+-]?[0-9]+", cell)]
    assert failures == oracle(table, options)[1] + len(refused)


def columns_of(table: StatTable, options: ExporterOptions) -> StatColumns:
    """What `parse_columns` makes of the CSV these rows came from."""
    rows = {FRONTEND: table.frontends, BACKEND: table.backends, SERVER: table.servers}
    return StatColumns(
        {
            row_type: {i: [row[i] for row in rows[row_type]] for i in sorted(indexes)}
            for row_type, indexes in wanted_columns(options).items()
        },
        table.failures,
    )
