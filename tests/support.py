"""Real test peers shared by the test suite: free ports, TCP/HTTP origins, a DNS server, and
haproxy processes. Everything binds to 127.0.0.1 (or a test namespace) and is stopped by the
fixture that started it."""

from __future__ import annotations

import atexit
import contextlib
import http.server
import json
import os
import random
import re
import signal
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml
from dnslib import AAAA, QTYPE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

HAPROXY = os.environ.get("EGRESS_HAPROXY_BIN", "haproxy")


_HANDED_OUT: set[int] = set()  # every port free_port() gave this test process

# Ports are handed out below the kernel's ephemeral range: a port from bind(0), closed and
# bound again later by haproxy, could meanwhile be taken by any process's bind(0) or by the
# local end of an outgoing connection (both draw from that range), and a second test job on
# the machine would then make routers fail with "Address already in use". Below it, only
# another test process could take it, and each port taken is claimed in a file naming its pid.
_PORT_CLAIMS = Path("/tmp/haproxy-egress-test-ports")
_PORT_RANGE = (10000, 19999)  # one port at a time, picked at random
_BULK_RANGE = range(20000, 32000)  # free_ports(n): thousands at once, on an address of its own
_RANDOM = random.Random(os.urandom(16))


def _claim(port: int | str) -> bool:
    """Claim `port` (or a loopback address) for this process, unless a live test process
    holds the claim."""
    _PORT_CLAIMS.mkdir(mode=0o1777, exist_ok=True)
    claim = _PORT_CLAIMS / str(port)
    mine = str(os.getpid()).encode()
    for _ in range(2):
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                owner = int(claim.read_bytes() or b"0")
            except (OSError, ValueError):
                return False
            if owner and _alive(owner):
                return False
            claim.unlink(missing_ok=True)  # its process is gone: the claim is stale
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(mine)
        return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@atexit.register
def _release_claims() -> None:
    for port in (*_HANDED_OUT, *_BULK_ADDRESSES):
        with contextlib.suppress(OSError):
            claim = _PORT_CLAIMS / str(port)
            if claim.read_bytes() == str(os.getpid()).encode():
                claim.unlink()


def _bindable(host: str, port: int, kind: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


_BULK_ADDRESSES: list[str] = []  # the loopback address free_ports() claimed, once


def bulk_address() -> str:
    """A loopback address of this test process's own (127.1xx.y.1), for free_ports(): two test
    jobs that each want 10,000 ports cannot both have them on 127.0.0.1."""
    if not _BULK_ADDRESSES:
        for _ in range(1000):
            address = f"127.{_RANDOM.randint(100, 199)}.{_RANDOM.randint(0, 255)}.1"
            if _claim(address):
                _BULK_ADDRESSES.append(address)
                break
        else:
            raise RuntimeError("no loopback address left for free_ports()")
    return _BULK_ADDRESSES[0]


def free_ports(n: int) -> tuple[str, list[int]]:
    """`n` free ports at once (e.g. 10,000 routes) on this process's bulk_address()."""
    host = bulk_address()
    ports = [p for p in _BULK_RANGE if _bindable(host, p, socket.SOCK_STREAM)][:n]
    if len(ports) < n:
        raise RuntimeError(f"fewer than {n} free ports in {_BULK_RANGE} on {host}")
    return host, ports


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A free port no test process on this machine got before (see _PORT_RANGE): never the
    same twice in one process either, since a test that asks for several ports (routes,
    metrics, origins) must get distinct ones or its router refuses the clash."""
    for _ in range(1000):
        port = _RANDOM.randint(*_PORT_RANGE)
        if port in _HANDED_OUT or not _bindable(host, port, kind):
            continue
        if _claim(port):
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port left below the ephemeral range for this test process")


T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, step: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = predicate()
            if last:
                return last
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


# --- origins -------------------------------------------------------------------------------


class _Exiting(Protocol):
    def start(self, wait_ready: bool = True) -> object: ...
    def wait(self, timeout: float) -> int: ...
    def stop(self) -> None: ...


def exit_code(process: _Exiting, timeout: float) -> int:
    """Start `process` without waiting for readiness and return its exit code; always stopped."""
    process.start(wait_ready=False)
    try:
        return process.wait(timeout)
    finally:
        process.stop()


def recv_head(sock: socket.socket, size: int = 65536) -> bytes:
    """Read until the end of a message head (blank line) or EOF; returns what arrived."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(size)
        if not chunk:
            break
        data += chunk
    return data


def content_length(head: bytes) -> int:
    """The Content-Length of a message head (0 when it has none)."""
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return length


class _ThreadingHTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients (and haproxy's health checks) hanging up are normal here

    def server_bind(self) -> None:
        # HTTPServer.server_bind() looks up getfqdn(host): no resolver use in tests, ever.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", self.server_address[1]


class _QuietHandler(http.server.BaseHTTPRequestHandler):
    """A keep-alive (HTTP/1.1) handler that logs nothing; `reply` answers 200 with a body."""

    protocol_version = "HTTP/1.1"

    def reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # no access log: a test's stderr is for its failures


def _serve_http(
    address: tuple[str, int], handler: type[http.server.BaseHTTPRequestHandler]
) -> _ThreadingHTTPServer:
    """An HTTP server on `address`, serving from a daemon thread."""
    server = _ThreadingHTTPServer(address, handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _stop_http(server: _ThreadingHTTPServer | None) -> None:
    """Stop and close a server from _serve_http (None: already stopped)."""
    if server is not None:
        server.shutdown()
        server.server_close()


@dataclass
class HttpOrigin:
    """An HTTP server answering every GET with its own name; records client peers."""

    name: str
    host: str = "127.0.0.1"
    port: int = 0
    peers: list[str] = field(default_factory=list)
    _server: _ThreadingHTTPServer | None = None

    def start(self) -> HttpOrigin:
        origin = self

        class Handler(_QuietHandler):
            # Head and body in one segment: otherwise Nagle and delayed ACKs cap every
            # keep-alive connection at ~25 requests/s and benchmarks measure that, not us.
            wbufsize = 1 << 16
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                origin.peers.append(self.client_address[0])
                size = 0
                if self.path.startswith("/bytes/"):
                    size = int(self.path.split("/")[2])
                self.reply(origin.name.encode() if not size else b"x" * size)

        self._server = _serve_http((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        return self

    def stop(self) -> None:
        _stop_http(self._server)
        self._server = None


@dataclass
class EchoOrigin:
    """An HTTP origin answering every request with its request headers as a JSON object."""

    port: int = 0
    _server: _ThreadingHTTPServer | None = None

    def start(self) -> EchoOrigin:
        class Handler(_QuietHandler):
            def do_GET(self) -> None:
                self.reply(json.dumps({k.lower(): v for k, v in self.headers.items()}).encode())

        self._server = _serve_http(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        return self

    def stop(self) -> None:
        _stop_http(self._server)
        self._server = None


# A ConfigMap hook: a Lua service answering "<greeting>, <who>" (fill in the greeting with %).
HELLO_LUA = """
core.register_service("hello", "http", function(applet)
    local body = "%s, " .. (applet:get_var("txn.arg.hello.who") or "nobody")
    applet:set_status(200)
    applet:add_header("content-length", tostring(#body))
    applet:start_response()
    applet:send(body)
end)
"""


def http_get(port: int, path: str = "/", host: str = "127.0.0.1", timeout: float = 5.0) -> str:
    """One HTTP/1.0 GET over a new connection; returns the body (raises on failure)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: test\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0] + b" ":
        raise ConnectionError(f"bad response: {head[:80]!r}")
    return body.decode()


class TcpOrigin:
    """A raw TCP server: one thread accepts (and counts) connections, `handle` serves each in
    a thread of its own and the connection is closed after it. Subclasses set their own
    attributes before calling `super().__init__()`, which starts accepting."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, 0), family=family)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def stopping(self) -> bool:
        return self._stop.is_set()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self.handle(conn)

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()


# --- DNS ---------------------------------------------------------------------------------


@dataclass
class DnsServer:
    """A real DNS server on 127.0.0.1 (dnslib) whose A/AAAA answers tests can change."""

    records: dict[str, list[str]] = field(default_factory=dict)  # name → IPs
    port: int = 0
    ttl: int = 1
    queries: int = 0
    _server: DNSServer | None = None

    def start(self) -> DnsServer:
        owner = self

        # dnslib ships no type information: its classes are Any to mypy.
        class Resolver(BaseResolver):  # type: ignore[misc]
            def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
                owner.queries += 1
                reply = request.reply()
                qname = str(request.q.qname).rstrip(".").lower()
                qtype = QTYPE[request.q.qtype]
                for ip in owner.records.get(qname, []):
                    if ":" in ip and qtype in ("AAAA", "ANY"):
                        reply.add_answer(RR(qname, QTYPE.AAAA, rdata=AAAA(ip), ttl=owner.ttl))
                    elif ":" not in ip and qtype in ("A", "ANY"):
                        reply.add_answer(RR(qname, QTYPE.A, rdata=A(ip), ttl=owner.ttl))
                if qname not in owner.records:
                    reply.header.rcode = 3  # NXDOMAIN
                return reply

        self.port = self.port or free_port(kind=socket.SOCK_DGRAM)
        quiet = DNSLogger(logf=lambda _msg: None)
        server = DNSServer(Resolver(), port=self.port, address="127.0.0.1", logger=quiet)
        server.start_thread()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            # dnslib's stop() only shuts the server down; close its UDP socket too.
            self._server.server.server_close()
            self._server = None


# --- haproxy -------------------------------------------------------------------------------


@dataclass
class HaproxyProcess:
    """A plain (non master-worker) haproxy on a rendered config, for data-path tests."""

    config: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HaproxyProcess:
        self.proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)  # soft stop
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None


def loopback_route(
    name: str, port: int, *dest_ports: int, mode: str = "http", **extra: Any
) -> dict[str, Any]:
    """A YAML route: `mode` (http unless told) on 127.0.0.1:`port`, to destinations on
    127.0.0.1 at `dest_ports`, with any other route fields in `extra`."""
    return {
        "name": name,
        "listen": f"127.0.0.1:{port}",
        "mode": mode,
        "destinations": [f"127.0.0.1:{p}" for p in dest_ports],
        **extra,
    }


def write_configmap(directory: Path, keys: Mapping[str, object]) -> None:
    """Write keys into a plain directory (dict values become YAML, str/bytes are written raw).

    Each key is written to a hidden name and renamed over the key, as editors and `kubectl cp`
    do: a router reading meanwhile (a SIGHUP, a poll) sees the old key or the new one, never
    a half-written one it would rightly refuse."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in keys.items():
        if isinstance(value, bytes):
            data = value
        elif isinstance(value, str):
            data = value.encode()
        else:
            data = yaml.safe_dump(value, sort_keys=False).encode()
        partial = directory / f".{name}.partial"
        partial.write_bytes(data)
        os.replace(partial, directory / name)


@contextlib.contextmanager
def started(*things: HttpOrigin | DnsServer | HaproxyProcess) -> Iterator[None]:
    """Start peers in order and stop them in reverse, even when the test fails."""
    done: list[HttpOrigin | DnsServer | HaproxyProcess] = []
    try:
        for thing in things:
            thing.start()
            done.append(thing)
        yield
    finally:
        for thing in reversed(done):
            thing.stop()


# --- the pattern files a rendered config loads --------------------------------------------

_PATTERN_FILE = re.compile(r" -f (/\S+)")


def with_pattern_files(text: str, directory: Path) -> str:
    """`text` with the ACL files it loads (`-f <file>`) moved into `directory` and created
    there (empty): `haproxy -c` opens every file a config names, and a test checking a
    rendering has no run dir. A test that serves traffic writes the real files instead
    (staging.write_maps with render.maps.pattern_files)."""
    for path in sorted(set(_PATTERN_FILE.findall(text))):
        local = directory / "pattern-files" / Path(path).name
        local.parent.mkdir(parents=True, exist_ok=True)
        local.touch()
        text = text.replace(f" -f {path}", f" -f {local}")
    return text
