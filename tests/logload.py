"""Load for the log path: a fast origin (haproxy answering from memory) and wrk with a new
connection per request, shared by tests/integration/test_logs_lossless.py and bench/logs.py."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.netns import stop_process
from tests.support import free_port, wait_for

ORIGIN_CFG = """global
    nbthread 1
    maxconn 4000
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend origin
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain string ok
"""


@dataclass
class FastOrigin:
    """An HTTP origin far faster than the router path: a haproxy answering "ok" from memory
    (a Python origin serves ~700 connections/s and would measure itself, not the router)."""

    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FastOrigin:
        self.port = free_port()
        cfg = Path(tempfile.mkdtemp(prefix="fast-origin-")) / "origin.cfg"
        cfg.write_text(ORIGIN_CFG.format(port=self.port))
        self.proc = subprocess.Popen(
            ["haproxy", "-db", "-f", str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def up() -> bool:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return True
            return False

        wait_for(up, 10)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None


@dataclass(frozen=True)
class WrkResult:
    """What wrk reports: completed requests (each on its own connection) and errors."""

    requests: int
    seconds: float
    errors: str

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def wrk_close(port: int, seconds: float, connections: int = 32) -> WrkResult:
    """`wrk -t1 -c32 -dNs -H "Connection: close"`: a new TCP connection per request."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s"]
    argv += ["-H", "Connection: close", f"http://127.0.0.1:{port}/"]
    out = subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=seconds + 30
    ).stdout
    found = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if found is None:
        raise RuntimeError(f"wrk printed no summary: {out[-400:]}")
    took = float(found.group(2)) / (1000 if found.group(3) == "ms" else 1)
    errors = re.search(r"Socket errors:.*", out)
    return WrkResult(int(found.group(1)), took, errors.group(0) if errors else "")
