"""Parsing of the address notations users write: host, host:port, [v6]:port, listen specs.

Pure functions that raise ValueError with a message fit for users; the model and every source
dialect share them so that "198.51.100.7:443" means the same thing everywhere.
"""

from __future__ import annotations

import ipaddress
import re
import socket

# RFC 1123 host names: labels of letters, digits and inner hyphens, 1..63 chars, 253 in all.
# Underscores are refused: they are not valid in host names and haproxy's resolver drops them.
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")
_PORT = re.compile(r"^[0-9]{1,5}$")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# The dots UTS #46 maps to '.': ideographic, fullwidth and halfwidth ideographic full stops.
DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


def a_labels(name: str) -> str:
    """A DNS name with every label as DNS carries it: Unicode labels become A-labels
    (`bücher.example` → `xn--bcher-kva.example`, IDNA 2008 with the UTS #46 mapping: case
    folded, the three other full stops read as dots) and each `xn--` label is checked, so both
    spellings of one name are one string. ASCII names without `xn--` are returned as they are.
    """
    dotted = name.translate(DOTS)
    if dotted.isascii() and "xn--" not in dotted.lower():
        return dotted
    # Imported here: its UTS #46 tables are 0.6 MB of the supervisor's memory, which a config
    # of ASCII names never needs.
    import idna  # noqa: PLC0415

    trailing = "." if dotted.endswith(".") else ""
    try:
        return idna.encode(dotted.rstrip("."), uts46=True).decode("ascii") + trailing
    except idna.IDNAError as exc:
        raise ValueError(f"not a valid international domain name: {exc}") from None


def parse_port(text: str | int, what: str = "port") -> int:
    """A TCP port 1..65535 from an int or a decimal string."""
    if isinstance(text, bool):
        raise ValueError(f"{what} must be a number, got {text!r}")
    if isinstance(text, int):
        value = text
    else:
        raw = text.strip()
        if not _PORT.match(raw):
            raise ValueError(f"{what} must be a number 1..65535 (got {text!r})")
        value = int(raw)
    if not 1 <= value <= 65535:
        raise ValueError(f"{what} {value} out of range 1..65535")
    return value


def _refuse_zone(text: str) -> None:
    """Python accepts any text after '%' as an IPv6 zone id (newlines included), and would
    hand it back in str(): refuse zones outright so no such text can reach haproxy.cfg."""
    if "%" in text:
        raise ValueError(f"IPv6 zone ids ('%...') are not supported: {text!r}")


def _packed_ipv4(text: str) -> bytes | None:
    """The four bytes of a canonical dotted quad, or None. inet_pton is as strict as
    ipaddress for IPv4 (no blanks, leading zeros or short forms) and ten times faster."""
    try:
        return socket.inet_pton(socket.AF_INET, text)
    except OSError:
        return None


def canonical_ipv4(text: str) -> bool:
    """A canonical dotted quad: what inet_pton takes (and ipaddress would give back as is)."""
    return _packed_ipv4(text) is not None


def ip_or_none(text: str) -> IPAddress | None:
    """`text` as an IP address when it is an IP literal, else None (a name to resolve)."""
    packed = _packed_ipv4(text)
    if packed is not None:  # the common case: from the bytes, without parsing the text again
        return ipaddress.IPv4Address(packed)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def parse_ip(text: str) -> IPAddress:
    """An IPv4 or IPv6 literal (no brackets, no zone); ValueError names the bad text."""
    _refuse_zone(text)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"not a valid IP address: {text!r}") from None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(text: str) -> Network:
    """An address or CIDR network, IPv6 with or without brackets; ValueError says why not.

    `allow_from`, client groups and policy rules share it, so the same text is taken or
    refused the same way everywhere, with the reason (host bits set, prefix out of range).
    """
    _refuse_zone(text)
    raw = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    address, slash, prefix = raw.partition("/")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError("not an IP address or network") from None
    bits = ip.max_prefixlen
    if slash and not (prefix.isdigit() and int(prefix) <= bits):
        shown = prefix if prefix.isprintable() else repr(prefix)  # a problem stays one line
        raise ValueError(f"prefix /{shown} is out of range (IPv{ip.version}: /0 to /{bits})")
    length = int(prefix) if slash else bits
    network = ipaddress.ip_network((ip, length), strict=False)
    if network.network_address != ip:
        raise ValueError(f"host bits set: did you mean {_written_like(text, network)}?")
    return network


def _written_like(text: str, network: Network) -> str:
    """The suggested network, with brackets when the user wrote them."""
    return f"[{network}]" if text.startswith("[") else str(network)


def looks_like_ipv4(text: str) -> bool:
    """True for dotted-quad lookalikes, so '300.1.1.1' is reported as a bad IP, not a name."""
    return bool(re.fullmatch(r"[0-9]+(\.[0-9]+){3}", text))


def normalize_host(text: str) -> str:
    """A destination host: IP literal (canonical form) or a DNS name (lower case, no final dot)."""
    host = text.strip()
    _refuse_zone(host)
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        try:
            return str(ipaddress.IPv6Address(inner))
        except ValueError:
            raise ValueError(f"not a valid IPv6 address: {inner!r}") from None
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"not a valid host: {text!r}") from None
    if looks_like_ipv4(host):
        return str(parse_ip(host))
    try:
        host = a_labels(host)
    except ValueError as exc:
        raise ValueError(f"{exc}: {text!r}") from None
    if not _HOSTNAME.match(host):
        raise ValueError(f"not a valid host name or IP address: {text!r}")
    return host.rstrip(".").lower()


def join_host_port(host: str, port: int) -> str:
    """host:port as haproxy's server lines and URLs want it: IPv6 literals in brackets."""
    if ":" not in host:  # neither an IPv6 literal nor bracketed: no parse needed
        return f"{host}:{port}"
    ip = ip_or_none(host)
    return f"[{host}]:{port}" if ip is not None and ip.version == 6 else f"{host}:{port}"


def split_host_port(text: str) -> tuple[str, str | None]:
    """Split 'host', 'host:port', '[v6]', '[v6]:port' or a bare IPv6 literal; no validation."""
    raw = text.strip()
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise ValueError(f"missing ']' in {text!r}")
        host, rest = raw[: end + 1], raw[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"unexpected text after ']' in {text!r}")
        return host, rest[1:]
    if raw.count(":") == 1:
        host, port = raw.split(":")
        return host, port
    return raw, None  # plain name, IPv4, or an unbracketed IPv6 literal (no port possible)


def parse_endpoint(text: str, default_port: int | None) -> tuple[str, int]:
    """'host[:port]' into (normalized host, port); the port falls back to default_port."""
    host, port = split_host_port(text)
    if not host:
        raise ValueError(f"missing host in {text!r}")
    normalized = normalize_host(host)
    if port is None:
        if default_port is None:
            raise ValueError(f"missing port in {text!r}")
        return normalized, default_port
    return normalized, parse_port(port)


def parse_listen(value: str | int) -> tuple[str | None, int]:
    """A listen spec: 8443, '8443', 'ADDR:8443' or '[V6]:8443' into (address or None, port)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return None, parse_port(value)
    if not isinstance(value, str):
        raise ValueError(f"must be a port or 'ADDRESS:PORT' (got {value!r})")
    if _PORT.match(value.strip()):
        return None, parse_port(value)
    host, port = split_host_port(value)
    if port is None:
        raise ValueError(f"missing port in {value!r}")
    return listen_address(host), parse_port(port)


def listen_address(host: str) -> str | None:
    """A listener's address: an IP literal ('[V6]' too) in canonical form, or None for every
    address ('*' or empty); anything else (a host name) raises ValueError."""
    host = host.strip()
    if host in ("*", ""):
        return None
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return str(parse_ip(bare))
