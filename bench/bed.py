"""The benchmarks' shared test bed: origins, load generators, kernel DNAT and process costs.

bench/datapath.py, bench/policy_proxy.py and bench/peers.py all measure in the namespaces of
tests/netns.py (client → router → external host, 198.18.0.0/15 only). This module holds what
they share, so a fix to how a rate is measured reaches every table at once:

- origins in the external namespace: a haproxy answering "ok" from memory (a Python origin
  would be the bottleneck, not the proxies), iperf3, and a sendfile server for large downloads;
- load generators run in the client namespace, each bounded in time: `wrk`, `iperf`,
  `download` (curl) and `connect_rate` (CONNECT + one request, or one request per connection);
- `dnat`: an nftables DNAT + SNAT rule in the router namespace, what redirect mode did;
- `Costs`: CPU seconds and resident memory of a process and all its children (nginx workers).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.netns import (
    EXTERNAL_IP,
    ROUTER_CLIENT_IP,
    Netns,
    Started,
    TestBed,
    available,
    wait_port,
)
from tests.support import HAPROXY

T = TypeVar("T")

SMALL_PORT = 8000  # haproxy origin: tiny responses from memory
PROXY_ORIGIN_PORT = 80  # the same haproxy origin, where forward proxies send www.good.test
IPERF_PORT = 5201
FILE_PORT = 8080  # sendfile origin: the large download
ORIGIN_PORTS = (PROXY_ORIGIN_PORT, SMALL_PORT, IPERF_PORT, FILE_PORT)

ORIGIN_CFG = """global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
frontend small
    bind {host}:{small}
    bind {host}:{proxied}
    http-request return status 200 content-type text/plain string "origin /"
"""

FILE_SERVER = r"""
import os, socket, sys, threading
path, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
size = os.path.getsize(path)
head = (f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nContent-Type: application/octet-stream"
        f"\r\nConnection: close\r\n\r\n").encode()
def serve(conn):
    with conn, open(path, "rb") as fh, conn.makefile("rb") as request:
        for line in iter(request.readline, b""):  # the request head, up to its blank line
            if line == b"\r\n":
                break
        else:
            return
        conn.sendall(head)
        offset = 0
        while offset < size:
            sent = os.sendfile(conn.fileno(), fh.fileno(), offset, size - offset)
            if sent <= 0:
                return
            offset += sent
srv = socket.create_server((host, port), backlog=64)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


@dataclass
class Origins:
    """The origins in the external namespace, on EXTERNAL_IP; `close()` removes the file."""

    bed: TestBed
    workdir: Path
    file_size: int
    big: Path | None = None

    def start(self) -> Origins:
        bed = self.bed
        cfg = self.workdir / "origin.cfg"
        cfg.write_text(
            ORIGIN_CFG.format(host=EXTERNAL_IP, small=SMALL_PORT, proxied=PROXY_ORIGIN_PORT)
        )
        origin = bed.start(bed.external, [HAPROXY, "-db", "-f", str(cfg)], name="origin")
        iperf3 = bed.start(
            bed.external, ["iperf3", "-s", "-p", str(IPERF_PORT), "-B", EXTERNAL_IP], name="iperf3"
        )
        self.big = Path("/dev/shm") / f"egress-bench-{os.getpid()}.bin"
        with self.big.open("wb") as fh:  # tmpfs: sendfile serves it without disk reads
            fh.truncate(self.file_size)
        files = bed.start(
            bed.external,
            [sys.executable, "-c", FILE_SERVER, str(self.big), EXTERNAL_IP, str(FILE_PORT)],
            name="files",
        )
        for port, proc in ((SMALL_PORT, origin), (IPERF_PORT, iperf3), (FILE_PORT, files)):
            wait_port(bed.router, EXTERNAL_IP, port, proc=proc)
        return self

    def close(self) -> None:
        if self.big is not None:
            self.big.unlink(missing_ok=True)


@contextlib.contextmanager
def dnat(bed: TestBed, workdir: Path, ports: Iterable[int], snat: str) -> Iterator[None]:
    """nftables DNAT of ROUTER_CLIENT_IP:`ports` to the origin, plus SNAT to `snat`.

    Loaded only around each DNAT measurement: a NAT table turns on conntrack for every
    connection in the namespace, which would tax the proxy paths too. `snat` must be an address
    no proxy connects from: the origin sees DNAT's and a proxy's connections as one 4-tuple
    space, and TIME_WAIT entries left by one path then collide with the other's new
    connections (new-connection rates collapsed in later rounds when they shared it).
    """
    listed = ", ".join(str(p) for p in ports)
    rules = (
        "table ip egress_bench {\n"
        "  chain pre {\n"
        "    type nat hook prerouting priority dstnat;\n"
        f'    iifname "to-client" ip daddr {ROUTER_CLIENT_IP} tcp dport {{ {listed} }}'
        f" dnat to {EXTERNAL_IP};\n"
        "  }\n"
        "  chain post {\n"
        "    type nat hook postrouting priority srcnat;\n"
        f'    oifname "to-external" snat to {snat};\n'
        "  }\n"
        "}\n"
    )
    path = workdir / "dnat.nft"
    path.write_text(rules)
    bed.router.run("nft", "-f", str(path))
    try:
        yield
    finally:
        bed.router.run("nft", "delete", "table", "ip", "egress_bench")


def cannot_run(bench: str, chosen: Sequence[str], known: Iterable[str], what: str) -> bool:
    """Say why a bench cannot run here (no network namespaces, unknown `what`), if it cannot."""
    why = available()
    if why:
        print(f"{bench} bench: {why}", file=sys.stderr)
        return True
    names = list(known)
    unknown = [c for c in chosen if c not in names]
    if unknown:
        print(f"unknown {what}: {unknown}; known: {', '.join(names)}", file=sys.stderr)
        return True
    return False


def rotated(items: Sequence[T], round_: int) -> list[T]:
    """The candidates in this round's order: rounds rotate it, so a burst of load from elsewhere
    on the machine hits every candidate alike instead of one."""
    shift = round_ % len(items)
    return [*items[shift:], *items[:shift]]


def progress(round_: int, candidate: str, workload: str, value: float, unit: str) -> None:
    """One measurement on stderr as it comes (stdout is kept for the tables)."""
    line = f"  round {round_ + 1} {candidate:26} {workload:28} {value:10.2f} {unit}"
    print(line, file=sys.stderr, flush=True)


# --- load generators (client namespace) -------------------------------------------------------


def run_tool(ns: Netns, argv: Sequence[str], timeout: float) -> str:
    """stdout of a bounded command in `ns`; RuntimeError with its stderr when it fails."""
    proc = ns.run(*argv, check=False, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr[-500:]}")
    return proc.stdout


WRK_PROXY_SCRIPT = """
wrk.method = "GET"
wrk.path = "http://www.good.test/"
wrk.headers["Host"] = "www.good.test"
{close}
"""


# CONNECT + one GET per connection, from wrk's C event loop (a Python client is the bound at
# a few thousand tunnels per second). The GET is sent right behind the CONNECT head: the proxy
# keeps it buffered until the tunnel is up. "200 Connection established" has no length, so
# wrk reads the GET's answer as that response's body, to the close the GET asks for; a refused
# CONNECT is a non-2xx answer, which Wrk.rate reports as an error. wrk checks that the first
# request of its first thread parses as HTTP requests, and a CONNECT does not (the parser stops
# at the tunnel): so each thread's first request is an absolute-URI GET (for that first thread,
# only parsed, never sent), and every later one the CONNECT.
WRK_CONNECT_SCRIPT = """
local head = "CONNECT www.good.test:80 HTTP/1.1\\r\\nHost: www.good.test:80\\r\\n\\r\\n"
    .. "GET / HTTP/1.1\\r\\nHost: www.good.test\\r\\nConnection: close\\r\\n\\r\\n"
local calls = 0
request = function()
    calls = calls + 1
    if calls == 1 then
        return wrk.format("GET", "http://www.good.test/",
            { Host = "www.good.test", Connection = "close" })
    end
    return head
end
"""


@dataclass(frozen=True)
class Wrk:
    """wrk's shape: threads, connections, and an optional Lua script (absolute-URI requests)."""

    threads: int = 1
    connections: int = 32
    script: Path | None = None

    def rate(self, ns: Netns, url: str, seconds: int, close: bool) -> float:
        """Requests per second; `close` makes every request use a new connection."""
        argv = ["wrk", f"-t{self.threads}", f"-c{self.connections}"]
        argv += [f"-d{max(1, seconds)}s", "--timeout", "5s"]  # wrk takes whole seconds
        if self.script is not None:
            argv += ["-s", str(self.script)]
        if close:
            argv += ["-H", "Connection: close"]
        out = run_tool(ns, [*argv, url], timeout=seconds + 30)
        match = re.search(r"Requests/sec:\s+([0-9.]+)", out)
        if not match:
            raise RuntimeError(f"wrk printed no rate: {out[-500:]}")
        if "Non-2xx" in out:
            raise RuntimeError(f"wrk saw error answers: {out[-500:]}")
        return float(match.group(1))


def proxy_script(workdir: Path, close: bool) -> Path:
    """A wrk script sending absolute-URI GETs for www.good.test, as a proxy client does."""
    path = workdir / f"wrk-proxy-{'close' if close else 'keepalive'}.lua"
    extra = 'wrk.headers["Connection"] = "close"' if close else ""
    path.write_text(WRK_PROXY_SCRIPT.format(close=extra))
    return path


def connect_wrk(ns: Netns, host: str, port: int, seconds: int, workdir: Path) -> float:
    """CONNECT + one request per connection, per second (wrk -t2 -c32, WRK_CONNECT_SCRIPT)."""
    script = workdir / "wrk-connect.lua"
    script.write_text(WRK_CONNECT_SCRIPT)
    tool = Wrk(threads=2, connections=32, script=script)
    return tool.rate(ns, f"http://{host}:{port}/", seconds, close=False)


def iperf(ns: Netns, host: str, port: int, seconds: int, streams: int) -> float:
    """Received Gbit/s over `streams` parallel TCP streams (iperf3 takes whole seconds)."""
    argv = ["iperf3", "-c", host, "-p", str(port), "-t", str(max(1, seconds))]
    out = json.loads(run_tool(ns, [*argv, "-P", str(streams), "-J"], timeout=seconds + 30))
    return float(out["end"]["sum_received"]["bits_per_second"]) / 1e9


def download(ns: Netns, url: str, seconds: float) -> float:
    """Gbit/s of one large HTTP download (curl, body discarded), cut at `seconds` * 4."""
    limit = max(10.0, seconds * 4)
    argv = ["curl", "-sS", "-o", "/dev/null", "--max-time", f"{limit:g}"]
    argv += ["-w", "%{size_download} %{time_total}", url]
    proc = ns.run(*argv, check=False, timeout=limit + 30)
    size, total = proc.stdout.split()
    if proc.returncode not in (0, 28) or float(size) == 0:  # 28: cut by --max-time, still a rate
        raise RuntimeError(f"curl failed ({proc.returncode}): {proc.stderr[-300:]}")
    return float(size) * 8 / float(total) / 1e9


CONNECT_REQUEST = b"CONNECT www.good.test:80 HTTP/1.1\r\nHost: www.good.test:80\r\n\r\n"


def connect_rate(
    ns: Netns, host: str, port: int, seconds: float, *, tunnel: bool = True, threads: int = 8
) -> float:
    """Exchanges per second, each on a new connection: CONNECT www.good.test:80 and one GET
    through the tunnel, or (`tunnel=False`, a path without a proxy) the GET alone."""
    done = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def read_head(s: socket.socket) -> bytes:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(1)
            if not chunk:
                raise RuntimeError(f"closed before the end of the head: {head!r}")
            head += chunk
        return head

    def worker() -> None:
        while time.monotonic() < stop:
            with ns.entered():
                s = socket.create_connection((host, port), timeout=5)
            with s:
                if tunnel:
                    s.sendall(CONNECT_REQUEST)
                    head = read_head(s)
                    if b" 200 " not in head.split(b"\r\n", 1)[0]:
                        raise RuntimeError(f"CONNECT refused: {head!r}")
                s.sendall(b"GET / HTTP/1.1\r\nHost: www.good.test\r\n\r\n")
                data = b""
                while not data.endswith(b"origin /"):  # ORIGIN_CFG's body
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            with lock:
                done[0] += 1

    failures: list[BaseException] = []

    def guarded() -> None:
        try:
            worker()
        except (OSError, RuntimeError) as exc:
            failures.append(exc)

    workers = [threading.Thread(target=guarded) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 15)
    if failures:
        raise RuntimeError(f"{len(failures)} of {threads} clients failed: {failures[0]}")
    return done[0] / seconds


# --- what a measurement cost the proxy -----------------------------------------------------------


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (nginx and squid fork workers), by scanning /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(stat[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of the processes (all their threads), in seconds."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_bytes(pids: Iterable[int], key: str = "VmRSS") -> int:
    """Resident memory of the processes together: now (VmRSS) or at its peak (VmHWM)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(f"{key}:"):
                    total += int(line.split()[1]) * 1024
    return total


@dataclass
class Costs:
    """CPU seconds and peak resident memory (VmHWM, summed over the tree) of one proxy."""

    started: Started
    cpu: float = 0.0
    rss_peak: int = 0
    _mark: float = field(default=0.0, repr=False)

    def pids(self) -> list[int]:
        return [self.started.proc.pid, *_children(self.started.proc.pid)]

    def begin(self) -> None:
        self._mark = cpu_seconds(self.pids())

    def end(self) -> float:
        """CPU seconds since `begin()`; also updates the peak RSS."""
        pids = self.pids()
        used = cpu_seconds(pids) - self._mark
        self.cpu += used
        self.rss_peak = max(self.rss_peak, rss_bytes(pids, "VmHWM"))
        return used
