"""A network-namespace test bed: client ns → router ns → external host ns, over veth pairs.

    client  198.18.1.2 ──veth── 198.18.1.1  router  198.18.2.1 ──veth── 198.18.2.2  external
                                                  (+ extra        (+ extra "hosts"
                                                   source addrs)   198.18.2.10, .11, ...)

Only addresses from 198.18.0.0/15 (RFC 2544 benchmarking) are used, and only inside namespaces
made here, so no packet can leave the machine. Names are unique per bed (prefix + pid + random)
so parallel runs do not collide, and `close()` stops every process the bed started (by pid)
before it deletes the namespaces, which also deletes their veths, addresses and any NAT rules.

The router namespace does not forward unless asked (set explicitly: a new namespace copies
the host's ip_forward):
whatever reaches an external host from the client went through a proxy in the router. The
default routes exist so that `forwarding(True)` gives a plain routed path (a "direct"
baseline) and kernel DNAT can be tried in benchmarks.

Python servers and clients run in a namespace with `with ns.entered(): ...`: sockets belong to
the namespace they were created in, whichever thread later uses them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeVar

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)


class _Startable(Protocol[_T_co]):
    def start(self) -> _T_co: ...


CLIENT_IP = "198.18.1.2"
ROUTER_CLIENT_IP = "198.18.1.1"
ROUTER_EXTERNAL_IP = "198.18.2.1"
EXTERNAL_IP = "198.18.2.2"
PREFIX_LEN = 24
FIRST_EXTRA_HOST = 10  # 198.18.2.10 upwards: further "external hosts" on the external ns
FIRST_EXTRA_SOURCE = 100  # 198.18.2.100 upwards: extra router addresses (egress source IPs)

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
# setns() changes the namespace of the calling thread only; the lock keeps two threads of the
# test process from interleaving their enter/leave pairs on the same thread state.
_setns_lock = threading.RLock()


def available() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root for ip netns"
    try:
        subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"ip netns unusable: {exc}"
    return None


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@dataclass
class Netns:
    """One named network namespace (`ip netns add`), and ways to run things inside it."""

    name: str

    @property
    def path(self) -> Path:
        """The bind mount `ip netns` keeps for it."""
        return Path("/run/netns") / self.name

    def argv(self, argv: Sequence[str]) -> list[str]:
        """A command line that runs `argv` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, *argv: str, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a short command inside the namespace; raise with its output when it fails."""
        proc = subprocess.run(
            self.argv(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} in {self.name} failed ({proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the block's socket calls inside this namespace (this thread only), then return."""
        with _setns_lock:
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            target = os.open(self.path, os.O_RDONLY)
            try:
                _setns(target)
                try:
                    yield
                finally:
                    _setns(home)
            finally:
                os.close(target)
                os.close(home)

    def connectable(self, host: str, port: int, timeout: float = 0.5) -> bool:
        """True when a TCP connect from this namespace to host:port succeeds."""
        with self.entered(), socket.socket() as s:
            s.settimeout(timeout)
            return s.connect_ex((host, port)) == 0

    def connect(self, host: str, port: int, timeout: float = 5.0) -> socket.socket:
        """A TCP connection made from this namespace (usable from anywhere afterwards)."""
        with self.entered():
            return socket.create_connection((host, port), timeout=timeout)


@dataclass
class Started:
    """A process the bed started, with where its output goes."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        """What it wrote so far (stdout and stderr together)."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class TestBed:
    """Three namespaces in a row, with veth links, addresses and default routes."""

    workdir: Path
    prefix: str = "he"
    client: Netns = field(init=False)
    router: Netns = field(init=False)
    external: Netns = field(init=False)
    processes: list[Started] = field(default_factory=list)
    _extra_hosts: int = 0
    _extra_sources: int = 0
    _created: list[Netns] = field(default_factory=list)

    __test__ = False  # not a pytest test class, despite the name

    def __post_init__(self) -> None:
        tag = f"{self.prefix}{os.getpid()}{secrets.token_hex(3)}"
        self.client = Netns(f"{tag}-c")
        self.router = Netns(f"{tag}-r")
        self.external = Netns(f"{tag}-x")

    # --- set up and tear down ---------------------------------------------------------------

    def __enter__(self) -> TestBed:
        try:
            self.setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def setup(self) -> None:
        """Create the namespaces, links, addresses and routes."""
        for ns in (self.client, self.router, self.external):
            _ip("netns", "add", ns.name)
            self._created.append(ns)
            ns.run("ip", "link", "set", "lo", "up")
        # The veth ends are created directly inside their namespaces, so no name ever appears
        # in the host namespace (where other test runs could hold the same one).
        _ip(
            "link",
            "add",
            "to-router",
            "netns",
            self.client.name,
            "type",
            "veth",
            "peer",
            "name",
            "to-client",
            "netns",
            self.router.name,
        )
        _ip(
            "link",
            "add",
            "to-external",
            "netns",
            self.router.name,
            "type",
            "veth",
            "peer",
            "name",
            "to-router",
            "netns",
            self.external.name,
        )
        self._addr(self.client, "to-router", CLIENT_IP)
        self._addr(self.router, "to-client", ROUTER_CLIENT_IP)
        self._addr(self.router, "to-external", ROUTER_EXTERNAL_IP)
        self._addr(self.external, "to-router", EXTERNAL_IP)
        self.client.run("ip", "route", "add", "default", "via", ROUTER_CLIENT_IP)
        self.external.run("ip", "route", "add", "default", "via", ROUTER_EXTERNAL_IP)
        # A new namespace copies ip_forward from the host's, which may well be 1.
        self.forwarding(False)

    def close(self) -> None:
        """Stop every process the bed started, then delete its namespaces."""
        for started in reversed(self.processes):
            stop_process(started.proc)
        self.processes.clear()
        for ns in reversed(self._created):
            # Processes started by others inside the namespace would keep it alive: kill them
            # by pid (only pids inside our own namespaces are listed).
            pids = subprocess.run(
                ["ip", "netns", "pids", ns.name],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(
                ["ip", "netns", "del", ns.name], capture_output=True, timeout=10, check=False
            )
        self._created.clear()

    # --- addresses ----------------------------------------------------------------------------

    @staticmethod
    def _addr(ns: Netns, dev: str, ip: str) -> None:
        ns.run("ip", "addr", "add", f"{ip}/{PREFIX_LEN}", "dev", dev)
        ns.run("ip", "link", "set", dev, "up")

    def add_external_host(self) -> str:
        """One more address on the external namespace: another "host" on the internet."""
        ip = f"198.18.2.{FIRST_EXTRA_HOST + self._extra_hosts}"
        self._extra_hosts += 1
        self.external.run("ip", "addr", "add", f"{ip}/32", "dev", "to-router")
        return ip

    def add_router_source(self) -> str:
        """One more address on the router's external side, as a macvlan attachment or an egress
        IP would give the pod: the address EGRESS_SOURCE names."""
        ip = f"198.18.2.{FIRST_EXTRA_SOURCE + self._extra_sources}"
        self._extra_sources += 1
        # nodad: usable at once (no IPv6 here, but the flag costs nothing and avoids surprises).
        self.router.run("ip", "addr", "add", f"{ip}/32", "dev", "to-external", "nodad")
        return ip

    def forwarding(self, on: bool) -> None:
        """Let the router namespace route between client and external (a direct path)."""
        self.router.run("sysctl", "-qw", f"net.ipv4.ip_forward={1 if on else 0}")

    # --- processes ------------------------------------------------------------------------------

    def start(self, ns: Netns, argv: Sequence[str], name: str | None = None) -> Started:
        """Start a long-running process inside `ns`; the bed stops it on close."""
        label = name or Path(argv[0]).name
        log = self.workdir / f"{ns.name}-{label}-{len(self.processes)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ns.argv(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        started = Started(label, proc, log)
        self.processes.append(started)
        return started

    def stop(self, started: Started) -> None:
        """Stop one process early (it is then forgotten)."""
        stop_process(started.proc)
        if started in self.processes:
            self.processes.remove(started)


@contextlib.contextmanager
def no_reverse_dns() -> Iterator[None]:
    """Keep http.server's bind from asking the system resolver for the address's name.

    `HTTPServer.server_bind` calls `socket.getfqdn(address)`: for a 198.18.x.x address that is
    a PTR query to the host's (non-loopback) DNS server, which from inside a test namespace
    cannot even be reached and times out after 10s. The name is only used in error pages.
    """
    original = socket.getfqdn
    socket.getfqdn = lambda name="": name
    try:
        yield
    finally:
        socket.getfqdn = original


def start_in(ns: Netns, server: _Startable[_T]) -> _T:
    """Start a Python test server (e.g. tests.support.HttpOrigin) inside `ns`."""
    with ns.entered(), no_reverse_dns():
        return server.start()


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; always reaps."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)


def _ip(*argv: str) -> None:
    proc = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)} failed: {proc.stderr.strip()}")


def wait_port(
    ns: Netns, host: str, port: int, timeout: float = 10.0, proc: Started | None = None
) -> None:
    """Wait until host:port accepts connections from `ns`; fail early if `proc` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"{proc.name} exited ({proc.proc.returncode}): {proc.output()}")
        if ns.connectable(host, port):
            return
        time.sleep(0.05)
    detail = f"; {proc.name} said: {proc.output()[-2000:]}" if proc else ""
    raise AssertionError(f"{host}:{port} not reachable from {ns.name} within {timeout}s{detail}")
