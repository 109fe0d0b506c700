"""A bare policy proxy on loopback for integration tests: compile a ConfigMap document with the
project's loader, stage connect.lua and the policy map files as the reload transaction does,
`haproxy -c`, run haproxy (stopped by its pid), and read its decision log and counters."""

from __future__ import annotations

import functools
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from haproxy_egress.config.document import Config
from haproxy_egress.config.sources import load_snapshot
from haproxy_egress.config.sources.configdir import Snapshot
from haproxy_egress.haproxy.check import check
from haproxy_egress.haproxy.cli import CliSocket
from haproxy_egress.haproxy.show import EMPTY_SERVER_STATE
from haproxy_egress.metrics.decisions import COMMAND, parse_table
from haproxy_egress.render import hooks
from haproxy_egress.render.compiler import RenderOptions, render
from haproxy_egress.render.maps import render_maps
from haproxy_egress.rundir import RunDir
from haproxy_egress.runtime import staging
from haproxy_egress.settings import PROXY_USERS_ENV
from tests.support import HAPROXY, wait_for


@dataclass
class PolicyProxy:
    """haproxy running one compiled document; `log` collects its decision lines."""

    directory: Path
    doc: dict[str, Any]
    config: Config | None = None
    proc: subprocess.Popen[bytes] | None = None
    ports: list[int] = field(default_factory=list)
    users: bytes | None = None  # the proxy users file (EGRESS_PROXY_USERS_FILE), if any
    env: dict[str, str] = field(default_factory=dict)  # e.g. HTTPS_PROXY for `parent: env`

    @property
    def run(self) -> RunDir:
        return RunDir(self.directory / "run")

    @property
    def log(self) -> Path:
        return self.directory / "haproxy.log"

    def start(self) -> PolicyProxy:
        data = yaml.safe_dump(self.doc, sort_keys=False).encode()
        users = (f"{PROXY_USERS_ENV} (test)", self.users) if self.users is not None else None
        snapshot = Snapshot(self.directory, (("routes.yaml", data),), users=users)
        self.config = load_snapshot(snapshot, self.env)
        run = self.run
        run.root.mkdir(parents=True, exist_ok=True)
        hook_set = hooks.resolve(self.config).including(hooks.shipped_lua("connect"))
        staging.stage(hook_set, run.lua)
        staging.write_maps(run.maps, render_maps(self.config))
        text = render(self.config, RenderOptions(run.root, log_stdout=True), hooks=hook_set)
        run.config.write_text(text)
        run.server_state.write_text(EMPTY_SERVER_STATE)
        check(run.config, HAPROXY)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(run.config)], stdout=out, stderr=out
            )
        try:
            for route in self.config.routes:
                wait_for(functools.partial(self._settled, route.listen.port), timeout=60)
                if self.proc.poll() is not None:
                    output = self.log.read_text(errors="replace")
                    raise RuntimeError(f"haproxy exited ({self.proc.returncode}):\n{output}")
        except BaseException:
            self.stop()  # a proxy that never came up must not outlive the test
            raise
        return self

    def _settled(self, port: int) -> bool:
        """`port` accepts, or haproxy exited (no use waiting then)."""
        assert self.proc is not None
        return self.proc.poll() is not None or _accepts(port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def decisions(self) -> list[dict[str, str]]:
        """Every decision log line as its `key=value` fields."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if " egress route=" in line:
                tail = line.split(" egress ", 1)[1].split()
                out.append(dict(f.split("=", 1) for f in tail if "=" in f))
        return out

    def counters(self) -> dict[tuple[str, str, str, str], int]:
        """The decision counters (route, group, rule, verdict) from `show table`."""
        return parse_table(CliSocket(self.run.stats_socket, timeout=5).command(COMMAND))


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def proxy_configmap(directory: Path, dns_port: int, port: int, policy: str) -> Path:
    """A ConfigMap dir with one proxy route `pxy` on 127.0.0.1:`port`, resolving through the
    loopback DNS server; `policy` is the YAML after `policy:` (inline list or block lines)."""
    directory.mkdir()
    (directory / "proxy.yaml").write_text(
        f"resolvers: {{nameservers: ['127.0.0.1:{dns_port}']}}\n"
        "routes:\n"
        "  - name: pxy\n"
        f"    listen: '127.0.0.1:{port}'\n"
        "    mode: proxy\n"
        f"    policy:{policy}"
    )
    return directory


def exchange(port: int, request: bytes, source: str = "127.0.0.1", timeout: float = 5) -> bytes:
    """Send one request from `source` to the proxy and read until it closes."""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
    ) as s:
        s.sendall(request)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return data


def get(port: int, authority: str, source: str = "127.0.0.1") -> bytes:
    """An absolute-URI GET through the proxy, `Connection: close`."""
    head = f"GET http://{authority}/ HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n"
    return exchange(port, f"{head}\r\n".encode(), source)


def connect_head(
    port: int, authority: str, source: str = "127.0.0.1"
) -> tuple[socket.socket, bytes]:
    """Open a CONNECT tunnel; returns the socket and the response head (b"" if closed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    try:
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return s, head


def connect_reply(port: int, authority: str, source: str = "127.0.0.1") -> bytes:
    """The response head to a CONNECT; the connection is closed again."""
    s, head = connect_head(port, authority, source)
    s.close()
    return head
