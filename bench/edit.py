"""In-process CPU of one runtime edit at 10, 1,000 and 10,000 routes, stage by stage.

    .venv/bin/python bench/edit.py [--sizes 10,1000,10000] [--edits 10]

What the supervisor does between the watcher's event and the runtime API, without haproxy:
read the ConfigMap (the kubelet's layout, the routes of bench/scale.py), load and validate,
render, diff, and install the files (those before the apply and the haproxy.cfg written
after it); between edits the text is kept deflated, as the supervisor keeps it, and
inflated by a thread of its own as the edit begins (its CPU counts in this process's, in
whichever stage it ran). Each stage is timed in CPU seconds of this process
(`time.process_time`), which moves far less than wall time when other jobs compete for
the cores; the medians of `--edits` edits that move one route's destination are printed,
with the RSS of this process after the start-up compile and after the edits (its heap, as
the supervisor's, is trimmed after each change).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.compile import route_keys
from haproxy_egress.config.sources import gc_paused, read_inputs
from haproxy_egress.config.tlsmaterial import material_paths_of
from haproxy_egress.render.compiler import RenderOptions
from haproxy_egress.render.pipeline import Compiled, compile_current, compile_snapshot
from haproxy_egress.render.stages import Stages
from haproxy_egress.runtime import changes, memory
from haproxy_egress.runtime.reload import Install, install
from haproxy_egress.settings import Settings
from tests.kubelet import ConfigMapVolume

MB = 2**20


class _CpuStages(Stages):
    """Stages timed in this process's CPU seconds."""

    def __init__(self) -> None:
        super().__init__()
        self._mark = time.process_time()

    def lap(self, name: str) -> None:
        now = time.process_time()
        self.laps.append((name, now - self._mark))
        self._mark = now


def _rss() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / MB


def _web(port: int) -> dict[str, object]:
    route = {"name": "web", "listen": "127.0.0.1:8080", "destinations": [f"127.0.0.1:{port}"]}
    return {"version": 1, "routes": [route | {"mode": "http", "check": False}]}


def measure(n: int, work: Path, edits: int) -> tuple[dict[str, list[float]], float, float]:
    """Per-stage CPU seconds of each edit; RSS (MB) after start and after the edits."""
    keys: dict[str, object] = dict(route_keys(n, mode="tcp", address="127.77.0.1", check=False))
    volume = ConfigMapVolume(work / "cm")
    volume.write({**keys, "web.yaml": _web(1)})
    settings = Settings(config_dir=volume.directory, run_dir=work / "run")
    settings.run_dir.mkdir()
    options = RenderOptions(run_dir=settings.run_dir)
    memory.map_large_blocks()
    current = compile_current(settings, options)
    install(settings, current.text, current.maps, current.tls_files)
    current.pack()  # as the supervisor does once a change is done (render/packed.py)
    memory.settle()
    started = _rss()
    laps: dict[str, list[float]] = {}
    for i in range(edits):
        volume.write({**keys, "web.yaml": _web(2 + i % 2)})
        current = _edit(settings, options, current, laps)
        current.pack()
        memory.after_change()
    return laps, started, _rss()


def _edit(
    settings: Settings, options: RenderOptions, current: Compiled, laps: dict[str, list[float]]
) -> Compiled:
    stages = _CpuStages()
    current.unpack_soon()  # as the supervisor does when a change begins
    with gc_paused():
        snapshot = read_inputs(settings, material_paths_of(current.config))
        stages.lap("read")
        new = compile_snapshot(settings, options, snapshot, stages)
        changes.plan(current, new, runtime=True)
        stages.lap("diff")
        installing = Install(settings, new.text, new.maps, new.tls_files, live_text=current.text)
        stages.lap("files")
        # (the runtime API would apply the edit here)
        installing.commit()
        stages.lap("write")
    for name, seconds in stages.laps:
        laps.setdefault(name, []).append(seconds)
    return new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1000,10000")
    parser.add_argument("--edits", type=int, default=10)
    args = parser.parse_args()
    print("CPU ms per stage (median of the edits); before the apply: read .. files")
    with tempfile.TemporaryDirectory(prefix="bench-edit.") as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            work = Path(tmp) / str(n)
            work.mkdir()
            laps, started, after = measure(n, work, args.edits)
            stages = ", ".join(f"{k} {statistics.median(v) * 1000:.1f}" for k, v in laps.items())
            before = sum(statistics.median(v) for k, v in laps.items() if k != "write")
            print(
                f"{n:>6} routes: {stages} | before the apply {before * 1000:.1f}"
                f" | RSS {started:.1f} -> {after:.1f} MB"
            )


if __name__ == "__main__":
    main()
