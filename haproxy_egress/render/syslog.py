"""Remote syslog targets → haproxy `ring` sections and the `log ring@…` lines that feed them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from haproxy_egress.config.logtargets import RING_PREFIX, Logging, SyslogTarget

# haproxy's own syslog format for each `format:` of a target: rfc5424 has a header (and
# octet counting frames it); json sends the line alone, for receivers that read JSON lines.
_HAPROXY_FORMAT = {"rfc5424": "rfc5424", "json": "raw"}
# Lines up to the stdout sink's length (`len 8192`): a line is never cut for one sink only.
MAX_LINE = 8192


@dataclass(frozen=True)
class Ring:
    """One target's ring: its name, the format of its lines and its server line."""

    name: str
    target: SyslogTarget
    client_cert: Path | None  # the staged PEM (RunDir.syslog_certs), when the target has one

    @property
    def format(self) -> str:
        """haproxy's format keyword for this ring's lines."""
        return _HAPROXY_FORMAT[self.target.format]

    @property
    def server(self) -> str:
        """The ring's `server` line arguments after its name: address, framing, TLS."""
        t = self.target
        parts = [t.hostport, "log-proto octet-count"]
        if t.transport == "tls":
            # Verification is never off: an audit trail sent to an unverified peer is not one.
            parts += ["ssl verify required", f"ca-file {t.ca_file}"]
            if self.client_cert is not None:
                parts.append(f"crt {self.client_cert}")
            if t.host_is_name:
                parts.append(f"verifyhost {t.host}")
        return " ".join(parts)


def rings(logging: Logging, cert_dir: Path) -> tuple[Ring, ...]:
    """One ring per target, named `egress_syslog_<n>` (the loss watch finds them by it)."""
    out = []
    for i, target in enumerate(logging.syslog, start=1):
        name = f"{RING_PREFIX}{i}"
        cert = cert_dir / f"{name}.pem" if target.client_cert_dir else None
        out.append(Ring(name, target, cert))
    return tuple(out)


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


__all__ = ["MAX_LINE", "ClientCert", "Ring", "client_certs", "rings"]
