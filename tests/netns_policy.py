"""Test-bed additions for the policy proxy, on top of tests/netns.py's namespaces.

- IPv6 on the bed's links, from 2001:2::/48 (RFC 5180's benchmarking range; like the IPv4
  198.18.0.0/15, only inside the bed's own namespaces).
- `CountingOrigin`: an HTTP (or TLS) origin that counts every accepted TCP connection, so a
  test can prove that a denied destination saw no connection at all.
- A router runner that compiles a ConfigMap dir with the project's loader, stages the Lua files
  like the reload transaction does, checks with `haproxy -c` and runs haproxy in the router ns.
- Client helpers that speak to the proxy as curl would: absolute-URI GETs and CONNECT.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from haproxy_egress.config.sources import load_snapshot, read_snapshot
from haproxy_egress.haproxy.check import check
from haproxy_egress.render import hooks
from haproxy_egress.render.compiler import RenderOptions, render
from haproxy_egress.render.maps import pattern_files
from haproxy_egress.rundir import RunDir
from haproxy_egress.runtime import staging
from tests.netns import ROUTER_CLIENT_IP, Netns, Started, TestBed, wait_port
from tests.support import HAPROXY, content_length, recv_head, write_configmap

V6_CLIENT = "2001:2:0:1::2"
V6_ROUTER_CLIENT = "2001:2:0:1::1"
V6_ROUTER_EXTERNAL = "2001:2:0:2::1"
V6_EXTERNAL = "2001:2:0:2::2"


def add_ipv6(bed: TestBed) -> None:
    """IPv6 addresses and routes on the bed's links (nodad: usable at once)."""
    for ns, dev, ip in (
        (bed.client, "to-router", V6_CLIENT),
        (bed.router, "to-client", V6_ROUTER_CLIENT),
        (bed.router, "to-external", V6_ROUTER_EXTERNAL),
        (bed.external, "to-router", V6_EXTERNAL),
    ):
        ns.run("ip", "-6", "addr", "add", f"{ip}/64", "dev", dev, "nodad")
    bed.client.run("ip", "-6", "route", "add", "default", "via", V6_ROUTER_CLIENT)
    bed.external.run("ip", "-6", "route", "add", "default", "via", V6_ROUTER_EXTERNAL)


@dataclass
class CountingOrigin:
    """A TCP server that counts accepted connections and answers HTTP/1.x with its name.

    With `tls` (a cert and key file) it speaks TLS first, as an HTTPS origin does. With
    `requests_per_connection` N > 0 it answers N requests on a connection and then closes it on
    the next request without a response: the race of an origin closing an idle keep-alive
    connection just as the proxy reuses it, made deterministic.
    """

    name: str
    host: str
    port: int
    tls: tuple[Path, Path] | None = None
    requests_per_connection: int = 0
    accepted: int = 0
    requests: list[str] = field(default_factory=list)  # "METHOD /path" of every request read
    _sock: socket.socket | None = None
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> CountingOrigin:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        sock.settimeout(0.2)
        self._sock = sock
        thread = threading.Thread(target=self._serve, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def _serve(self) -> None:
        context = None
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            threading.Thread(target=self._handle, args=(conn, context), daemon=True).start()

    def _handle(self, conn: socket.socket, context: ssl.SSLContext | None) -> None:
        conn.settimeout(5)
        stream: socket.socket = conn
        try:
            if context is not None:
                stream = context.wrap_socket(conn, server_side=True)
            self._answer(stream)
        except OSError:
            pass
        finally:
            stream.close()
            conn.close()

    def _answer(self, stream: socket.socket) -> None:
        """Answer requests on one connection until the peer closes it."""
        answered = 0
        while True:
            head = recv_head(stream, 4096)
            if b"\r\n\r\n" not in head:
                return
            method, path = head.split(b" ")[:2]
            self.requests.append(f"{method.decode()} {path.decode()}")
            if self.requests_per_connection and answered >= self.requests_per_connection:
                return  # close without a response
            answered += 1
            body = f"{self.name} {path.decode()}".encode()
            stream.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2)
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def self_signed(directory: Path, names: list[str]) -> tuple[Path, Path]:
    """A self-signed certificate for `names` (the client trusts it as its own CA)."""
    cert, key = directory / "origin.crt", directory / "origin.key"
    san = ",".join(f"DNS:{n}" for n in names)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={names[0]}",
            "-addext",
            f"subjectAltName={san}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def start_router(
    bed: TestBed,
    tmp_path: Path,
    keys: Mapping[str, object],
    env: Mapping[str, str],
    ports: list[int],
    *,
    haproxy_bin: str = HAPROXY,
) -> tuple[Started, Path]:
    """Compile, stage Lua files, `haproxy -c`, run haproxy (`haproxy_bin`) in the router ns;
    (process, run dir)."""
    cfg = compile_router(tmp_path, keys, env, haproxy_bin=haproxy_bin)
    haproxy = bed.start(bed.router, [haproxy_bin, "-db", "-f", str(cfg)], name="haproxy")
    for port in ports:
        wait_port(bed.client, ROUTER_CLIENT_IP, port, proc=haproxy)
    return haproxy, cfg.parent


def compile_router(
    tmp_path: Path, keys: Mapping[str, object], env: Mapping[str, str], *, haproxy_bin: str
) -> Path:
    """The router's haproxy.cfg for `keys` and `env` in tmp_path/run, with its Lua files and
    maps staged beside it, checked with `haproxy_bin -c`."""
    configmap = tmp_path / "configmap"
    write_configmap(configmap, keys)
    snapshot = read_snapshot(configmap)
    config = load_snapshot(snapshot, env)
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700, exist_ok=True)
    hook_set = hooks.resolve(config, snapshot.files)
    if any(r.mode == "proxy" for r in config.routes):
        hook_set = hook_set.including(hooks.shipped_lua("connect"))
    staging.stage(hook_set, RunDir(run_dir).lua)
    # Every pattern file, as the reload does: allow_from ACLs as well as the policy maps.
    staging.write_maps(RunDir(run_dir).maps, pattern_files(config))
    cfg = run_dir / "haproxy.cfg"
    cfg.write_text(render(config, RenderOptions(run_dir=run_dir, log_stdout=True), hooks=hook_set))
    check(cfg, haproxy_bin)
    return cfg


@dataclass(frozen=True)
class Reply:
    """What the proxy answered: the status (0 when it closed without a response) and the rest."""

    status: int
    head: bytes
    body: bytes


def _read_reply(sock: socket.socket) -> Reply:
    data = b""
    with contextlib.suppress(TimeoutError, OSError):
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1."):
        return Reply(0, head, rest)
    status = int(head.split(b" ")[1])
    length = content_length(head)
    with contextlib.suppress(TimeoutError, OSError):
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return Reply(status, head, rest)


def proxy_get(
    ns: Netns,
    proxy: tuple[str, int],
    url: str,
    host_header: str,
    *,
    timeout: float = 8.0,
    source: str | None = None,
) -> Reply:
    """One `GET <absolute url>` through the proxy, as curl with HTTP_PROXY sends it (from
    `source`, one of the client namespace's addresses, when given)."""
    with ns.entered():
        bind = (source, 0) if source else None
        sock = socket.create_connection(proxy, timeout=timeout, source_address=bind)
    with sock:
        sock.sendall(
            f"GET {url} HTTP/1.1\r\nHost: {host_header}\r\nProxy-Connection: close\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        return _read_reply(sock)


@contextlib.contextmanager
def connect_tunnel(
    ns: Netns, proxy: tuple[str, int], authority: str, timeout: float = 8.0
) -> Iterator[tuple[Reply, socket.socket]]:
    """`CONNECT authority`; yields the proxy's reply and the socket (the tunnel if 200)."""
    with ns.entered():
        sock = socket.create_connection(proxy, timeout=timeout)
    with sock:
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head = b""
        with contextlib.suppress(TimeoutError, OSError):
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(1)  # byte by byte: the tunnel's bytes must stay unread
                if not chunk:
                    break
                head += chunk
        if head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0] + b" ":
            yield Reply(200, head, b""), sock
            return
        reply = Reply(int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.") else 0, head, b"")
        if reply.status:
            full = _read_reply_after_head(sock, head)
            yield full, sock
        else:
            yield reply, sock


def _read_reply_after_head(sock: socket.socket, head: bytes) -> Reply:
    """The rest of a refusal: its body (Content-Length bytes), for the test to read the reason."""
    status = int(head.split(b" ")[1])
    length = content_length(head)
    body = b""
    with contextlib.suppress(TimeoutError, OSError):
        while len(body) < length and (chunk := sock.recv(65536)):
            body += chunk
    return Reply(status, head, body)


def https_get_via_tunnel(
    sock: socket.socket, server_name: str, cafile: Path, path: str = "/"
) -> Reply:
    """A real TLS handshake through an established tunnel, then one GET."""
    context = ssl.create_default_context(cafile=str(cafile))
    with context.wrap_socket(sock, server_hostname=server_name) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {server_name}\r\n\r\n".encode())
        return _read_reply(tls)


def show_table(run_dir: Path, table: str) -> dict[str, int]:
    """`show table <table>` on the stats socket: key → gpc0 (or gpt0)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(run_dir / "haproxy.sock"))
        s.sendall(f"show table {table}\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    out: dict[str, int] = {}
    for line in data.decode().splitlines():
        if " key=" not in line:
            continue
        fields = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
        value = fields.get("gpc0", fields.get("gpt0", "0"))
        out[fields["key"]] = int(value)
    return out
