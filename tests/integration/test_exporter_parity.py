"""Parity with the real thing: Debian's prometheus-haproxy-exporter (0.14) on the same haproxy.

Both exporters scrape one haproxy; ours is scraped just before and just after theirs, so a
value that moved in between must lie between our two readings (nothing sends traffic during
the scrapes, so in practice they are equal). Families, types, help texts and label sets must be
identical, apart from the documented differences: the exporter's own build info and Go runtime
metrics, our haproxy_egress_* and process metrics, and the fixed defects (tested separately).
Also `promtool check metrics` must have nothing to say about our output.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from haproxy_egress.haproxy.cli import CliSocket
from haproxy_egress.haproxy.stat import parse_stat
from haproxy_egress.metrics.options import ExporterOptions
from haproxy_egress.metrics.stats import scrape_snapshot
from haproxy_egress.settings import Settings
from tests.integration.test_exporter_http import (
    PROMETHEUS_HEADERS,
    get,
    openmetrics_families,
    running_haproxy,
    serving,
)
from tests.netns import stop_process
from tests.support import HttpOrigin, free_port, http_get, port_open, wait_for
from tests.unit.metrics.previous_exposition import assert_renders_as_before
from tests.unit.metrics.test_exporter import ALL, OPTION_SETS

EXPORTER = "prometheus-haproxy-exporter"
# Not part of the comparison: the exporter's own build and Go runtime metrics, and ours.
THEIRS_ONLY = ("go_", "process_", "promhttp_", "haproxy_exporter_build_info")
OURS_ONLY = ("haproxy_egress_", "process_", "python_")
VOLATILE = {"haproxy_server_check_duration_seconds"}  # the last check's duration, any value

Families = dict[str, tuple[str, str, dict[frozenset[tuple[str, str]], float]]]


def families(text: str, skip: tuple[str, ...]) -> Families:
    """{family: (type, help, {labels: value})} without the families named by `skip`."""
    out: Families = {}
    for fam in text_string_to_metric_families(text):
        if fam.name.startswith(skip):
            continue
        out[fam.name] = (
            fam.type,
            fam.documentation,
            {frozenset(s.labels.items()): s.value for s in fam.samples},
        )
    return out


@contextlib.contextmanager
def real_exporter(scrape_uri: str, *flags: str) -> Iterator[int]:
    """prometheus-haproxy-exporter on a free port; stopped by its pid afterwards."""
    binary = shutil.which(EXPORTER)
    assert binary, f"{EXPORTER} is not installed (Debian package prometheus-haproxy-exporter)"
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--web.listen-address=127.0.0.1:{port}",
            f"--haproxy.scrape-uri={scrape_uri}",
            "--log.level=error",
            *flags,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: port_open(port))
        yield port
    finally:
        stop_process(proc, 5)


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """haproxy with http, tcp, refusing and failing routes and some traffic behind it."""
    run_dir = tmp_path_factory.mktemp("parity") / "run"
    run_dir.mkdir(mode=0o700)
    up, other = HttpOrigin("up").start(), HttpOrigin("other").start()
    dead = free_port()
    web, tcp, locked, stats = free_port(), free_port(), free_port(), free_port()
    doc = {
        "routes": [
            {
                "name": "web",
                "listen": f"127.0.0.1:{web}",
                "mode": "http",
                "destinations": [f"127.0.0.1:{up.port}", f"127.0.0.1:{dead}"],
                "check": {"interval": "200ms", "fall": 1, "http_path": "/"},
            },
            {
                "name": "tcp",
                "listen": f"127.0.0.1:{tcp}",
                "destinations": [f"127.0.0.1:{other.port}"],
                "check": False,
            },
            {
                "name": "locked",
                "listen": f"127.0.0.1:{locked}",
                "destinations": [f"127.0.0.1:{other.port}"],
                "allow_from": ["198.18.0.0/15"],
            },
        ]
    }
    try:
        stats_env = {"STATS_PORT": str(stats), "STATS_USER": "scraper", "STATS_PASSWORD": "pw"}
        with running_haproxy(run_dir, doc, stats_env) as sock:
            wait_for(lambda: ",DOWN," in scrape_snapshot(CliSocket(sock, 1.0).command).stat)
            # Each check duration series appears with its server's first check (the default
            # interval is 2s): before that the two exporters' readings could differ in series.
            wait_for(lambda: _checks_done(sock), timeout=10)
            for _ in range(4):
                assert http_get(web, "/") in ("up", "")
                assert http_get(tcp, "/") == "other"
            with contextlib.suppress(OSError):
                http_get(locked, "/")
            yield sock, stats
    finally:
        up.stop()
        other.stop()


def _checks_done(sock: Path) -> bool:
    """Every server with health checks has completed one (its check_duration is set)."""
    header, *rows = scrape_snapshot(CliSocket(sock, 1.0).command).stat.splitlines()
    names = header.lstrip("# ").split(",")
    status, duration = names.index("check_status"), names.index("check_duration")
    servers = [r.split(",") for r in rows if r and r.split(",")[1] not in ("FRONTEND", "BACKEND")]
    return all(f[duration] != "" for f in servers if f[status] != "")


def status_of(sock: Path) -> str:
    """The status of the first server haproxy reports."""
    return parse_stat(scrape_snapshot(CliSocket(sock, 1.0).command).stat).servers[0][17]


def compare(ours_before: Families, theirs: Families, ours_after: Families) -> None:
    """Same families, types, help and series; every value within our two readings."""
    only_ours, only_theirs = set(ours_before) - set(theirs), set(theirs) - set(ours_before)
    assert not only_ours, only_ours
    assert not only_theirs, only_theirs
    for name, (kind, help_, series) in theirs.items():
        our_kind, our_help, before = ours_before[name]
        after = ours_after[name][2]
        assert (our_kind, our_help) == (kind, help_), name
        assert set(before) == set(series), name
        if name in VOLATILE:
            continue
        for labels, value in series.items():
            low, high = sorted((before[labels], after[labels]))
            assert low <= value <= high, (name, dict(labels), before[labels], value, after[labels])


def scrape_three(our_port: int, their_port: int) -> tuple[Families, Families, Families]:
    """Ours, theirs, ours again: a bracket around their reading."""
    before = families(get(our_port).text, OURS_ONLY)
    theirs = families(get(their_port).text, THEIRS_ONLY)
    after = families(get(our_port).text, OURS_ONLY)
    return before, theirs, after


@pytest.mark.parametrize("via", ["socket", "http"])
def test_same_series_as_haproxy_exporter(router: tuple[Path, int], via: str) -> None:
    sock, stats_port = router
    uri = f"unix:{sock}" if via == "socket" else f"http://scraper:pw@127.0.0.1:{stats_port}/;csv"
    with serving(sock) as ours, real_exporter(uri) as theirs:
        before, their_families, after = scrape_three(ours.port, theirs)
    if via == "http":
        # haproxy_exporter reads `show info` only over the socket
        for fams in (before, after):
            del fams["haproxy_version_info"]
    compare(before, their_families, after)
    assert len(their_families) > 60
    assert their_families["haproxy_up"][2] == {frozenset(): 1.0}


def test_same_selection_as_haproxy_exporter(router: tuple[Path, int]) -> None:
    sock, _ = router
    options = ExporterOptions.from_settings(
        Settings(server_metric_fields="2,8,17,40,44", server_exclude_states="DOWN")
    )
    flags = ("--haproxy.server-metric-fields=2,8,17,40,44", "--haproxy.server-exclude-states=DOWN")
    with serving(sock, options=options) as ours, real_exporter(f"unix:{sock}", *flags) as theirs:
        before, their_families, after = scrape_three(ours.port, theirs)
    compare(before, their_families, after)
    servers = {name for name in their_families if name.startswith("haproxy_server_")}
    assert servers == {
        "haproxy_server_current_queue",
        "haproxy_server_bytes_in",
        "haproxy_server_up",
        "haproxy_server_http_responses",
    }
    assert all(v == 1 for v in their_families["haproxy_server_up"][2].values())


def test_socket_down_like_haproxy_exporter(tmp_path: Path) -> None:
    sock = tmp_path / "nothing.sock"
    with serving(sock) as ours, real_exporter(f"unix:{sock}") as theirs:
        before, their_families, _ = scrape_three(ours.port, theirs)
    assert their_families["haproxy_up"][2] == {frozenset(): 0.0}
    assert set(before) == set(their_families)
    assert before["haproxy_up"] == their_families["haproxy_up"]


def test_up_n_of_m_is_up_where_haproxy_exporter_says_down(run_dir: Path) -> None:
    """The fixed defect: "UP 9/10" (checks failing, server still serving) counts as up."""
    origin = HttpOrigin("flaky").start()
    doc = {
        "routes": [
            {
                "name": "flaky",
                "listen": f"127.0.0.1:{free_port()}",
                "destinations": [f"127.0.0.1:{origin.port}"],
                "check": {"interval": "1s", "rise": 1, "fall": 10},
            }
        ]
    }
    server = f"127.0.0.1_{origin.port}"
    labels = frozenset({("backend", "flaky"), ("server", server)})
    try:
        with running_haproxy(run_dir, doc) as sock:
            wait_for(
                lambda: (
                    f"{server},0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,"
                    in scrape_snapshot(CliSocket(sock, 1).command).stat
                )
            )
            origin.stop()
            wait_for(lambda: "/10," in scrape_snapshot(CliSocket(sock, 1).command).stat, timeout=5)
            with serving(sock) as ours, real_exporter(f"unix:{sock}") as theirs:
                before, their_families, _ = scrape_three(ours.port, theirs)
            assert status_of(sock).startswith("UP ")  # still "UP n/10" after the scrapes
    finally:
        origin.stop()
    assert their_families["haproxy_server_up"][2][labels] == 0
    assert before["haproxy_server_up"][2][labels] == 1
    assert before["haproxy_backend_up"] == their_families["haproxy_backend_up"]


def test_openmetrics_body_has_haproxy_exporters_families(router: tuple[Path, int]) -> None:
    """What Prometheus actually scrapes (OpenMetrics, gzip), read by prometheus_client's
    OpenMetrics parser: the same families, types, help and series as haproxy_exporter's."""
    sock, _ = router
    with serving(sock) as ours, real_exporter(f"unix:{sock}") as theirs:
        body = get(ours.port, headers=PROMETHEUS_HEADERS).text
        their_families = families(get(theirs).text, THEIRS_ONLY)
    assert body.endswith("# EOF\n")
    ours_om: Families = {}
    for fam in openmetrics_families(body):
        if fam.name.startswith(OURS_ONLY):
            continue
        if fam.type == "info":
            # OpenMetrics types *_info as info; the text format calls it a gauge
            fam.name, fam.type = fam.name + "_info", "gauge"
        series = {
            frozenset(s.labels.items()) for s in fam.samples if not s.name.endswith("_created")
        }
        ours_om[fam.name] = (fam.type, fam.documentation, dict.fromkeys(series, 0.0))
    assert set(ours_om) == set(their_families)
    for name, (kind, help_, their_series) in their_families.items():
        assert ours_om[name][:2] == (kind, help_), name
        assert set(ours_om[name][2]) == set(their_series), name


def test_promtool_finds_nothing_to_complain_about(router: tuple[Path, int]) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (Debian package prometheus)"
    sock, _ = router
    with serving(sock, options=replace(ALL, include_unused_slots=True)) as ours:
        body = get(ours.port).body
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == b""


@pytest.mark.parametrize("openmetrics", [False, True])
def test_renders_a_live_answer_as_the_previous_renderer(
    router: tuple[Path, int], openmetrics: bool
) -> None:
    """The column-wise renderer against the row-by-row one it replaced, on this haproxy's
    answer (2.6, or 3.0 with EGRESS_HAPROXY_BIN): same families, byte for byte."""
    sock, _ = router
    snapshot = scrape_snapshot(CliSocket(sock, 5.0).command)
    assert snapshot.up
    for options in OPTION_SETS:
        assert_renders_as_before(snapshot, options, openmetrics)
