"""The retired Red Hat egress router dialects: redirect mode and DNS proxy mode.

Users point haproxy-egress at the exact lines they already have, either as the environment
variables the old pods took or as ConfigMap keys of the same name (so a mounted legacy ConfigMap
hot-reloads like a YAML key):

- `EGRESS_DESTINATION` (redirect mode): `PORT tcp IP [PORT]` per line; a bare IP as the last line
  was a fallback for every other port; `udp`/`sctp` lines existed too.
- `EGRESS_DNS_PROXY_DESTINATION` (DNS proxy mode): `PORT HOST [PORT]`, HOST an IP or a DNS name.
- `EGRESS_SOURCE`: the address every outgoing connection leaves from (`defaults.source`).
- `EGRESS_GATEWAY`: accepted and ignored, see `GATEWAY_IGNORED`.

The line reader (`read_lines`) is shared with the HTTP proxy dialect
(`EGRESS_HTTP_PROXY_DESTINATION`), which has the same blank/comment/line-number conventions.
The originals' error messages are kept, with the line number added; their known defects
(unchecked IPv4 octets, tabs and CRLF refused, no IPv6, no inline comments, port uniqueness
ignoring the protocol) are fixed.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from haproxy_egress.config.addresses import looks_like_ipv4, normalize_host, parse_ip
from haproxy_egress.config.sources.raw import Fragment, RawRoute
from haproxy_egress.errors import Problem

log = logging.getLogger(__name__)

REDIRECT = "EGRESS_DESTINATION"
DNS_PROXY = "EGRESS_DNS_PROXY_DESTINATION"
SOURCE = "EGRESS_SOURCE"
GATEWAY = "EGRESS_GATEWAY"
KEYS = (REDIRECT, DNS_PROXY, SOURCE, GATEWAY)

# Route names per dialect, followed by the local port: stable across reloads and readable in
# metrics (`redirect-80`, `dns-proxy-8443`).
NAME_PREFIX = {REDIRECT: "redirect", DNS_PROXY: "dns-proxy"}

REDIRECT_FORM = "expected 'PORT tcp IP' or 'PORT tcp IP DESTPORT'"
DNS_PROXY_FORM = "expected 'PORT HOST' or 'PORT HOST DESTPORT' (HOST an IP or a DNS name)"
FALLBACK_ADVICE = (
    "a fallback for every other port cannot be carried (haproxy needs one listener per port, "
    "and a listener on every port is not sane): list each port you use as 'PORT tcp IP'"
)
GATEWAY_IGNORED = (
    "EGRESS_GATEWAY is not needed and is ignored: the old router set its own default route "
    "through it; haproxy-egress leaves routing to the pod's network (a Multus/macvlan "
    "attachment brings its own gateway) and only chooses the source address"
)

# A comment starts at a '#' at the start of a line or after a blank, so a stray '#' inside a
# token keeps the token invalid instead of silently cutting it short.
_COMMENT = re.compile(r"(?:^|\s)#.*\Z", re.DOTALL)
# Ten digits at most: enough to quote an out-of-range port back ("Invalid port: 800000"), and
# int() of a megabyte of digits is not something a config line should be able to ask for.
_DIGITS = re.compile(r"^[0-9]{1,10}$")


@dataclass(frozen=True)
class Line:
    """One meaningful line of a legacy value: its 1-based number, its text without the comment
    and surrounding blanks, and the line as written (for messages and migration comments)."""

    number: int
    text: str
    raw: str

    @property
    def fields(self) -> list[str]:
        """The whitespace-separated fields (any run of blanks or tabs separates)."""
        return self.text.split()

    @property
    def where(self) -> str:
        """The `path` of problems about this line."""
        return f"line {self.number}"


def decode(data: bytes | str, source: str) -> tuple[str | None, list[Problem]]:
    """Bytes of a ConfigMap key (or an env value) as text, or a problem saying why not."""
    if isinstance(data, str):
        return data, []
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        return None, [Problem(source, "", f"not UTF-8 text (byte {exc.start})")]


def read_lines(text: str) -> list[Line]:
    """The non-blank, non-comment lines of `text`, numbered as an editor numbers them.

    LF and CRLF line endings, tabs as separators, `#` comments on their own line or after a
    value are all accepted (the originals refused CRLF, tabs and inline comments).
    """
    lines: list[Line] = []
    # A UTF-8 byte order mark, as Windows editors write it, is not part of the first line.
    for number, raw_line in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        raw = raw_line.removesuffix("\r")
        # Fields joined by one space, so messages quote the line the same way however it was
        # spaced (a tab shows as nothing in most terminals).
        content = " ".join(_COMMENT.sub("", raw).split())
        if content:
            lines.append(Line(number, content, raw))
    return lines


@dataclass(frozen=True)
class Rejected:
    """A line that cannot be carried over, and why (becomes a problem, or a migration comment)."""

    line: Line
    message: str


@dataclass
class Parsed:
    """What one legacy value yielded: routes in the model's shape, and the lines refused."""

    source: str
    dialect: str
    routes: list[tuple[Line, dict[str, Any]]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # about the value as a whole

    def all_problems(self) -> list[Problem]:
        """Whole-value problems and one problem per refused line."""
        return self.problems + [
            Problem(self.source, r.line.where, r.message) for r in self.rejected
        ]


def _port(text: str) -> int | None:
    """A port 1..65535, or None (the caller reports it in the originals' words)."""
    value = int(text)
    return value if 1 <= value <= 65535 else None


def _invalid_port(text: str) -> str:
    return f"Invalid port: {int(text)}, must be in the range 1 to 65535"


def _bad(line: Line, form: str, reason: str = "") -> Rejected:
    detail = f": {reason}" if reason else f": {form}"
    return Rejected(line, f"Bad destination '{line.text}'{detail}")


def _ip_literal(text: str) -> str:
    """An IPv4 or IPv6 literal (brackets allowed around IPv6) in canonical form."""
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    return str(parse_ip(bare))


def _route(dialect: str, listen: int, host: str, port: int) -> dict[str, Any]:
    return {
        "name": f"{NAME_PREFIX[dialect]}-{listen}",
        "listen": listen,
        "destinations": [{"host": host, "port": port}],
    }


# What one line of a dialect yields: its (local port, host, destination port), or why it is
# refused. `last` says whether it is the value's last line (where a fallback IP used to go).
_LineParser = Callable[[Line, bool], tuple[int, str, int] | Rejected]

# The originals' words for a local port a previous line already took.
_TAKEN = {
    REDIRECT: "localport {listen} is already used",
    DNS_PROXY: "Proxy port {listen} already used",
}


def _parse(text: str, source: str, dialect: str, parse_line: _LineParser) -> Parsed:
    """The lines of one dialect into routes and refused lines; a local port is taken by the
    first line that is carried (a refused line takes none)."""
    parsed = Parsed(source, dialect)
    lines = read_lines(text)
    used: dict[int, int] = {}  # local port → line that took it
    for index, line in enumerate(lines):
        result = parse_line(line, index + 1 == len(lines))
        if isinstance(result, Rejected):
            parsed.rejected.append(result)
            continue
        listen, host, dest_port = result
        first = used.get(listen)
        if first is not None:
            taken = _TAKEN[dialect].format(listen=listen)
            parsed.rejected.append(
                Rejected(line, f"{taken}, must be unique for each destination (line {first})")
            )
            continue
        used[listen] = line.number
        parsed.routes.append((line, _route(dialect, listen, host, dest_port)))
    return parsed


def _ports(line: Line, listen: str, dest: list[str]) -> tuple[int, int] | Rejected:
    """The local and destination ports (the local one when none is given), or the refusal of
    the first one out of range."""
    bad_ports = [f for f in (listen, *dest) if _port(f) is None]
    if bad_ports:
        return Rejected(line, _invalid_port(bad_ports[0]))
    return int(listen), int(dest[0]) if dest else int(listen)


def _redirect_line(line: Line, last: bool) -> tuple[int, str, int] | Rejected:
    """One `PORT tcp IP [DESTPORT]` line."""
    fields = line.fields
    if len(fields) == 1:
        try:
            _ip_literal(fields[0])
        except ValueError as exc:
            return _bad(line, REDIRECT_FORM, f"{exc}; {REDIRECT_FORM}")
        if not last:
            return Rejected(line, f"fallback IP must be the last line; besides, {FALLBACK_ADVICE}")
        return Rejected(line, f"fallback IP {fields[0]}: {FALLBACK_ADVICE}")
    if len(fields) not in (3, 4) or not _DIGITS.match(fields[0]):
        return _bad(line, REDIRECT_FORM)
    proto = fields[1].lower()
    if proto not in ("tcp", "udp", "sctp"):
        return _bad(line, REDIRECT_FORM, f"unknown protocol {fields[1]!r}")
    if len(fields) == 4 and not _DIGITS.match(fields[3]):
        return _bad(line, REDIRECT_FORM)
    try:
        host = _ip_literal(fields[2])
    except ValueError as exc:
        hint = REDIRECT_FORM
        if not looks_like_ipv4(fields[2]) and ":" not in fields[2]:
            hint = "redirect mode takes IP addresses; put DNS names in " + DNS_PROXY
        return _bad(line, REDIRECT_FORM, f"{exc}; {hint}")
    ports = _ports(line, fields[0], fields[3:])
    if isinstance(ports, Rejected):
        return ports
    if proto != "tcp":
        # Refused before it can take its port: `80 udp` next to `80 tcp` is no conflict.
        return Rejected(
            line,
            f"{proto} cannot be carried: haproxy proxies TCP only. Remove this line and "
            f"give {proto} traffic to {host} a kernel path (an egress IP for the "
            f"namespace, or a CNI egress router)",
        )
    return ports[0], host, ports[1]


def parse_redirect(text: str, source: str = REDIRECT) -> Parsed:
    """Redirect-mode lines (`PORT tcp IP [DESTPORT]`) into routes and refused lines."""
    return _parse(text, source, REDIRECT, _redirect_line)


def _dns_host(text: str) -> str:
    """An IP literal, or a DNS name with at least one dot (as the original's regex wanted)."""
    host = normalize_host(text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if "." not in host:
            raise ValueError(
                f"{text!r} is not a fully qualified name (haproxy's resolver applies no search "
                f"domains: write e.g. {text}.example.com or the service's full name)"
            ) from None
    return host


def _dns_proxy_line(line: Line, last: bool) -> tuple[int, str, int] | Rejected:
    """One `PORT HOST [DESTPORT]` line (`last` does not matter: this dialect had no fallback)."""
    fields = line.fields
    if len(fields) not in (2, 3) or not all(_DIGITS.match(f) for f in fields[0:1] + fields[2:]):
        return _bad(line, DNS_PROXY_FORM)
    try:
        host = _dns_host(fields[1])
    except ValueError as exc:
        return _bad(line, DNS_PROXY_FORM, str(exc))
    ports = _ports(line, fields[0], fields[2:])
    if isinstance(ports, Rejected):
        return ports
    return ports[0], host, ports[1]


def parse_dns_proxy(text: str, source: str = DNS_PROXY) -> Parsed:
    """DNS-proxy-mode lines (`PORT HOST [DESTPORT]`) into routes and refused lines."""
    return _parse(text, source, DNS_PROXY, _dns_proxy_line)


PARSERS = {REDIRECT: parse_redirect, DNS_PROXY: parse_dns_proxy}


def parse_source(value: str, source: str = SOURCE) -> tuple[str | None, list[Problem]]:
    """EGRESS_SOURCE as an address; the old router also took `IP/PREFIX` (for its macvlan
    interface), of which only the address matters here."""
    text = value.strip()
    if not text:
        return None, []
    bare = text.split("/", 1)[0] if text.count("/") == 1 else text
    try:
        address = str(parse_ip(bare))
        if "/" in text:
            ipaddress.ip_interface(text)
    except ValueError:
        return None, [
            Problem(
                source,
                "",
                f"unspecified or invalid: must be an IP address, optionally "
                f"with /PREFIX (got {text!r})",
            )
        ]
    return address, []


@dataclass(frozen=True)
class LegacyInput:
    """One legacy setting and where it came from: the environment or a ConfigMap key."""

    name: str  # EGRESS_DESTINATION, ...
    source: str  # "EGRESS_DESTINATION" (env) or "file EGRESS_DESTINATION" (ConfigMap key)
    text: str


def file_source(name: str) -> str:
    """The `source` of problems and routes read from the ConfigMap key `name`."""
    return f"file {name}"


def collect(
    files: Mapping[str, bytes], env: Mapping[str, str]
) -> tuple[list[LegacyInput], list[Problem]]:
    """The legacy settings present, from env vars and ConfigMap keys; both at once is refused,
    since which one should win is a guess and combining them duplicates every port."""
    inputs: list[LegacyInput] = []
    problems: list[Problem] = []
    for name in KEYS:
        in_env = name in env and env[name].strip() != ""
        data = files.get(name)
        if data is not None and in_env:
            problems.append(
                Problem(
                    file_source(name),
                    "",
                    f"{name} is also set as an environment variable: keep one of the two",
                )
            )
            continue
        if data is not None:
            text, decode_problems = decode(data, file_source(name))
            problems += decode_problems
            if text is not None:
                inputs.append(LegacyInput(name, file_source(name), text))
        elif in_env:
            inputs.append(LegacyInput(name, name, env[name]))
    return inputs, problems


def read_legacy(files: Mapping[str, bytes], env: Mapping[str, str]) -> list[Fragment]:
    """Fragments for every legacy setting found in the ConfigMap keys and the environment."""
    inputs, problems = collect(files, env)
    frags = [Fragment(source=p.source, problems=[p]) for p in problems]
    for item in inputs:
        frag = Fragment(source=item.source)
        if item.name in PARSERS:
            parsed = PARSERS[item.name](item.text, item.source)
            frag.problems += parsed.all_problems()
            frag.routes += [RawRoute(data, item.source, line.where) for line, data in parsed.routes]
        elif item.name == SOURCE:
            address, source_problems = parse_source(item.text, item.source)
            frag.problems += source_problems
            if address is not None:
                frag.defaults = {"source": address}
        elif item.name == GATEWAY and item.text.strip():
            # %r: a newline in the value must not start a forged log line
            log.info("%s=%r: %s", GATEWAY, item.text.strip(), GATEWAY_IGNORED)
        frags.append(frag)
    return frags
