"""The model's scalar types and their validators: names, durations, endpoints, listeners,
addresses and client networks, and the frozen base every model extends; no I/O.

Anything that reaches haproxy.cfg is checked here against a strict pattern, so the template
can trust it and no input can smuggle in a directive.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from functools import cache, lru_cache
from typing import Annotated

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    IPvAnyAddress,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import PydanticCustomError

from haproxy_egress.config.addresses import (
    IPAddress,
    canonical_ipv4,
    ip_or_none,
    join_host_port,
    listen_address,
    looks_like_ipv4,
    normalize_host,
    parse_endpoint,
    parse_listen,
    parse_network,
    parse_port,
)

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_DURATION = re.compile(r"^([0-9]{1,9})(us|ms|s|m|h|d)$")
_UNIT_MS = {"us": 0.001, "ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
# Printable ASCII without blanks, quotes, backslash, '#' or '$': safe unquoted in haproxy.cfg.
SAFE_TOKEN = r"^[A-Za-z0-9!%&()*+,\-./:;<=>?@\[\]^_`{|}~]{1,128}$"
HTTP_PATH = r"^/[A-Za-z0-9!%&()*+,\-./:;=?@_~]{0,255}$"


def _duration_ms(value: object) -> int:
    """'5s', '500ms', '1h' → milliseconds; a bare number is refused (seconds or ms?)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"must be a duration such as 5s, 500ms, 1h (got {value!r})")
    text = str(value).strip()
    if text.isdigit():
        raise ValueError(f"duration {text!r} needs a unit: {text}s, {text}ms, {text}m, ...")
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"must be a duration such as 5s, 500ms, 1h (got {text!r})")
    ms = int(match.group(1)) * _UNIT_MS[match.group(2)]
    if not 1 <= ms <= 24 * 86_400_000:
        raise ValueError(f"duration {text!r} out of range 1ms..24d")
    if ms != int(ms):  # '1500us' would silently become 1ms: haproxy times are whole ms here
        raise ValueError(f"duration {text!r} is not a whole number of milliseconds")
    return int(ms)


Duration = Annotated[
    int,
    BeforeValidator(_duration_ms),
    WithJsonSchema({"type": "string", "pattern": _DURATION.pattern, "examples": ["5s", "1h"]}),
]


@lru_cache(maxsize=1024)  # a config has a handful of distinct times, printed for every route
def format_duration(ms: int) -> str:
    """Milliseconds back into the shortest exact haproxy time string."""
    for unit in ("d", "h", "m", "s"):
        size = int(_UNIT_MS[unit])
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


# Unknown keys are errors (a typo must never be silently ignored); text is stripped.
STRICT = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Frozen(BaseModel):
    """Base: immutable, strict (`STRICT`)."""

    model_config = ConfigDict(frozen=True, **STRICT)


# Endpoints and listeners are slotted dataclasses, not models: a route keeps them for as long
# as the router runs, and a model gives every instance a dict and a set of the fields its
# input named (at 10,000 routes, 30,000 of them were 9 MB of the supervisor's memory). They
# validate as a model would (`STRICT`).


@pydantic_dataclass(frozen=True, slots=True, config=STRICT)
class Endpoint:
    """A destination: a DNS name or IP literal, and a port."""

    host: str
    port: int

    @property
    def ip(self) -> IPAddress | None:
        """The address when the host is an IP literal, else None (a name to resolve)."""
        return ip_or_none(self.host)

    @property
    def hostport(self) -> str:
        """host:port, with brackets around IPv6 literals, as haproxy and URLs want it."""
        return join_host_port(self.host, self.port)

    @property
    def server_name(self) -> str:
        """A readable haproxy server name (also the `server` label in metrics)."""
        return f"{self.host.replace(':', '-')}_{self.port}"


def _ipv4_endpoint(text: str) -> dict[str, object] | None:
    """'a.b.c.d:port' with a canonical IPv4 literal, without the general parser, or None.

    inet_pton takes exactly the canonical dotted quad (no blanks, leading zeros or short
    forms), so whatever it accepts, parse_endpoint would have returned unchanged; everything
    else goes the long way. Destinations are mostly such literals, and parsing each through
    ipaddress was a third of validating 10,000 routes.
    """
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit():
        return None
    if not canonical_ipv4(host):
        return None
    # parse_port's own rule for a short run of ASCII digits, inline; anything else (such as
    # 0 or 99999) goes through it for its message.
    value = int(port) if port.isascii() and len(port) <= 5 else 0
    return {"host": host, "port": value if 1 <= value <= 65535 else parse_port(port)}


def _endpoint(value: object) -> object:
    """Accept 'host:port' strings as well as {host, port} mappings."""
    if isinstance(value, bool | int | float):
        raise ValueError(f"must be 'HOST:PORT' or {{host: ..., port: ...}} (got {value!r})")
    if isinstance(value, str):
        fast = _ipv4_endpoint(value)
        if fast is not None:
            return fast
        host, port = parse_endpoint(value, default_port=None)
        return {"host": host, "port": port}
    if isinstance(value, Mapping):
        out = dict(value)
        if "host" in out and isinstance(out["host"], str):
            out["host"] = normalize_host(out["host"])
        if "port" in out and isinstance(out["port"], str | int):
            out["port"] = parse_port(out["port"])
        return out
    return value


EndpointSpec = Annotated[
    Endpoint,
    BeforeValidator(_endpoint),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "examples": ["api.github.com:443", "[2001:db8::1]:443"]},
                {
                    "type": "object",
                    "properties": {
                        "host": {"type": "string"},
                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                    },
                    "required": ["host", "port"],
                    "additionalProperties": False,
                },
            ]
        }
    ),
]


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=STRICT)
class Listen:
    """Where a route accepts connections: an optional local address and a port."""

    address: str | None = None
    port: int

    @property
    def ip(self) -> IPAddress | None:
        """The listen address, parsed."""
        return None if self.address is None else ip_or_none(self.address)

    @property
    def bind(self) -> str:
        """The haproxy `bind` address; IPv6 listeners also take IPv4 (v4v6)."""
        ip = self.ip
        if ip is None:
            return f":{self.port}"
        return f"[{self.address}]:{self.port}" if ip.version == 6 else f"{ip}:{self.port}"

    @property
    def is_v6(self) -> bool:
        """True for an IPv6 listen address."""
        ip = self.ip
        return ip is not None and ip.version == 6

    @property
    def is_wildcard(self) -> bool:
        """No address, 0.0.0.0 or '::': the listener takes the port on every address."""
        ip = self.ip
        return ip is None or ip.is_unspecified

    def overlaps(self, other: Listen) -> bool:
        """Same port and the same or a wildcard address: both cannot own the traffic."""
        if self.port != other.port:
            return False
        return self.is_wildcard or other.is_wildcard or self.address == other.address

    def __str__(self) -> str:
        return self.bind if self.address else str(self.port)


def _listen(value: object) -> object:
    """A port, 'ADDR:PORT' or '[V6]:PORT'; other scalars get a message naming the forms."""
    if isinstance(value, str | int) and not isinstance(value, bool):
        address, port = parse_listen(value)
        return {"address": address, "port": port}
    if isinstance(value, Mapping):
        # The mapping form is held to what the text form takes: an IP literal (a host name
        # would leave no address to bind, i.e. every address), a port 1..65535.
        out = dict(value)
        if isinstance(out.get("address"), str):
            out["address"] = listen_address(out["address"])
        if isinstance(out.get("port"), str | int) and not isinstance(out["port"], bool):
            out["port"] = parse_port(out["port"])
        return out
    if not isinstance(value, Listen):
        raise ValueError(f"must be a port or 'ADDRESS:PORT' (got {value!r})")
    return value


ListenSpec = Annotated[
    Listen,
    BeforeValidator(_listen),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": 65535},
                {"type": "string", "examples": ["8443", "127.0.0.1:8443", "[::]:8443"]},
            ]
        }
    ),
]


def _no_zone(value: object) -> object:
    """Addresses are text: pydantic's IP types would take `5` as 0.0.0.5 and YAML's `no`
    (false) as 0.0.0.0, and they accept IPv6 zone ids with any text (newlines too) after '%'."""
    if not isinstance(value, str):
        raise ValueError(f"must be an IP address written as text (got {value!r})")
    if "%" in value:
        raise ValueError(f"IPv6 zone ids ('%...') are not supported (got {value!r})")
    return value


SourceAddress = Annotated[IPvAnyAddress, BeforeValidator(_no_zone)]


@cache
def _client_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """addresses.parse_network (as policy rules), parsed once per distinct text: one
    allow_from list usually stands in every route (through `defaults:`), and parsing it again
    for each of 10,000 routes was a tenth of their validation. Networks are immutable."""
    try:
        return parse_network(text)
    except ValueError as exc:
        raise PydanticCustomError(
            "value_error",
            "invalid network {text}: {reason}",
            {"text": repr(text), "reason": str(exc)},
        ) from None


def _network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return _client_network(str(_no_zone(value)))


ClientNetwork = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network,
    PlainValidator(_network),
    PlainSerializer(str, when_used="json-unless-none"),
    WithJsonSchema({"type": "string", "format": "ipvanynetwork"}),
]


def _dns_endpoint(value: object) -> object:
    if isinstance(value, str):
        host, port = parse_endpoint(value, default_port=53)
        if looks_like_ipv4(host) or ":" in host:
            return {"host": host, "port": port}
        raise ValueError(f"nameserver must be an IP address (got {value!r})")
    return _endpoint(value)


EndpointSpecDNS = Annotated[
    Endpoint,
    BeforeValidator(_dns_endpoint),
    WithJsonSchema({"type": "string", "examples": ["10.0.0.10", "127.0.0.1:5353"]}),
]
