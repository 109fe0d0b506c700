"""The metrics endpoint against real haproxy processes: /metrics, /healthz, /readyz.

Each test renders a config with the project's compiler, runs haproxy on it, and scrapes a
MetricsServer bound to a free port on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as om_parser
from prometheus_client.parser import text_string_to_metric_families

from haproxy_egress.config.sources import Snapshot, load_snapshot
from haproxy_egress.haproxy.cli import CliSocket
from haproxy_egress.metrics.http import MetricsServer, accepts_gzip, wants_openmetrics
from haproxy_egress.metrics.options import ExporterOptions
from haproxy_egress.metrics.stats import scrape_snapshot
from haproxy_egress.metrics.status import RouterStatus
from haproxy_egress.render import hooks
from haproxy_egress.render.compiler import RenderOptions, render
from haproxy_egress.render.maps import pattern_files
from haproxy_egress.rundir import RunDir
from haproxy_egress.runtime import staging
from tests.router import http_route
from tests.support import DnsServer, HaproxyProcess, HttpOrigin, free_port, http_get, wait_for
from tests.unit.metrics.test_exporter import ALL
from tests.unit.metrics.test_exporter import STATUS as UNIT_STATUS

# The unit tests' router status, with the single route every haproxy here is started with.
STATUS = replace(UNIT_STATUS, config_routes=1)
T = TypeVar("T")
# prometheus_client's OpenMetrics parser carries no annotations; it has its text parser's type.
openmetrics_families: Callable[[str], Iterable[Metric]] = om_parser.text_string_to_metric_families
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}


@contextlib.contextmanager
def running_haproxy(
    run_dir: Path, doc: Mapping[str, object], env: Mapping[str, str] | None = None
) -> Iterator[Path]:
    """haproxy on the compiled config of `doc`; yields its stats socket once it answers."""
    snapshot = Snapshot(run_dir, (("routes.yaml", yaml.safe_dump(dict(doc)).encode()),))
    config = load_snapshot(snapshot, env or {})
    path = run_dir / "haproxy.cfg"
    path.write_text(render(config, RenderOptions(run_dir=run_dir, log_stdout=True)))
    staging.write_maps(RunDir(run_dir).maps, pattern_files(config))
    haproxy = HaproxyProcess(path).start()
    proc = haproxy.proc
    sock = run_dir / "haproxy.sock"
    try:
        wait_for(lambda: scrape_snapshot(CliSocket(sock, 1.0).command).up)
        yield sock
    finally:
        haproxy.stop()
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()  # HaproxyProcess leaves its stderr pipe open


@contextlib.contextmanager
def serving(
    sock: Path,
    status: Callable[[], RouterStatus] = lambda: STATUS,
    options: ExporterOptions = ALL,
    address: str = "127.0.0.1",
) -> Iterator[MetricsServer]:
    """A started MetricsServer on a free port, reading the socket as the supervisor's does
    (`show stat` streamed); stopped afterwards."""
    cli = CliSocket(sock, options.scrape_timeout)
    server = MetricsServer(address, 0, cli.command, status, options, stream=cli.stream)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class Reply:
    """One HTTP answer."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        """The body, gunzipped if it came compressed."""
        raw = gzip.decompress(self.body) if self.headers.get("content-encoding") else self.body
        return raw.decode()


def get(
    port: int,
    path: str = "/metrics",
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
    host: str = "127.0.0.1",
) -> Reply:
    """One request with exactly the given headers (no client defaults like gzip)."""
    conn = http.client.HTTPConnection(host, port, timeout=15)
    try:
        conn.request(method, path, headers=dict(headers or {}))
        response = conn.getresponse()
        return Reply(
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        conn.close()


def samples(
    text: str, openmetrics: bool = False
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} of an exposition body."""
    parser = openmetrics_families if openmetrics else text_string_to_metric_families
    return {
        (s.name, frozenset(s.labels.items())): s.value for fam in parser(text) for s in fam.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    """One sample's value, or None when the series is absent."""
    return samples(text).get((name, frozenset(labels.items())))


@pytest.fixture
def web_route(run_dir: Path, origin: HttpOrigin) -> Iterator[tuple[Path, int]]:
    """haproxy with one http route to the origin; yields (stats socket, route port)."""
    port = free_port()
    doc = {"routes": [http_route("web", port, origin)]}
    with running_haproxy(run_dir, doc) as sock:
        yield sock, port


# --- /metrics ------------------------------------------------------------------------------


def test_metrics_serves_haproxy_and_router_metrics(web_route: tuple[Path, int]) -> None:
    sock, port = web_route
    for _ in range(3):
        assert http_get(port, "/") == "origin-a"
    with serving(sock) as server:
        reply = get(server.port)
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "content-encoding" not in reply.headers
    text = reply.text
    assert value(text, "haproxy_up") == 1
    assert value(text, "haproxy_frontend_http_requests_total", frontend="web") == 3
    assert value(text, "haproxy_backend_up", backend="web") == 1
    assert value(text, "haproxy_egress_up") == 1
    assert value(text, "haproxy_egress_config_routes") == 1
    assert value(text, "process_resident_memory_bytes") is not None


def test_prometheus_headers_get_gzipped_openmetrics(web_route: tuple[Path, int]) -> None:
    sock, _ = web_route
    with serving(sock) as server:
        reply = get(server.port, headers=PROMETHEUS_HEADERS)
        plain = get(server.port)
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert reply.headers["content-encoding"] == "gzip"
    assert len(reply.body) * 3 < len(plain.body)
    text = reply.text
    assert text.endswith("# EOF\n")
    om = samples(text, openmetrics=True)
    assert om[("haproxy_up", frozenset())] == 1
    assert om[("haproxy_backend_sessions_total", frozenset({("backend", "web")}))] == 0
    # the same series as the plain text format, whatever the encoding
    stable = {k for k in samples(plain.text) if not k[0].startswith(("process_", "haproxy_exp"))}
    assert stable <= set(om)


def test_a_scrape_after_traffic_shows_it_though_the_last_scrape_kept_its_pieces(
    web_route: tuple[Path, int],
) -> None:
    """The pieces kept from the last scrape are taken again only for cells that did not
    change: the counters of a route that saw traffic since are printed anew."""
    sock, port = web_route
    with serving(sock) as server:
        first = get(server.port).text
        gzipped_first = get(server.port, headers={"Accept-Encoding": "gzip"}).text
        for _ in range(2):
            assert http_get(port, "/") == "origin-a"
        second = get(server.port).text
        gzipped_second = get(server.port, headers={"Accept-Encoding": "gzip"}).text
        kept = server.scraper.cached_blocks()
    assert value(first, "haproxy_frontend_http_requests_total", frontend="web") == 0
    assert value(second, "haproxy_frontend_http_requests_total", frontend="web") == 2
    assert value(second, "haproxy_backend_sessions_total", backend="web") == 2
    assert value(gzipped_first, "haproxy_frontend_http_requests_total", frontend="web") == 0
    assert value(gzipped_second, "haproxy_frontend_http_requests_total", frontend="web") == 2
    assert kept == 1  # one route: its rows are one block


def test_two_scrapes_at_once_each_get_a_whole_body(web_route: tuple[Path, int]) -> None:
    sock, port = web_route
    assert http_get(port, "/") == "origin-a"
    with serving(sock) as server:
        alone = samples(get(server.port).text)
        threads, replies = _in_threads(
            4, lambda: get(server.port, headers={"Accept-Encoding": "gzip"})
        )
        for t in threads:
            t.join(15)
    assert len(replies) == 4
    haproxy = {
        k: v for k, v in alone.items() if k[0].startswith(("haproxy_frontend", "haproxy_backend"))
    }
    for reply in replies:
        assert reply.status == 200
        got = samples(reply.text)
        assert {k: got[k] for k in haproxy} == haproxy


def test_head_index_and_unknown_paths(web_route: tuple[Path, int]) -> None:
    sock, _ = web_route
    with serving(sock) as server:
        head = get(server.port, method="HEAD")
        index = get(server.port, "/")
        missing = get(server.port, "/nope")
    assert head.status == 200
    assert head.body == b""
    assert int(head.headers["content-length"]) > 1000
    assert b"/metrics" in index.body
    assert missing.status == 404


def test_socket_down_still_answers_with_haproxy_up_0(tmp_path: Path) -> None:
    with serving(tmp_path / "no-haproxy.sock") as server:
        reply = get(server.port)
    assert reply.status == 200
    assert value(reply.text, "haproxy_up") == 0
    assert value(reply.text, "haproxy_egress_up") == 1
    assert not any(name.startswith("haproxy_server_") for name, _ in samples(reply.text))


# --- /healthz and /readyz ----------------------------------------------------------------


def test_health_and_readiness_follow_the_router_status(tmp_path: Path) -> None:
    current: list[RouterStatus] = [STATUS]

    def status() -> RouterStatus:
        if not current:
            raise RuntimeError("supervisor gone")
        return current[0]

    with serving(tmp_path / "no-haproxy.sock", status) as server:
        assert get(server.port, "/healthz").status == 200
        assert get(server.port, "/readyz").status == 200
        current[0] = replace(STATUS, ready=False)
        assert get(server.port, "/healthz").status == 200
        assert get(server.port, "/readyz").status == 503
        current[0] = replace(STATUS, alive=False, ready=False)
        assert get(server.port, "/healthz").status == 503
        assert value(get(server.port).text, "haproxy_egress_up") == 0
        current.clear()
        assert get(server.port, "/healthz").status == 503
        assert get(server.port, "/readyz").status == 503
        reply = get(server.port)
        assert reply.status == 200
        assert value(reply.text, "haproxy_egress_up") == 0


# --- a wedged stats socket ---------------------------------------------------------------


@dataclass(frozen=True)
class Wedged:
    """A unix socket that accepts connections and never answers (a wedged haproxy)."""

    path: Path
    held: list[socket.socket]  # the connections it accepted, in order


@pytest.fixture
def wedged(tmp_path: Path) -> Iterator[Wedged]:
    """A wedged stats socket, closed with every connection it holds afterwards."""
    path = tmp_path / "wedged.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(16)
    server.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield Wedged(path, held)
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def test_wedged_socket_read_is_bounded_by_the_timeout(wedged: Wedged) -> None:
    start = time.monotonic()
    snapshot = scrape_snapshot(CliSocket(wedged.path, 0.5).command)
    elapsed = time.monotonic() - start
    assert not snapshot.up
    assert "timed out" in snapshot.error
    assert elapsed > 0.4  # it waited the timeout out, and then returned


def _in_threads(count: int, call: Callable[[], T]) -> tuple[list[threading.Thread], list[T]]:
    """Start `count` threads each running `call`; their results are appended as they finish."""
    results: list[T] = []
    threads = [threading.Thread(target=lambda: results.append(call())) for _ in range(count)]
    for t in threads:
        t.start()
    return threads, results


def test_wedged_socket_neither_blocks_health_nor_hangs_the_scrape(wedged: Wedged) -> None:
    options = replace(ALL, scrape_timeout=1.5)
    with serving(wedged.path, options=options) as server:
        start = time.monotonic()
        (scrape,), result = _in_threads(1, lambda: get(server.port))
        time.sleep(0.2)
        assert get(server.port, "/healthz").status == 200
        # /healthz answered while the scrape still waited on the wedged socket.
        assert scrape.is_alive()
        scrape.join(10)
        elapsed = time.monotonic() - start
    assert result, "the scrape never returned"
    assert elapsed > 1.4  # it gave up at its timeout, not before
    assert value(result[0].text, "haproxy_up") == 0


def test_too_many_concurrent_scrapes_are_turned_away(wedged: Wedged) -> None:
    options = replace(ALL, scrape_timeout=2.0)
    with serving(wedged.path, options=options) as server:
        threads, results = _in_threads(4, lambda: get(server.port).status)
        wait_for(lambda: len(wedged.held) >= 4, timeout=5)
        extra = get(server.port)
        for t in threads:
            t.join(10)
    assert extra.status == 503
    assert results == [200, 200, 200, 200]


# --- policy metrics ----------------------------------------------------------------------


def test_denied_egress_is_counted_per_route(run_dir: Path, origin: HttpOrigin) -> None:
    open_port, locked_port = free_port(), free_port()
    doc = {
        "routes": [
            {
                "name": "open",
                "listen": f"127.0.0.1:{open_port}",
                "destinations": [f"127.0.0.1:{origin.port}"],
            },
            {
                "name": "locked",
                "listen": f"127.0.0.1:{locked_port}",
                "destinations": [f"127.0.0.1:{origin.port}"],
                "allow_from": ["198.18.0.0/15"],  # not us: every connection is refused
            },
        ]
    }
    with running_haproxy(run_dir, doc) as sock, serving(sock) as server:
        for _ in range(3):
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", locked_port), timeout=2) as conn,
            ):
                conn.recv(1)
        assert http_get(open_port, "/") == "origin-a"
        text = get(server.port).text
    denied = "haproxy_egress_route_denied_total"
    assert value(text, denied, route="locked", stage="connection") == 3
    assert value(text, denied, route="open", stage="connection") == 0
    assert value(text, denied, route="open", stage="request") == 0


# --- server-template slots ---------------------------------------------------------------


def test_unused_template_slots_are_left_out_unless_asked(run_dir: Path, dns: DnsServer) -> None:
    origin = HttpOrigin("slot").start()
    dns.records["api.test"] = ["127.0.0.1"]
    slots = http_route(
        "api", free_port(), origin, destinations=[f"api.test:{origin.port}"], dns_slots=3
    )
    doc = {"resolvers": {"nameservers": [f"127.0.0.1:{dns.port}"]}, "routes": [slots]}
    name = f"api.test_{origin.port}"
    try:
        with running_haproxy(run_dir, doc) as sock:
            wait_for(lambda: f"{name}-1,0,0" in scrape_snapshot(CliSocket(sock, 1.0).command).stat)
            wait_for(
                lambda: (
                    ",UP,"
                    in scrape_snapshot(CliSocket(sock, 1.0).command).stat.split(f"{name}-1,")[1]
                )
            )
            with serving(sock) as default:
                text = get(default.port).text
            with serving(sock, options=replace(ALL, include_unused_slots=True)) as full:
                text_all = get(full.port).text
    finally:
        origin.stop()
    assert value(text, "haproxy_server_up", backend="api", server=f"{name}-1") == 1
    assert value(text, "haproxy_server_up", backend="api", server=f"{name}-2") is None
    assert value(text_all, "haproxy_server_up", backend="api", server=f"{name}-2") == 0
    assert value(text_all, "haproxy_server_up", backend="api", server=f"{name}-3") == 0


# --- the server itself -------------------------------------------------------------------


def test_stop_closes_the_port_and_port_0_picks_one(tmp_path: Path) -> None:
    server = MetricsServer(
        "127.0.0.1", 0, CliSocket(tmp_path / "x.sock", 5.0).command, lambda: STATUS, ALL
    )
    server.start()
    port = server.port
    assert port > 0
    assert get(port, "/healthz").status == 200
    server.stop()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_ipv6_loopback(tmp_path: Path) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.fail("no IPv6 loopback on this host: the router must serve ::1 too")
    with serving(tmp_path / "x.sock", address="::1") as server:
        assert get(server.port, "/healthz", host="::1").status == 200


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", False),
        ("*/*", False),
        ("text/plain;version=0.0.4", False),
        (PROMETHEUS_HEADERS["Accept"], True),
        ("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;q=0.8", False),
        ("application/openmetrics-text; version=1.0.0", True),
        ("application/openmetrics-text;q=0", False),
    ],
)
def test_accept_negotiation(accept: str, expected: bool) -> None:
    assert wants_openmetrics(accept) is expected


def test_accept_encoding() -> None:
    assert accepts_gzip("gzip")
    assert accepts_gzip("deflate, gzip;q=0.5")
    assert not accepts_gzip("")
    assert not accepts_gzip("gzip;q=0")
    assert not accepts_gzip("identity")


def test_policy_decisions_are_counted_per_rule(run_dir: Path, dns: DnsServer) -> None:
    """A proxy route's refusal shows in haproxy_egress_policy_decisions_total."""
    port = free_port()
    doc = {
        "resolvers": {"nameservers": [f"127.0.0.1:{dns.port}"]},
        "routes": [
            {
                "name": "pxy",
                "listen": f"127.0.0.1:{port}",
                "mode": "proxy",
                "policy": ["allowed.test"],
            }
        ],
    }
    snapshot = Snapshot(run_dir, (("routes.yaml", yaml.safe_dump(doc).encode()),))
    staging.stage(hooks.resolve(load_snapshot(snapshot, {})), RunDir(run_dir).lua)  # connect.lua
    with running_haproxy(run_dir, doc) as sock, serving(sock) as server:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"GET http://denied.test/ HTTP/1.1\r\nHost: denied.test\r\n\r\n")
            assert c.recv(4096).startswith(b"HTTP/1.1 403")

        def denied() -> float | None:
            text = get(server.port, "/metrics").text
            return value(
                text,
                "haproxy_egress_policy_decisions_total",
                route="pxy",
                group="default",
                rule="default",
                verdict="deny",
            )

        assert wait_for(denied, timeout=5) == 1.0
