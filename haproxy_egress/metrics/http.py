"""The metrics HTTP endpoint: /metrics, /healthz and /readyz, served from daemon threads.

Nothing here touches the supervisor beyond calling its `status()` snapshot callable, so a slow
scrape can never hold up the supervisor loop or a reload; haproxy's stats socket is read with
a deadline (`scrape_timeout`), and at most a few scrapes run at once.

With a web-config file (exporter-toolkit format) the port speaks TLS, may demand a client
certificate and basic auth, and rate-limits. The kubelet's probes send neither a client
certificate nor a password, so /healthz and /readyz are exempt from basic auth and from the
rate limit, and are also answered over plain HTTP on the same port: the first byte of a
connection tells a TLS ClientHello (0x16) from an HTTP request. Plain HTTP gets nothing but
the two probes; everything else demands the full web-config.
"""

from __future__ import annotations

import dataclasses
import http.server
import logging
import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from haproxy_egress.metrics.decisions import MultiCollector, PolicyCollector, socket_table
from haproxy_egress.metrics.destinations import DestinationCollector
from haproxy_egress.metrics.exposition import (
    CONTENT_TYPE_OPENMETRICS,
    CONTENT_TYPE_TEXT,
    scrape_pieces,
)
from haproxy_egress.metrics.options import ExporterOptions
from haproxy_egress.metrics.pieces import gzipped, plain
from haproxy_egress.metrics.scrape import Scraper, StreamQuery, stream_of
from haproxy_egress.metrics.small_families import ScrapeCounters
from haproxy_egress.metrics.stats import Query
from haproxy_egress.metrics.status import RouterStatus, safe_status
from haproxy_egress.metrics.webreload import WebConfigCollector, WebConfigState
from haproxy_egress.metrics.websecurity import WebSecurity, load_web_security
from haproxy_egress.metrics.webwatch import FileWatcher

logger = logging.getLogger(__name__)

MAX_CONCURRENT_SCRAPES = 4  # more is a misconfigured scraper; answer 503 rather than pile up
IDLE_TIMEOUT = 60.0  # a keep-alive connection idle this long is closed (frees its thread)
HANDSHAKE_TIMEOUT = 10.0  # first byte and TLS handshake; a silent client frees its thread
TLS_RECORD_HANDSHAKE = b"\x16"  # the first byte of every TLS ClientHello
PROBES = frozenset({"/healthz", "/readyz"})  # reachable by the kubelet without credentials

_INDEX = b"""<html><head><title>haproxy-egress</title></head><body>
<h1>haproxy-egress</h1>
<p><a href="/metrics">Metrics</a> &middot; <a href="/healthz">healthz</a> &middot;
<a href="/readyz">readyz</a></p>
</body></html>
"""


def _q(params: list[str]) -> float:
    """The q value among a media range's parameters (1 when absent or malformed)."""
    for param in params:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def wants_openmetrics(accept: str) -> bool:
    """True when the Accept header prefers OpenMetrics to the plain text format."""
    om = text = 0.0
    for item in accept.split(","):
        media, *params = item.split(";")
        media = media.strip().lower()
        if media == "application/openmetrics-text":
            om = max(om, _q(params))
        elif media in ("text/plain", "text/*", "*/*"):
            text = max(text, _q(params))
    return om > 0 and om >= text


def accepts_gzip(accept_encoding: str) -> bool:
    """True when the Accept-Encoding header allows gzip."""
    for item in accept_encoding.split(","):
        coding, *params = item.split(";")
        if coding.strip().lower() == "gzip" and _q(params) > 0:
            return True
    return False


@dataclass(frozen=True)
class Response:
    """What one request is answered with."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    encoding: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False  # close the connection after this answer
    # A large body (a scrape) in parts sent one after the other, instead of `body`: at
    # 10,000 routes joining 67 MB into one object costs more than writing it.
    parts: tuple[bytes, ...] = ()

    def length(self) -> int:
        """The body's length in bytes."""
        return sum(map(len, self.parts)) if self.parts else len(self.body)


class MetricsServer:
    """Serves the router's metrics and health endpoints on address:port, in daemon threads."""

    def __init__(
        self,
        address: str,
        port: int,
        query: Query,
        status: Callable[[], RouterStatus],
        options: ExporterOptions,
        *,
        web_config: Path | None = None,
        reload_interval: float = 0.3,
        stream: StreamQuery | None = None,
    ) -> None:
        """`web_config`: an exporter-toolkit web-config file, loaded now (ConfigError if it
        is unusable) and watched for changes every `reload_interval` / 2 seconds. `stream`:
        the stats socket read as the answer arrives (`CliSocket.stream`), for the scrape's
        `show stat`; without it, `query` answers that too."""
        self._address = address
        self._requested_port = port
        self._query = query
        self._status = status
        self._options = options
        self._counters = ScrapeCounters()
        self.scraper = Scraper(stream or stream_of(query), options)
        # Small families beside the fast-rendered stats: this process's, and the policy
        # proxy's per-rule decisions (a second, short stats-socket command).
        collectors: list[Collector] = [
            ProcessCollector(registry=None),
            PolicyCollector(socket_table(query), DestinationCollector(query)),
        ]
        self.web: WebConfigState | None = None
        self._web_watcher: FileWatcher | None = None
        if web_config is not None:
            self.web = WebConfigState(web_config, load_web_security(web_config))
            collectors.append(WebConfigCollector(self.web))
            self._web_watcher = FileWatcher(self.web.files, self.web.reload, reload_interval / 2)
        self._extra = MultiCollector(*collectors)
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT_SCRAPES)
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind (port 0 picks a free one) and serve from a daemon thread; returns at once."""
        family = socket.AF_INET6 if ":" in self._address else socket.AF_INET
        server = _HTTPServer((self._address, self._requested_port), _Handler, family, self)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="metrics-http"
        )
        self._thread.daemon = True
        self._thread.start()
        if self.web is not None and self._web_watcher is not None:
            self._web_watcher.start()
            logger.info(
                "metrics endpoint listening on %s port %d: %s (web-config %s)",
                self._address,
                self.port,
                self.web.security.describe(),
                self.web.path,
            )
        else:
            logger.info("metrics endpoint listening on %s port %d", self._address, self.port)

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for)."""
        if self._server is None:
            raise RuntimeError("MetricsServer is not started")
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop accepting, close the listening socket, and wait for the serving thread."""
        if self._web_watcher is not None:
            self._web_watcher.stop()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    # --- the endpoints (called from request threads) ---------------------------------------

    def metrics(self, accept: str, accept_encoding: str) -> Response:
        """/metrics: one stats snapshot and one status snapshot, rendered for this scraper."""
        if not self._slots.acquire(blocking=False):
            return Response(503, b"too many concurrent scrapes\n")
        try:
            zipped = accepts_gzip(accept_encoding)
            rows = self.scraper.scrape(deflate=zipped)
            openmetrics = wants_openmetrics(accept)
            status = safe_status(self._status)
            pieces = scrape_pieces(
                rows,
                self._options,
                openmetrics,
                status=status,
                counters=self._counters,
                extra=self._extra,
            )
            del rows  # the answer's text: gone before the body is sent
            # zlib releases the GIL while deflating.
            parts = gzipped(pieces) if zipped else plain(pieces)
        finally:
            self._slots.release()
        content_type = CONTENT_TYPE_OPENMETRICS if openmetrics else CONTENT_TYPE_TEXT
        return Response(200, b"", content_type, "gzip" if zipped else "", parts=tuple(parts))

    def healthz(self) -> Response:
        """/healthz: 200 while the supervisor loop is alive (liveness probe)."""
        status = safe_status(self._status)
        if status is not None and status.alive:
            return Response(200, b"ok\n")
        return Response(503, b"supervisor loop not alive\n")

    def readyz(self) -> Response:
        """/readyz: 200 while haproxy runs a config with its listeners bound (readiness)."""
        status = safe_status(self._status)
        if status is not None and status.ready:
            return Response(200, b"ready\n")
        return Response(503, b"not ready\n")

    def security(self) -> WebSecurity | None:
        """The web-config in force (None: plain HTTP, no auth), read once per connection."""
        return self.web.security if self.web is not None else None

    def route(self, path: str, headers: Callable[[str], str], tls: bool = False) -> Response:
        """Dispatch one GET/HEAD by path, after what the web-config demands of it."""
        security = self.security()
        if security is None:
            return self._route(path, headers)
        extra = security.config.headers
        response = self._guard(security, path, headers, tls)
        if response is None:
            response = self._route(path, headers)
        return dataclasses.replace(response, headers=(*response.headers, *extra))

    def _guard(
        self, security: WebSecurity, path: str, headers: Callable[[str], str], tls: bool
    ) -> Response | None:
        """The refusal for this request, or None when it may be served."""
        if path in PROBES:
            return None  # the kubelet sends no credentials: liveness tells nothing secret
        if security.context is not None and not tls:
            # What Go's net/http answers here too; the port speaks TLS.
            return Response(400, b"Client sent an HTTP request to an HTTPS server.\n", close=True)
        if security.limiter is not None and not security.limiter.allow():
            return Response(429, b"Too Many Requests\n")
        if security.auth and not security.auth.check(headers("Authorization")):
            return Response(401, b"Unauthorized\n", headers=(("WWW-Authenticate", "Basic"),))
        return None

    def _route(self, path: str, headers: Callable[[str], str]) -> Response:
        if path == "/metrics":
            return self.metrics(headers("Accept"), headers("Accept-Encoding"))
        if path == "/healthz":
            return self.healthz()
        if path == "/readyz":
            return self.readyz()
        if path == "/":
            return Response(200, _INDEX, "text/html; charset=utf-8")
        return Response(404, b"not found\n")


class _HTTPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """A thread per connection; daemon threads so a hung client never blocks the exit.

    A plain TCPServer, not http.server.HTTPServer: the latter calls socket.getfqdn() on the
    bind address, a reverse DNS lookup through the system resolver.
    """

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    server_name: str
    server_port: int

    def finish_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        """Serve one connection: TLS when the web-config says so and the client speaks it."""
        assert isinstance(request, socket.socket)
        serve: Any = self.RequestHandlerClass
        security = self.owner.security()
        context = security.context if security is not None else None
        if context is None:
            serve(request, client_address, self)
            return
        assert security is not None
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            first = request.recv(1, socket.MSG_PEEK)
        except OSError:
            return
        if first != TLS_RECORD_HANDSHAKE:
            serve(request, client_address, self)  # probes only
            return
        try:
            tls = context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            # No client certificate, an unknown CA, a protocol below min_version...
            logger.info("metrics TLS handshake with %s refused: %s", client_address, exc)
            return
        try:
            if not security.peer_allowed(tls.getpeercert()):
                logger.info(
                    "metrics client %s refused: certificate names none of client_allowed_sans",
                    client_address,
                )
                return
            serve(tls, client_address, self)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed: one log line, never socketserver's traceback on stderr.
        A client that resets or drops its connection (load-balancer probes do) is routine."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            logger.debug("metrics client %s: connection ended: %s", client_address, exc)
            return
        logger.error(
            "metrics endpoint: request from %s failed: %r",
            client_address,
            exc,
            exc_info=logger.isEnabledFor(logging.DEBUG),
        )

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[http.server.BaseHTTPRequestHandler],
        family: socket.AddressFamily,
        owner: MetricsServer,
    ) -> None:
        self.address_family = family
        self.owner = owner
        super().__init__(address, handler, bind_and_activate=False)
        try:
            if family == socket.AF_INET6:
                # "::" should also take IPv4 scrapes, whatever the host's bindv6only default.
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self.server_bind()
            self.server_activate()
            self.server_name, self.server_port = address[0], self.server_address[1]
        except BaseException:
            self.server_close()
            raise


class _Handler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive (Prometheus reuses its connection between scrapes)."""

    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT
    # The headers and the body go out in two writes; with Nagle's algorithm the body of a
    # small answer (a gzipped scrape of a few routes) waited for the client's delayed ACK of
    # the headers: 40 ms added to a 2 ms scrape.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        path = urlsplit(self.path).path
        tls = isinstance(self.connection, ssl.SSLSocket)
        try:
            response = self.server.owner.route(
                path, lambda name: self.headers.get(name, ""), tls=tls
            )
        except Exception:
            logger.exception("metrics endpoint failed on %s", path)
            response = Response(500, b"internal error\n")
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        if response.encoding:
            self.send_header("Content-Encoding", response.encoding)
        self.send_header("Vary", "Accept, Accept-Encoding")
        self.send_header("Content-Length", str(response.length()))
        for name, value in response.headers:
            self.send_header(name, value)
        if response.close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if send_body:
            _write(self.connection, self.wfile, response.parts or (response.body,))

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("metrics http: %s " + format, self.address_string(), *args)


# Parts smaller than this are joined before they are written to a TLS connection: one
# record (and system call) per HELP/TYPE line would be many small packets.
_WRITE_SIZE = 1 << 18
_IOV_MAX = 512  # buffers per sendmsg (Linux takes up to 1024)


def _write(connection: socket.socket, out: Any, parts: tuple[bytes, ...]) -> None:
    """Write parts in order: on a plain socket with sendmsg, the parts as they are (the
    kernel gathers them, no 67 MB copy at 10,000 routes); on TLS joined into writes of about
    _WRITE_SIZE bytes."""
    if not isinstance(connection, ssl.SSLSocket):
        _send_all(connection, [memoryview(part) for part in parts if part])
        return
    pending: list[bytes] = []
    size = 0
    for part in parts:
        if size + len(part) > _WRITE_SIZE and pending:
            out.write(b"".join(pending))
            pending, size = [], 0
        pending.append(part)
        size += len(part)
    if pending:
        out.write(b"".join(pending))


def _send_all(connection: socket.socket, views: list[memoryview]) -> None:
    """sendmsg until every buffer is sent (a call may send part of them)."""
    first = 0
    while first < len(views):
        sent = connection.sendmsg(views[first : first + _IOV_MAX])
        while sent:
            if sent >= len(views[first]):
                sent -= len(views[first])
                first += 1
            else:
                views[first] = views[first][sent:]
                sent = 0
