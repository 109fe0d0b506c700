"""haproxy's stderr, relayed into the router's own log: one format, with the route named.

haproxy (master and workers) writes its notices and warnings to a pipe this process reads, not
to the pod log directly: the routine lines of every start, reload and stop ("New worker
forked", "Proxy web stopped") go to debug, and what remains is logged in the router's format
with the route it concerns, so the pod log has nothing a newcomer must learn to ignore.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from haproxy_egress.background import Background
from haproxy_egress.haproxy.stderr import parse_stderr

log = logging.getLogger("haproxy_egress.haproxy")

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class StderrRelay(Background):
    """Owns the pipe haproxy's stderr is dup'ed to (`write_fd`, kept open across haproxy
    restarts) and logs each line it reads; `routes` gives the route names of the live config."""

    def __init__(self, routes: Callable[[], frozenset[str]]) -> None:
        super().__init__("haproxy-stderr")
        # Non-inheritable: only the child it is dup'ed into as fd 2 writes to it.
        self._read_fd, self.write_fd = os.pipe()
        self._routes = routes

    def _run(self) -> None:
        # This thread must outlive any one bad line: a pipe nobody reads would fill up and
        # block haproxy's master on its next write to stderr.
        with os.fdopen(self._read_fd, "r", encoding="utf-8", errors="replace") as pipe:
            for line in pipe:
                try:
                    if line.strip():
                        self.relay(line)
                except Exception as exc:  # keep reading, whatever one line did
                    log.error("could not relay haproxy's line %r: %r", line[:200], exc)

    def relay(self, line: str) -> None:
        """Log one of haproxy's lines at its level, with its route."""
        parsed = parse_stderr(line)
        level = _LEVELS[parsed.level]
        if not log.isEnabledFor(level):
            return  # a reload of 10,000 routes prints 10,000 routine lines: no work for them
        route = parsed.route(self._routes())
        where = f"route {route}: " if route else ""
        log.log(level, "haproxy: %s%s", where, parsed.text)

    def stop(self) -> None:
        """Close the write end: the reader ends once haproxy's copies are closed too."""
        if not self._stop.is_set():
            os.close(self.write_fd)
        super().stop()
