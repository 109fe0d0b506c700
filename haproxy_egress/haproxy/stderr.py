"""What haproxy prints on stderr ("[WARNING]  (41) : Server web/x-1 is DOWN, ..."): each
line's level as the router relays it, the proxy it concerns, and haproxy's own words."""

from __future__ import annotations

import re
from dataclasses import dataclass

_MESSAGE = re.compile(r"^\[(?P<level>[A-Z]+)\]\s+\(\d+\)\s*:\s*(?P<text>.*)$")
# Lines every start, reload or stop prints: nothing to act on, so debug level.
_ROUTINE = re.compile(
    r"^(haproxy version is |path to executable is |New worker \(\d+\) forked|Loading success"
    r"|Reloading HAProxy|Proxy \S+ stopped \(|(Former|Current) worker \(\d+\) exited with code 0"
    r"|Exiting Master process|All workers exited|Stopping (frontend|backend|proxy) )"
)
# A name's answers filling a DNS slot: news, not a problem (2.6 and 3.0 word it differently).
_DNS_NEWS = re.compile(
    r"changed its IP from |: IP changed from '|is UP/READY \(resolves again\)"
    r"|administratively READY thanks to valid DNS answer"
)
# The proxy (frontend or backend) a line is about: "Server B/S", "Proxy P", "frontend 'F'".
_PROXY = re.compile(
    r"(?:^|Server |Proxy |proxy |backend '|frontend '|backend |frontend )"
    r"(?P<name>[a-z0-9][a-z0-9._-]*)(?:/|'| )"
)
# The backends a proxy route adds to its own name (templates/policy.cfg.j2).
_ROUTE_BACKENDS = re.compile(r"-(tunnel|http|pooled)$")


@dataclass(frozen=True)
class StderrLine:
    """One line haproxy printed, as the router relays it: a logging level (debug for the
    routine lines of a start or reload), the proxy it concerns, and haproxy's own words."""

    level: str  # "debug", "info", "warning" or "error"
    text: str
    proxy: str | None = None

    def route(self, routes: frozenset[str]) -> str | None:
        """The route the line concerns, when its proxy is one of `routes` (or one of their
        backends); None for the router's own sections."""
        if self.proxy is None:
            return None
        if self.proxy in routes:
            return self.proxy
        base = _ROUTE_BACKENDS.sub("", self.proxy)
        return base if base in routes else None


def parse_stderr(line: str) -> StderrLine:
    """A line of haproxy's stderr; lines without haproxy's `[LEVEL] (pid) :` prefix (a Lua
    print, a crash message) are warnings as they are."""
    text = line.rstrip("\n")
    m = _MESSAGE.match(text)
    if m is None:
        return StderrLine("warning", text)
    body = m["text"].strip()
    if m["level"] == "ALERT":
        level = "error"
    elif _ROUTINE.match(body):
        level = "debug"
    elif m["level"] == "NOTICE" or _DNS_NEWS.search(body):
        level = "info"
    else:
        level = "warning"
    found = _PROXY.search(body)
    return StderrLine(level, body, found["name"] if found else None)
