"""`haproxy-egress run` as a real subprocess, the way a kubelet or `docker run` starts it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import requests
from prometheus_client.parser import text_string_to_metric_families

from haproxy_egress.haproxy.cli import CliSocket
from haproxy_egress.haproxy.show import parse_show_proc
from tests.netns import stop_process
from tests.support import HAPROXY, HttpOrigin, free_port, loopback_route, wait_for


class _Stoppable(Protocol):
    def stop(self) -> None: ...


S = TypeVar("S", bound=_Stoppable)


def stopped_after(started: list[S]) -> Iterator[list[S]]:
    """The body of a fixture: yields `started`, where the test appends what it starts, then
    stops each of them (each stops its own process, by its pid)."""
    yield started
    for s in started:
        s.stop()


def http_route(name: str, port: int, origin: HttpOrigin, **extra: Any) -> dict[str, Any]:
    """A YAML route: an http route on 127.0.0.1:`port` in front of one test origin."""
    return loopback_route(name, port, origin.port, **extra)


def web_route(port: int, *origins: HttpOrigin, allow: list[str] | None = None) -> dict[str, Any]:
    """The YAML route "web": http on 127.0.0.1:`port` to `origins`, with `allow_from` if given."""
    route = loopback_route("web", port, *(o.port for o in origins))
    if allow:
        route["allow_from"] = allow
    return route


@dataclass
class Router:
    """A supervised router with its own run dir, metrics port and captured output."""

    workdir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    config_dir: Path | None = None
    drain_seconds: float = 5.0
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0

    @property
    def run_dir(self) -> Path:
        return self.workdir / "run"

    @property
    def stdout_path(self) -> Path:
        return self.workdir / "stdout.log"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / "stderr.log"

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def start(self, wait_ready: bool = True, stdout: IO[bytes] | None = None) -> Router:
        """Start it; its stdout goes to `stdout_path`, or to `stdout` (e.g. a pipe a test
        reads slowly) when given."""
        self.metrics_port = self.metrics_port or free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin:/usr/sbin:/sbin"),
            "EGRESS_RUN_DIR": str(self.run_dir),
            "SCRAPER_TCP_PORT": str(self.metrics_port),
            "METRICS_ADDRESS": "127.0.0.1",
            "EGRESS_DRAIN_SECONDS": str(self.drain_seconds),
            "EGRESS_RELOAD_DEBOUNCE": "0.2",
            "EGRESS_POLL_SECONDS": "2",
            # The haproxy the test session runs (2.6 here, 3.0 as the image has it).
            "EGRESS_HAPROXY_BIN": HAPROXY,
            **self.env,
        }
        if self.config_dir is not None:
            env["EGRESS_CONFIG_DIR"] = str(self.config_dir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as files:
            out = stdout or files.enter_context(open(self.stdout_path, "wb"))
            err = files.enter_context(open(self.stderr_path, "wb"))
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "haproxy_egress.cli", "run"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        if wait_ready:
            try:
                self.wait_ready()
            except BaseException:
                self.stop()  # a router that never became ready must not outlive the test
                raise
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"router exited {self.proc.returncode}: {self.stderr()}")
            return requests.get(self.url("/readyz"), timeout=1).status_code == 200

        wait_for(ready, timeout)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def _proc_pid(self, kind: str) -> int:
        master = CliSocket(self.run_dir / "master.sock", master=True)

        def ask() -> int:
            # The master CLI is briefly away while the master re-executes for a reload.
            procs = parse_show_proc(master.command("show proc"))
            return next(p.pid for p in procs if p.kind == kind)

        return wait_for(ask, timeout=10)

    def master_pid(self) -> int:
        return self._proc_pid("master")

    def worker_pid(self) -> int:
        return self._proc_pid("worker")

    def metric(
        self, name: str, labels: Mapping[str, str] | None = None, timeout: float = 5
    ) -> float | None:
        """One sample's value from /metrics, parsed with prometheus_client's parser."""
        text = requests.get(self.url("/metrics"), timeout=timeout).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in (labels or {}).items()
                ):
                    return float(sample.value)
        return None

    def stop(self) -> None:
        """Teardown: SIGTERM, then SIGKILL of the whole tree if it does not go."""
        if self.proc is None:
            return
        stop_process(self.proc, grace=self.drain_seconds + 10)
        _kill_leftovers(self.run_dir)
        self.proc = None


def _kill_leftovers(run_dir: Path) -> None:
    """Processes of this router (haproxy, socklog) that outlived it, after a failed test."""
    needle = str(run_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
    time.sleep(0.05)
