"""Record a short run of a real router and render the dashboard's main panels into a PNG.

A reader of docs/monitoring.md sees what image/monitoring/dashboard.json shows without a
Grafana. Everything is real: a supervised `haproxy-egress run` (tests/router.py) behind a
kubelet-style ConfigMap volume, HTTP origins, paced client load, and a real Prometheus
(Debian's `prometheus`) that scrapes the router every second and evaluates the PrometheusRule.
The panels are the dashboard's own PromQL, variables filled in, asked of that Prometheus with
query_range; matplotlib draws them. The run (about 80 s):

    0 s   load on routes api (HTTP, rising) and db (TCP, two destinations)
   15 s   ConfigMap adds route "web"                 -> reload
   20 s   a client outside allow_from hammers "blocked" -> denied egress
   30 s   one destination of db stops                -> destination DOWN
   40 s   ConfigMap with a YAML error                -> reload rejected, old config runs
   55 s   ConfigMap fixed                            -> reload
   60 s   the destination comes back

    .venv/bin/python tools/render_dashboard.py [--out docs/img/dashboard.png] [--speed 1.0]

Needs haproxy, socklog, prometheus and matplotlib (`pip install matplotlib`). Everything
listens on 127.0.0.1; every process started is stopped by its pid.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import requests
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.kubelet import ConfigMapVolume  # noqa: E402
from tests.netns import stop_process  # noqa: E402
from tests.router import Router  # noqa: E402
from tests.support import HttpOrigin, free_port, http_get, wait_for  # noqa: E402

DASHBOARD = ROOT / "image" / "monitoring" / "dashboard.json"
RULES = ROOT / "image" / "monitoring" / "prometheusrule.yaml"
SCRAPE_SECONDS = 1
# Grafana picks $__rate_interval as 4 scrape intervals at this zoom.
VARIABLES = {
    "job": "haproxy-egress",
    "namespace": ".*",
    "pod": ".*",
    "route": ".*",
    "__rate_interval": f"{4 * SCRAPE_SECONDS}s",
}
# The panels drawn, in reading order (titles in dashboard.json).
MAIN_PANELS = (
    "Ready",
    "Last reload",
    "Reloads",
    "Sessions per second",
    "Bytes per second",
    "Errors per second",
    "Destination health",
    "Usable destinations",
    "Connect time per destination",
    "Denied per second, per route and stage",
    "Denied in the time range, per route and rule",
    "Top destinations by sessions",
)


# --- the recorded run ----------------------------------------------------------------------


@dataclass
class Events:
    """What the run did and when (unix time), drawn as markers on every panel."""

    marks: list[tuple[float, str]] = field(default_factory=list)

    def mark(self, text: str) -> None:
        self.marks.append((time.time(), text))
        print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


class PacedClient:
    """A client thread doing GETs at `rate(elapsed)` per second until stopped; errors ignored."""

    def __init__(self, port: int, rate: Callable[[float], float], path: str = "/") -> None:
        self.port, self.rate, self.path = port, rate, path
        self.ok = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> PacedClient:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            rate = self.rate(time.monotonic() - self._started)
            if rate <= 0:
                self._stop.wait(0.2)
                continue
            try:
                http_get(self.port, self.path, timeout=2)
                self.ok += 1
            except OSError:
                self.failed += 1
            self._stop.wait(1 / rate)


class Prometheus:
    """A real Prometheus on 127.0.0.1 scraping one router, with the PrometheusRule loaded."""

    def __init__(self, workdir: Path, target_port: int) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        rules = yaml.safe_load(RULES.read_text())["spec"]
        (workdir / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
        config = {
            "global": {
                "scrape_interval": f"{SCRAPE_SECONDS}s",
                "evaluation_interval": f"{SCRAPE_SECONDS}s",
            },
            "rule_files": [str(workdir / "rules.yaml")],
            "scrape_configs": [
                {
                    "job_name": "haproxy-egress",
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{target_port}"],
                            # what a ServiceMonitor scrape adds
                            "labels": {"namespace": "demo", "pod": "egress-router-0"},
                        }
                    ],
                }
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))

    def start(self) -> Prometheus:
        binary = shutil.which("prometheus")
        if binary is None:
            raise SystemExit("prometheus is not on PATH (apt-get install prometheus)")
        with open(self.workdir / "prometheus.log", "wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={self.workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: self._get("/-/ready").status_code == 200, timeout=30)
        return self

    def _get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.port}{path}", params=params, timeout=10)

    def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        answer = self._get("/api/v1/query_range", query=expr, start=start, end=end, step=1)
        body = answer.json()
        if body.get("status") != "success":
            raise RuntimeError(f"query failed: {expr}: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        body = self._get("/api/v1/query", query=expr, time=at).json()
        if body.get("status") != "success":
            raise RuntimeError(f"query failed: {expr}: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def rule_health(self) -> list[tuple[str, str]]:
        groups = self._get("/api/v1/rules").json()["data"]["groups"]
        return [(r["name"], r["health"]) for g in groups for r in g["rules"]]

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=15)


def routes(
    ports: dict[str, int], origins: dict[str, HttpOrigin], web: bool, web_timeout: str = "5s"
) -> dict[str, Any]:
    """The ConfigMap's routes.yaml: api (HTTP), db (TCP, two destinations), blocked, web."""
    fast_checks = {"interval": "1s", "rise": 2, "fall": 2}
    items: list[dict[str, Any]] = [
        {
            "name": "api",
            "listen": f"127.0.0.1:{ports['api']}",
            "mode": "http",
            "destinations": [f"127.0.0.1:{origins['a'].port}"],
            "check": fast_checks,
        },
        {
            "name": "db",
            "listen": f"127.0.0.1:{ports['db']}",
            "destinations": [f"127.0.0.1:{origins['b'].port}", f"127.0.0.1:{origins['c'].port}"],
            "check": fast_checks,
        },
        {
            "name": "blocked",
            "listen": f"127.0.0.1:{ports['blocked']}",
            "allow_from": ["127.0.0.2/32"],
            "destinations": [f"127.0.0.1:{origins['a'].port}"],
        },
    ]
    if web:
        items.append(
            {
                "name": "web",
                "listen": f"127.0.0.1:{ports['web']}",
                "mode": "http",
                "destinations": [f"127.0.0.1:{origins['a'].port}"],
                "check": fast_checks,
                "connect_timeout": web_timeout,
            }
        )
    return {"routes.yaml": {"version": 1, "routes": items}}


@contextlib.contextmanager
def running(things: list[HttpOrigin | PacedClient | Router | Prometheus]) -> Iterator[None]:
    """Stop everything in `things` (in reverse) however the block ends."""
    try:
        yield
    finally:
        for thing in reversed(things):
            with contextlib.suppress(Exception):
                thing.stop()


def record(
    workdir: Path, speed: float, things: list[Any]
) -> tuple[Prometheus, Events, float, float]:
    """Run the sequence; the Prometheus (still running) that recorded it, and the marks.

    Everything started is appended to `things` at once, for the caller to stop.
    """
    events = Events()
    origins = {k: HttpOrigin(f"origin-{k}") for k in "abc"}
    for origin in origins.values():
        things.append(origin.start())
    ports = {k: free_port() for k in ("api", "db", "blocked", "web")}
    volume = ConfigMapVolume(workdir / "configmap")
    volume.write(routes(ports, origins, web=False))
    router = Router(workdir / "router", config_dir=volume.directory, drain_seconds=2)
    things.append(router)
    router.start()
    prometheus = Prometheus(workdir, router.metrics_port)
    things.append(prometheus)
    prometheus.start()

    def at(seconds: float) -> None:
        time.sleep(max(0.0, begin + seconds / speed - time.monotonic()))

    start = time.time()
    begin = time.monotonic()
    events.mark("load starts")
    clients = [
        PacedClient(ports["api"], lambda t: 10 + 0.6 * t * speed).start(),
        PacedClient(ports["db"], lambda t: 15.0, path="/bytes/20000").start(),
    ]
    things += clients
    at(15)
    volume.write(routes(ports, origins, web=True))
    events.mark("route web added")
    things.append(PacedClient(ports["web"], lambda t: 8.0, path="/bytes/5000").start())
    at(20)
    things.append(PacedClient(ports["blocked"], lambda t: 12.0 if t < 25 / speed else 0).start())
    events.mark("denied client")
    at(30)
    down_port = origins["c"].port
    origins["c"].stop()
    events.mark("db destination stops")
    at(40)
    volume.write({"routes.yaml": "routes:\n  - name: api\n   listen: 1\n"})
    events.mark("bad ConfigMap")
    at(55)
    # Fixed forward (a real change), as an operator would after reading the log line.
    volume.write(routes(ports, origins, web=True, web_timeout="3s"))
    events.mark("ConfigMap fixed")
    at(60)
    origins["c"] = HttpOrigin("origin-c", port=down_port).start()
    things.append(origins["c"])
    events.mark("destination back")
    at(78)
    time.sleep(2 * SCRAPE_SECONDS)
    end = time.time()
    return prometheus, events, start, end


# --- rendering --------------------------------------------------------------------------------


def fill(expr: str, range_seconds: float) -> str:
    values = {**VARIABLES, "__range": f"{math.ceil(range_seconds)}s"}
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return expr


def legend(fmt: str, labels: dict[str, str]) -> str:
    text = fmt
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text or ",".join(f"{k}={v}" for k, v in labels.items() if k != "__name__")


def draw_lines(
    ax: Axes, series: list[tuple[str, list[float], list[float]]], panel: dict[str, Any]
) -> None:
    step = panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {}).get("drawStyle")
    for name, xs, ys in series:
        # All-zero series (errors that never happened) are drawn but kept out of the legend.
        label = name if any(ys) else "_nolegend_"
        if step == "bars" or panel["type"] == "stat":
            ax.step(xs, ys, where="post", label=label, linewidth=1.2)
        else:
            ax.plot(xs, ys, label=label, linewidth=1.2)
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
    if panel["type"] == "stat" or panel["fieldConfig"]["defaults"].get("mappings"):
        ax.set_ylim(-0.1, 1.1)
        ax.set_yticks([0, 1])
    elif unit:
        ax.set_ylabel(unit, fontsize=7)
    if any(any(ys) for _, _, ys in series):
        ax.legend(fontsize=6, loc="upper left", ncol=2, frameon=False)


def draw_states(ax: Axes, series: list[tuple[str, list[float], list[float]]]) -> None:
    """A state timeline: one bar per series, green while 1, red while 0."""
    for row, (_name, xs, ys) in enumerate(series):
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            width = (xs[i + 1] - x) if i + 1 < len(xs) else 1.0
            ax.barh(row, width, left=x, height=0.7, color="#56a64b" if y >= 1 else "#e02f44")
    ax.set_yticks(range(len(series)), [s[0] for s in series], fontsize=6)
    ax.invert_yaxis()


def draw_bars(ax: Axes, items: list[tuple[str, float]], unit: str) -> None:
    """A bar gauge: the biggest values first, each bar labelled with its value."""
    items = sorted(items, key=lambda kv: kv[1], reverse=True)[:10]
    rows = range(len(items))
    ax.barh(rows, [v for _, v in items], color="#5794f2")
    ax.set_yticks(rows, [k for k, _ in items], fontsize=6)
    ax.invert_yaxis()
    for row, (_label, value) in enumerate(items):
        text = f"{value / 1e6:.1f} MB" if unit == "bytes" else f"{value:.0f}"
        ax.text(value, row, f" {text}", va="center", fontsize=6)


def render(
    prometheus: Prometheus, events: Events, start: float, end: float, out: Path
) -> list[str]:
    """Draw MAIN_PANELS from Prometheus into `out`; the titles of panels that had no data."""
    dashboard = json.loads(DASHBOARD.read_text())
    by_title = {p["title"]: p for p in dashboard["panels"]}
    cols = 3
    rows = math.ceil(len(MAIN_PANELS) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(15, 3.1 * rows), squeeze=False)
    empty = []
    for ax, title in zip(axes.flat, MAIN_PANELS, strict=False):
        panel = by_title[title]
        ax.set_title(title, fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        if panel["type"] == "bargauge":
            items = []
            for target in panel["targets"]:
                for sample in prometheus.query(fill(target["expr"], end - start), end):
                    items.append(
                        (
                            legend(target["legendFormat"], sample["metric"]),
                            float(sample["value"][1]),
                        )
                    )
            draw_bars(ax, items, unit)
            if not items:
                empty.append(title)
            continue
        series = []
        for target in panel["targets"]:
            for result in prometheus.query_range(fill(target["expr"], end - start), start, end):
                xs = [float(t) - start for t, _ in result["values"]]
                ys = [float(v) for _, v in result["values"]]
                series.append((legend(target["legendFormat"], result["metric"]), xs, ys))
        if not series:
            empty.append(title)
        if panel["type"] == "state-timeline":
            draw_states(ax, series)
        else:
            draw_lines(ax, series, panel)
        for number, (when, _text) in enumerate(events.marks, 1):
            ax.axvline(when - start, color="#888888", linewidth=0.6, linestyle="--")
            ax.annotate(
                str(number),
                (when - start, 1.0),
                xycoords=("data", "axes fraction"),
                fontsize=6,
                va="bottom",
                ha="center",
                color="#555555",
            )
        ax.set_xlim(0, end - start)
    for ax in axes.flat[len(MAIN_PANELS) :]:
        ax.set_visible(False)
    marks = "   ".join(f"{n}: {text}" for n, (_, text) in enumerate(events.marks, 1))
    fig.suptitle(
        "haproxy-egress dashboard, main panels, from a recorded run (x: seconds)\n" + marks,
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    plt.close(fig)
    # A 64-colour palette keeps the committed PNG small; the plot has few colours anyway.
    image = Image.open(buffer).convert("RGB").quantize(colors=64)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)
    return empty


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "dashboard.png")
    parser.add_argument("--speed", type=float, default=1.0, help="run the sequence faster")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="render-dashboard-") as tmp:
        things: list[Any] = []
        with running(things):
            prometheus, events, start, end = record(Path(tmp), args.speed, things)
            empty = render(prometheus, events, start, end, args.out)
            broken = [(n, h) for n, h in prometheus.rule_health() if h != "ok"]
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")
    print(f"rules evaluated by Prometheus: {broken or 'all ok'}")
    if empty:
        print(f"panels without data: {', '.join(empty)}")
    return 1 if empty or broken else 0


if __name__ == "__main__":
    sys.exit(main())
