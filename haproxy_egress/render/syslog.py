"""Remote syslog targets → haproxy `ring` sections and the `log ring@…` lines that feed them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from haproxy_egress.config.logtargets import RING_PREFIX, Logging, Receiver, SyslogTarget

# haproxy's own syslog format for each `format:` of a target: rfc5424 has a header (and
# octet counting frames it); json sends the line alone, for receivers that read JSON lines.
_HAPROXY_FORMAT = {"rfc5424": "rfc5424", "json": "raw"}
# Lines up to the stdout sink's length (`len 8192`): a line is never cut for one sink only.
MAX_LINE = 8192


# haproxy's `mode log` backends (2.9+): a target with a failover receiver is one of these,
# `balance sticky` sending every line to the first server that is up.
LOG_BACKENDS_SINCE = (2, 9)
# The two servers of such a backend; each has its own implicit ring, which `show events` lists
# as `<backend>/<server>`.
SERVER_NAMES = ("primary", "failover")


@dataclass(frozen=True)
class Server:
    """One receiver of a target: its name in haproxy and its server line arguments."""

    name: str
    label: str  # the `target` label of the loss counter
    line: str


@dataclass(frozen=True)
class Ring:
    """One target's ring (or, with a failover receiver, its log backend): its name, the
    format of its lines and its servers."""

    name: str
    target: SyslogTarget
    client_cert: Path | None  # the staged PEM (RunDir.syslog_certs), when the target has one

    @property
    def format(self) -> str:
        """haproxy's format keyword for this ring's lines."""
        return _HAPROXY_FORMAT[self.target.format]

    @property
    def failover(self) -> bool:
        """A log backend with two servers (haproxy 2.9+), not a ring."""
        return self.target.failover is not None

    @property
    def server(self) -> str:
        """The ring's `server` line arguments after its name: address, framing, TLS."""
        return self._line(self.target.receiver)

    @property
    def servers(self) -> tuple[Server, ...]:
        """The log backend's servers, the primary receiver first."""
        return tuple(
            Server(name, r.label, self._line(r))
            for name, r in zip(SERVER_NAMES, self.target.receivers, strict=False)
        )

    @property
    def sinks(self) -> dict[str, str]:
        """haproxy's name of each ring this target writes to → the receiver's label."""
        if not self.failover:
            return {self.name: self.target.label}
        return {f"{self.name}/{s.name}": s.label for s in self.servers}

    def _line(self, receiver: Receiver) -> str:
        t = self.target
        parts = [receiver.hostport, "log-proto octet-count"]
        if t.transport == "tls":
            # Verification is never off: an audit trail sent to an unverified peer is not one.
            parts += ["ssl verify required", f"ca-file {t.ca_file}"]
            if self.client_cert is not None:
                parts.append(f"crt {self.client_cert}")
            if receiver.host_is_name:
                parts.append(f"verifyhost {receiver.host}")
        return " ".join(parts)


def rings(logging: Logging, cert_dir: Path) -> tuple[Ring, ...]:
    """One ring per target, named `egress_syslog_<n>` (the loss watch finds them by it)."""
    out = []
    for i, target in enumerate(logging.syslog, start=1):
        name = f"{RING_PREFIX}{i}"
        cert = cert_dir / f"{name}.pem" if target.client_cert_dir else None
        out.append(Ring(name, target, cert))
    return tuple(out)


def sink_labels(logging: Logging) -> dict[str, str]:
    """Every ring the targets write to (by haproxy's name in `show events`) → its receiver's
    label; the certificate path plays no part in the names."""
    return {k: v for ring in rings(logging, Path("/")) for k, v in ring.sinks.items()}


def version_tuple(version: str) -> tuple[int, int] | None:
    """(major, minor) of a haproxy version string such as '3.0.11-1+deb13u4'; None if not one."""
    major, _, rest = version.partition(".")
    minor = rest.split(".", 1)[0].split("-", 1)[0]
    if not (major.isdigit() and minor.isdigit()):
        return None
    return int(major), int(minor)


def failover_problems(logging: Logging, haproxy_version: str) -> list[tuple[str, str]]:
    """(YAML path, message) for each failover this haproxy cannot do: a log backend needs 2.9
    (an unknown version is taken as able: `haproxy -c` then has the last word)."""
    found = version_tuple(haproxy_version)
    if found is None or found >= LOG_BACKENDS_SINCE:
        return []
    return [
        (
            f"logging.syslog[{i}].failover",
            f"needs haproxy 2.9 or later (a log backend); this haproxy is {haproxy_version}: "
            "list the second receiver as its own target instead (it then gets every line too)",
        )
        for i, target in enumerate(logging.syslog)
        if target.failover is not None
    ]


@dataclass(frozen=True)
class ClientCert:
    """A PEM to stage for a ring's server: made from a kubernetes.io/tls Secret's mount."""

    pem: Path  # under RunDir.syslog_certs
    secret_dir: Path  # holds tls.crt and tls.key
    where: str  # the YAML path, for a problem


def client_certs(logging: Logging, cert_dir: Path) -> tuple[ClientCert, ...]:
    """The client certificates the rings load, each with the Secret it is made from."""
    return tuple(
        ClientCert(ring.client_cert, Path(ring.target.client_cert_dir), f"logging.syslog[{i}]")
        for i, ring in enumerate(rings(logging, cert_dir))
        if ring.client_cert is not None and ring.target.client_cert_dir is not None
    )


__all__ = [
    "MAX_LINE",
    "ClientCert",
    "Ring",
    "Server",
    "client_certs",
    "failover_problems",
    "rings",
    "sink_labels",
    "version_tuple",
]
