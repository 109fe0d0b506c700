"""Benchmark: our /metrics vs haproxy_exporter vs PROMEX against one haproxy, in one run.

haproxy runs a config rendered by the project's compiler with 100 routes x 10 servers (1,000
servers, mode http, no checks) plus a PROMEX frontend. Three scrape targets read it:

  ours      haproxy_egress.metrics.http.MetricsServer in its own (supervisor-like) process
  exporter  Debian's prometheus-haproxy-exporter 0.14 on the stats socket
  promex    `http-request use-service prometheus-exporter` inside haproxy

With --tls, three more targets in the same interleaved rounds, each its own MetricsServer
process under an exporter-toolkit web-config (EC P-256 certificate made with openssl):

  ours-tls          TLS, the connection kept alive (as Prometheus scrapes)
  ours-tls-auth     TLS and basic auth (bcrypt cost 10; verdicts cached)
  ours-tls-newconn  TLS, a new connection and handshake for every scrape

Each round scrapes every target once, in turn, over keep-alive connections; two header sets:
"plain" (no Accept, no Accept-Encoding) and "prometheus" (Prometheus' default Accept and
Accept-Encoding: gzip). Reported: p50/p99 latency, body bytes, samples, CPU per scrape of the
serving process and of haproxy, ratios, and the RSS of our process.

    .venv/bin/python bench/exporter.py [--rounds 60] [--routes 100] [--servers 10] [--tls]
    .venv/bin/python bench/exporter.py --tcp-routes 10000 [--haproxy /usr/local/bin/haproxy30]
                                       [--ours-from DIR] [--compare DIR] [--no-exporter]
                                       [--rounds 10]

--tcp-routes N serves N tcp routes instead (bench/scale.py's: two servers each, no checks, on
127.77.26.1): what /metrics costs at 10, 1,000 and 10,000 routes. --ours-from runs `ours` from
another source tree (e.g. `git archive <commit> | tar -x -C DIR`), to compare before and after
on the same haproxy and in the same run as haproxy_exporter; --compare DIR adds
`ours-compared` from another tree to the same interleaved rounds (before and after side by
side on a busy machine), --no-exporter leaves haproxy_exporter out.

Bounded: at most --rounds rounds and --max-seconds wall time. Needs haproxy and
prometheus-haproxy-exporter on PATH. Everything listens on 127.0.0.1; every process started
is stopped by its pid.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.compile import route_keys  # noqa: E402
from haproxy_egress.config.sources import Snapshot, load_snapshot  # noqa: E402
from haproxy_egress.render.compiler import RenderOptions, render  # noqa: E402
from haproxy_egress.render.maps import pattern_files  # noqa: E402
from haproxy_egress.runtime import staging  # noqa: E402
from tests.netns import stop_process  # noqa: E402
from tests.tlscerts import make_pki  # noqa: E402

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
HEADER_SETS = {
    "plain": {},
    "prometheus": {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"},
}
TICKS = os.sysconf("SC_CLK_TCK")
# `ours` runs with -P: the package comes from PYTHONPATH (--ours-from), not from the cwd.
OURS = (sys.executable, "-P", "-c")
TIMEOUT = 180.0  # one scrape; haproxy_exporter at 10,000 routes takes tens of seconds
TCP_ADDRESS = "127.77.26.1"  # --tcp-routes listeners: a loopback address of their own

SERVER_SCRIPT = textwrap.dedent(
    """
    import signal, sys, threading, time
    from pathlib import Path
    from haproxy_egress.metrics.options import ExporterOptions
    from haproxy_egress.metrics.status import RouterStatus
    from haproxy_egress.metrics.http import MetricsServer
    from haproxy_egress.haproxy.cli import CliSocket

    status = RouterStatus(
        alive=True, ready=True, reloads_total=0, reload_failures_total=0,
        last_reload_successful=True, last_reload_success_timestamp=time.time(),
        config_digest="0" * 64, config_routes=int(sys.argv[3]),
        child_restarts={"haproxy": 0, "socklog": 0}, start_time=time.time(),
    )
    options = ExporterOptions(server_metric_fields=None, server_exclude_states=frozenset())
    port, sock = int(sys.argv[1]), Path(sys.argv[2])
    query = CliSocket(sock, options.scrape_timeout).command
    web = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    # An older tree (--ours-from) has no streamed scrape.
    streamed = {}
    if hasattr(CliSocket, "stream"):
        streamed["stream"] = CliSocket(sock, options.scrape_timeout).stream
    server = MetricsServer(
        "127.0.0.1", port, query, lambda: status, options, web_config=web, **streamed
    )
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    late = []

    def ticker():
        # Stands in for the supervisor loop: how late does a 5 ms sleep wake up while the
        # scrapes run in other threads of this process?
        while not stop.is_set():
            start = time.perf_counter()
            time.sleep(0.005)
            late.append(time.perf_counter() - start - 0.005)

    threading.Thread(target=ticker, daemon=True).start()
    print("ready", flush=True)
    stop.wait()
    server.stop()
    late.sort()
    print("ticker", late[len(late) // 2], late[int(len(late) * 0.99)], late[-1], flush=True)
    """
)


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    """Resident set size in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def haproxy_config(
    run_dir: Path, routes: int, servers: int, promex_port: int, tcp_routes: int = 0
) -> str:
    """The compiler's config for routes x servers (or `tcp_routes` as bench/scale.py's), plus
    a PROMEX frontend."""
    if tcp_routes:
        keys = route_keys(tcp_routes, mode="tcp", address=TCP_ADDRESS, check=False)
        files = tuple((name, text.encode()) for name, text in keys.items())
    else:
        files = (("routes.yaml", yaml.safe_dump(http_routes(routes, servers)).encode()),)
    snapshot = Snapshot(run_dir, files)
    config = load_snapshot(snapshot, {})
    options = RenderOptions(run_dir=run_dir, log_stdout=True)
    staging.write_maps(options.run.maps, pattern_files(config))  # the routes' allow_from lists
    text = render(config, options)
    return text + textwrap.dedent(
        f"""
        frontend _promex
            bind 127.0.0.1:{promex_port}
            mode http
            no log
            http-request use-service prometheus-exporter if {{ path /metrics }}
        """
    )


def http_routes(routes: int, servers: int) -> dict[str, object]:
    """`routes` http routes of `servers` loopback destinations each (never contacted)."""
    base = free_port()
    listen: set[int] = set()
    while len(listen) < routes:  # free_port() may hand out a port twice
        listen.add(free_port())
    ports = sorted(listen)
    return {
        "routes": [
            {
                "name": f"route-{r:03d}",
                "listen": f"127.0.0.1:{ports[r]}",
                "mode": "http",
                "check": False,
                "destinations": [f"127.0.0.1:{base + s}" for s in range(servers)],
            }
            for r in range(routes)
        ]
    }


@dataclass
class Target:
    """One scrape target and its measurements."""

    name: str
    port: int
    pid: int  # the process that does the work (haproxy itself for PROMEX)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    hap_cpu: dict[str, float] = field(default_factory=dict)
    size: dict[str, int] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)
    conn: http.client.HTTPConnection | None = None
    tls: ssl.SSLContext | None = None
    auth: dict[str, str] = field(default_factory=dict)
    new_connection: bool = False  # close after each scrape: every scrape pays a handshake

    def scrape(self, headers: dict[str, str]) -> tuple[float, bytes, str]:
        """One GET /metrics on the kept-alive connection; (seconds, body, content-encoding).
        A kept-alive connection the target closed while others were scraped (an idle timeout:
        at 10,000 routes a round takes seconds) is opened again, once."""
        try:
            return self._scrape(headers)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return self._scrape(headers)

    def _scrape(self, headers: dict[str, str]) -> tuple[float, bytes, str]:
        start = time.perf_counter()
        if self.conn is None:
            if self.tls is not None:
                self.conn = http.client.HTTPSConnection(
                    "127.0.0.1", self.port, timeout=TIMEOUT, context=self.tls
                )
            else:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        self.conn.request("GET", "/metrics", headers={**headers, **self.auth})
        response = self.conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"{self.name}: HTTP {response.status}")
        if self.new_connection or response.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        return elapsed, body, response.getheader("Content-Encoding", "")


def count_samples(body: bytes, encoding: str) -> int:
    """Sample lines in a (possibly gzipped) exposition body."""
    if encoding == "gzip":
        body = zlib.decompress(body, 31)
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.contextmanager
def process(
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a child for the duration of the block; stopped by its pid afterwards."""
    proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=stderr)
    try:
        yield proc
    finally:
        stop_process(proc, grace=10)


def tls_targets(
    run_dir: Path, sock: Path, routes: int, env: dict[str, str], stack: contextlib.ExitStack
) -> list[Target]:
    """Our endpoint under three web-configs, each in its own process like `ours`."""
    pki = make_pki(run_dir / "pki")
    server = {"cert_file": str(pki.server[0]), "key_file": str(pki.server[1])}
    hashed = bcrypt.hashpw(b"bench-pw", bcrypt.gensalt(10)).decode()
    token = base64.b64encode(b"prometheus:bench-pw").decode()
    client = ssl.create_default_context(cafile=str(pki.ca))
    out = []
    for name, doc, auth, new in (
        ("ours-tls", {"tls_server_config": server}, {}, False),
        (
            "ours-tls-auth",
            {"tls_server_config": server, "basic_auth_users": {"prometheus": hashed}},
            {"Authorization": f"Basic {token}"},
            False,
        ),
        ("ours-tls-newconn", {"tls_server_config": server}, {}, True),
    ):
        web = run_dir / f"{name}.yml"
        web.write_text(yaml.safe_dump(doc))
        port = free_port()
        argv = [*OURS, SERVER_SCRIPT, str(port), str(sock), str(routes), str(web)]
        proc = stack.enter_context(process(argv, env=env, stdout=subprocess.DEVNULL))
        out.append(Target(name, port, proc.pid, tls=client, auth=auth, new_connection=new))
    return out


def compared(
    args: argparse.Namespace, sock: Path, env: dict[str, str], stack: contextlib.ExitStack
) -> Target:
    """`ours` run from another source tree (--compare), as its own process."""
    port = free_port()
    argv = [*OURS, SERVER_SCRIPT, str(port), str(sock), str(args.routes)]
    proc = stack.enter_context(process(argv, env=env, stdout=subprocess.DEVNULL))
    return Target("ours-compared", port, proc.pid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--routes", type=int, default=100)
    parser.add_argument("--servers", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=240.0)
    parser.add_argument("--tls", action="store_true", help="also our endpoint under TLS")
    parser.add_argument(
        "--tcp-routes",
        type=int,
        default=0,
        help="instead of routes x servers: N tcp routes as bench/scale.py's (2 servers each)",
    )
    parser.add_argument("--haproxy", default="haproxy", help="the haproxy binary to run")
    parser.add_argument(
        "--ours-from",
        type=Path,
        default=ROOT,
        help="the source tree `ours` imports haproxy_egress from (an older commit's, to compare)",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        help="also `ours-compared`, from this source tree, in the same interleaved rounds",
    )
    parser.add_argument(
        "--no-exporter",
        action="store_true",
        help="leave out haproxy_exporter (seconds of CPU per scrape at 10,000 routes)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-exporter-") as tmp:
        run_dir = Path(tmp)
        promex_port, ours_port, exporter_port = free_port(), free_port(), free_port()
        config = run_dir / "haproxy.cfg"
        text = haproxy_config(run_dir, args.routes, args.servers, promex_port, args.tcp_routes)
        config.write_text(text)
        sock = run_dir / "haproxy.sock"
        env = {**os.environ, "PYTHONPATH": str(args.ours_from)}
        with (
            process([args.haproxy, "-db", "-f", str(config)], stdout=subprocess.DEVNULL) as hap,
            process(
                [
                    "true" if args.no_exporter else "prometheus-haproxy-exporter",
                    f"--web.listen-address=127.0.0.1:{exporter_port}",
                    f"--haproxy.scrape-uri=unix:{sock}",
                    "--haproxy.timeout=60s",  # 10,000 routes take it seconds
                    "--log.level=error",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ) as exporter,
            process(
                [*OURS, SERVER_SCRIPT, str(ours_port), str(sock), str(args.routes)],
                env=env,
                stdout=subprocess.PIPE,
            ) as ours,
            contextlib.ExitStack() as tls_stack,
        ):
            targets = [Target("ours", ours_port, ours.pid)]
            if args.compare is not None:
                targets.append(
                    compared(args, sock, {**env, "PYTHONPATH": str(args.compare)}, tls_stack)
                )
            if not args.no_exporter:
                targets.append(Target("haproxy_exporter", exporter_port, exporter.pid))
            targets.append(Target("promex", promex_port, hap.pid))
            if args.tls:
                targets += tls_targets(run_dir, sock, args.routes, env, tls_stack)
            for t in targets:
                wait_port(t.port, timeout=180)  # 10,000 routes: haproxy starts in ~20 s
            deadline = time.monotonic() + args.max_seconds
            for label, headers in HEADER_SETS.items():
                for t in targets:  # warm-up, and the body sizes
                    _, body, enc = t.scrape(headers)
                    t.size[label] = len(body)
                    t.samples[label] = count_samples(body, enc)
                    t.latencies[label] = []
                    t.cpu[label] = 0.0
                    t.hap_cpu[label] = 0.0
                for _ in range(args.rounds):
                    if time.monotonic() > deadline:
                        break
                    for t in targets:
                        before, hap_before = cpu_seconds(t.pid), cpu_seconds(hap.pid)
                        elapsed, _, _ = t.scrape(headers)
                        t.cpu[label] += cpu_seconds(t.pid) - before
                        t.hap_cpu[label] += cpu_seconds(hap.pid) - hap_before
                        t.latencies[label].append(elapsed)
            ours_rss = rss_mb(ours.pid)
            exporter_rss = 0.0 if args.no_exporter else rss_mb(exporter.pid)
            for t in targets:
                if t.conn is not None:
                    t.conn.close()
            ours.send_signal(signal.SIGTERM)
            out, _ = ours.communicate(timeout=10)
            ticker = [float(v) * 1000 for v in out.decode().split("ticker")[-1].split()]

    report(targets, args, ours_rss, exporter_rss)
    print(
        f"ticker thread in our process (5 ms sleeps, lateness): p50 {ticker[0]:.2f} ms, "
        f"p99 {ticker[1]:.2f} ms, max {ticker[2]:.2f} ms"
    )
    return 0


def report(
    targets: list[Target], args: argparse.Namespace, ours_rss: float, exp_rss: float
) -> None:
    """Print the table and the ratios the issue's goals are stated in."""
    if args.tcp_routes:
        print(
            f"haproxy {args.haproxy} with {args.tcp_routes} tcp routes x 2 servers; "
            f"ours from {args.ours_from}"
        )
    else:
        servers = args.routes * args.servers
        print(f"haproxy with {args.routes} backends x {args.servers} servers = {servers} servers")
    print(
        "| headers | target | samples | bytes | p50 ms | p99 ms | CPU ms/scrape (server) "
        "| CPU ms/scrape (haproxy) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label in HEADER_SETS:
        for t in targets:
            n = len(t.latencies[label]) or 1
            own = t.cpu[label] / n * 1000
            hap = t.hap_cpu[label] / n * 1000
            if t.name == "promex":
                own = hap  # PROMEX runs inside haproxy: its CPU is haproxy's
            print(
                f"| {label} | {t.name} | {t.samples[label]} | {t.size[label]} "
                f"| {pct(t.latencies[label], 0.5) * 1000:.1f} "
                f"| {pct(t.latencies[label], 0.99) * 1000:.1f} | {own:.1f} | {hap:.1f} |"
            )
    print()
    by = {t.name: t for t in targets}
    for label in HEADER_SETS:
        ours = statistics.median(by["ours"].latencies[label])
        promex = statistics.median(by["promex"].latencies[label])
        line = f"{label}: p50 ours/promex = {ours / promex:.2f} (goal <= 2)"
        if "haproxy_exporter" in by:
            exp = statistics.median(by["haproxy_exporter"].latencies[label])
            line += f", ours/haproxy_exporter = {ours / exp:.2f} (goal <= 0.5)"
        if "ours-compared" in by:
            other = statistics.median(by["ours-compared"].latencies[label])
            line += f", ours/ours-compared = {ours / other:.2f}"
        print(line)
    if "ours-tls" in by:
        for label in HEADER_SETS:
            plain = statistics.median(by["ours"].latencies[label])
            for name in ("ours-tls", "ours-tls-auth", "ours-tls-newconn"):
                cost = statistics.median(by[name].latencies[label])
                print(
                    f"{label}: p50 {name}/ours = {cost / plain:.2f} "
                    f"({(cost - plain) * 1000:+.1f} ms)"
                )
    exporter = "" if args.no_exporter else f", haproxy_exporter {exp_rss:.1f} MB"
    print(f"RSS: ours (supervisor-like process) {ours_rss:.1f} MB (goal <= 60){exporter}")
    print(f"rounds: {len(by['ours'].latencies['plain'])} per header set")


if __name__ == "__main__":
    sys.exit(main())
