"""The `logging:` section: remote syslog targets that receive every log line besides stdout.

Each target becomes one haproxy `ring` (a bounded buffer) forwarded over TCP or TLS with
octet counting, so a receiver that is slow or down never blocks traffic nor the stdout trail;
what the ring cannot hold is counted (docs/operations.md, "Remote syslog").
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from haproxy_egress.config.addresses import (
    ip_or_none,
    join_host_port,
    normalize_host,
    parse_port,
    split_host_port,
)

# A mounted file or directory: absolute, and nothing haproxy.cfg would read as syntax.
_PATH = re.compile(r"^/[A-Za-z0-9._/+-]{1,255}$")
DEFAULT_PORT = {"tcp": 514, "tls": 6514}
MIN_BUFFER, MAX_BUFFER = 64 * 1024, 256 * 1024 * 1024
# haproxy's ring names this router owns; the loss watch finds them by this prefix.
RING_PREFIX = "egress_syslog_"


class _Strict(BaseModel):
    """As the model's Frozen (which imports this module): immutable, no unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


def _path(value: str) -> str:
    if not _PATH.match(value) or "/../" in f"{value}/":
        raise ValueError(f"must be an absolute path of letters, digits and ._/+- (got {value!r})")
    return value


MountedPath = Annotated[str, AfterValidator(_path)]


def _address(value: object) -> object:
    """'host:port' as given; the host is checked here, the port may follow the transport."""
    if not isinstance(value, str):
        raise ValueError(f"must be 'HOST:PORT' (got {value!r})")
    host, port = split_host_port(value.strip())
    if not host:
        raise ValueError(f"missing host in {value!r}")
    normalize_host(host)
    if port is not None:
        parse_port(port)
    return value.strip()


class SyslogTarget(_Strict):
    """One receiver (a SIEM's syslog input): where, how, in which format."""

    address: Annotated[
        str,
        BeforeValidator(_address),
        WithJsonSchema({"type": "string", "examples": ["siem.corp.example:6514"]}),
    ]
    transport: Literal["tcp", "tls"] = "tls"
    # The CA that signed the receiver's certificate (tls: required; verification is never off).
    ca_file: MountedPath | None = None
    # A kubernetes.io/tls Secret's mount (tls.crt, tls.key): the client certificate, if the
    # receiver asks for one.
    client_cert_dir: MountedPath | None = None
    # rfc5424: a syslog header, then the line as stdout prints it; json: the line alone, for
    # receivers that parse JSON lines (the audit hook's lines are JSON objects).
    format: Literal["rfc5424", "json"] = "rfc5424"
    # The ring: how many bytes of lines wait for a receiver that is slow or restarting.
    buffer_size: int = Field(1024 * 1024, ge=MIN_BUFFER, le=MAX_BUFFER)

    @model_validator(mode="after")
    def _tls_coherent(self) -> SyslogTarget:
        if self.transport == "tls" and self.ca_file is None:
            raise ValueError("transport tls needs ca_file (the CA that signed the receiver)")
        if self.transport == "tcp" and (self.ca_file or self.client_cert_dir):
            raise ValueError("ca_file and client_cert_dir need transport: tls")
        return self

    @property
    def host(self) -> str:
        """The receiver's host (name or IP literal, IPv6 without brackets)."""
        return normalize_host(split_host_port(self.address)[0])

    @property
    def port(self) -> int:
        """The receiver's port: as given, else 514 (tcp) or 6514 (tls)."""
        port = split_host_port(self.address)[1]
        return DEFAULT_PORT[self.transport] if port is None else parse_port(port)

    @property
    def hostport(self) -> str:
        """host:port as haproxy's server line wants it (IPv6 in brackets)."""
        return join_host_port(self.host, self.port)

    @property
    def host_is_name(self) -> bool:
        """A DNS name (the TLS certificate is checked against it), not an IP literal."""
        return ip_or_none(self.host) is None

    @property
    def label(self) -> str:
        """The `target` label of the loss counter: host:port, as the ring's description."""
        return self.hostport


def _unique(targets: tuple[SyslogTarget, ...]) -> tuple[SyslogTarget, ...]:
    seen: set[str] = set()
    for t in targets:
        if t.label in seen:
            raise ValueError(f"syslog target {t.label} is listed twice")
        seen.add(t.label)
    return targets


class Logging(_Strict):
    """Where log lines go besides stdout."""

    syslog: Annotated[tuple[SyslogTarget, ...], AfterValidator(_unique), Field(max_length=8)] = ()


__all__ = ["RING_PREFIX", "Logging", "SyslogTarget"]
