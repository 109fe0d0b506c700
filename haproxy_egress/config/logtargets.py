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
    # A second receiver (same transport, CA, client certificate and format) that takes the
    # lines while the first is down: haproxy 2.9 or later (a log backend), docs/operations.md.
    failover: (
        Annotated[
            str,
            BeforeValidator(_address),
            WithJsonSchema({"type": "string", "examples": ["siem-2.corp.example:6514"]}),
        ]
        | None
    ) = None

    @model_validator(mode="after")
    def _tls_coherent(self) -> SyslogTarget:
        if self.transport == "tls" and self.ca_file is None:
            raise ValueError("transport tls needs ca_file (the CA that signed the receiver)")
        if self.transport == "tcp" and (self.ca_file or self.client_cert_dir):
            raise ValueError("ca_file and client_cert_dir need transport: tls")
        if self.failover is not None and self.failover_receiver.label == self.receiver.label:
            raise ValueError(f"failover {self.failover!r} is the target's own address")
        return self

    @property
    def receiver(self) -> Receiver:
        """The receiver at `address`."""
        return Receiver.of(self.address, self.transport)

    @property
    def failover_receiver(self) -> Receiver:
        """The receiver at `failover` (only when it is set)."""
        assert self.failover is not None
        return Receiver.of(self.failover, self.transport)

    @property
    def receivers(self) -> tuple[Receiver, ...]:
        """The receiver, then the failover one if any."""
        if self.failover is None:
            return (self.receiver,)
        return (self.receiver, self.failover_receiver)

    @property
    def label(self) -> str:
        """The `target` label of the loss counter: host:port, as the ring's description."""
        return self.receiver.label


class Receiver(_Strict):
    """One syslog receiver's address, as haproxy's server line and the loss counter name it."""

    host: str  # name or IP literal, IPv6 without brackets
    port: int

    @classmethod
    def of(cls, address: str, transport: str) -> Receiver:
        """'host[:port]' with the transport's default port (514 tcp, 6514 tls)."""
        host, port = split_host_port(address)
        return cls(
            host=normalize_host(host),
            port=DEFAULT_PORT[transport] if port is None else parse_port(port),
        )

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
        """The `target` label of the loss counter: host:port."""
        return self.hostport


def _unique(targets: tuple[SyslogTarget, ...]) -> tuple[SyslogTarget, ...]:
    seen: set[str] = set()
    for label in (r.label for t in targets for r in t.receivers):
        if label in seen:
            raise ValueError(f"syslog target {label} is listed twice")
        seen.add(label)
    return targets


class Logging(_Strict):
    """Where log lines go besides stdout."""

    syslog: Annotated[tuple[SyslogTarget, ...], AfterValidator(_unique), Field(max_length=8)] = ()


__all__ = ["RING_PREFIX", "Logging", "Receiver", "SyslogTarget"]
