"""A route's TLS material, checked: client certificate and key, CA bundle, CRL; no I/O.

The files were read into the snapshot (config/sources/tlsfiles.py). Here each one is parsed
and checked before haproxy ever sees it: a key that does not match its certificate, an
expired certificate, a CA bundle or CRL that does not parse are problems naming the route,
the field and the file, and the last good material keeps running. What haproxy gets is
re-encoded PEM without blank lines, so the same text can go through the runtime API's
`<<` payload (which ends at the first empty line).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from haproxy_egress.config.document import Config
from haproxy_egress.config.sources.tlsfiles import TlsFile
from haproxy_egress.config.tls import TlsOrigination, material_paths
from haproxy_egress.errors import Problem

__all__ = ["Identity", "RouteTls", "describe", "load_material", "material_paths_of"]


@dataclass(frozen=True)
class Identity:
    """What a certificate says about itself, for logs, `explain` and the info metric."""

    subject: str  # RFC 4514, e.g. CN=egress,O=Example
    issuer: str
    not_after: float  # Unix time in seconds
    serial: str  # hex, upper case, as haproxy's `show ssl cert` prints it

    @property
    def not_after_text(self) -> str:
        """The expiry as an ISO 8601 UTC time, for people."""
        return datetime.fromtimestamp(self.not_after, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class RouteTls:
    """One TLS-originating route's checked material, as haproxy will load it."""

    route: str
    settings: TlsOrigination
    client: Identity | None = None
    client_pem: str | None = None  # chain then key: haproxy's `crt` file
    ca_pem: str | None = None
    ca_not_after: float | None = None  # the earliest expiry in the bundle
    crl_pem: str | None = None
    crl_next_update: float | None = None


def describe(tls: TlsOrigination, host: str, material: RouteTls | None) -> str:
    """In words, for `explain` and `check`: the name verified, against what, and the client
    certificate presented (subject, expiry)."""
    name = tls.name_for(host)
    if tls.insecure_skip_verify:
        verify = f"TLS to {name} NOT VERIFIED (insecure_skip_verify)"
    else:
        ca = tls.ca_file or "the system CA store"
        crl = f", CRL {tls.crl_file}" if tls.crl_file else ""
        verify = f"TLS to {name} (name and chain verified against {ca}{crl})"
    if tls.client_cert_dir is None:
        return f"{verify}, no client certificate"
    client = material.client if material is not None else None
    if client is None:
        return f"{verify}, client certificate from {tls.client_cert_dir} (not readable)"
    return (
        f"{verify}, client certificate {client.subject} issued by {client.issuer}, "
        f"not after {client.not_after_text} ({tls.client_cert_dir})"
    )


def material_paths_of(config: Config) -> tuple[str, ...]:
    """Every TLS file the routes of `config` name."""
    return tuple(sorted({p for r in config.tls_routes if r.tls for p in material_paths(r.tls)}))


def load_material(
    config: Config, files: Iterable[TlsFile], now: float
) -> tuple[tuple[RouteTls, ...], list[Problem]]:
    """Every TLS-originating route's checked material, and every problem found."""
    if not config.tls_routes:
        return (), []
    # cryptography (about 9 MB of the supervisor's RSS) is loaded only once a route
    # originates TLS: most routers never need it.
    from haproxy_egress.config import tlscheck  # noqa: PLC0415

    by_path = {f.path: f for f in files}
    origins = dict(config.origins)
    out: list[RouteTls] = []
    problems: list[Problem] = []
    for route in config.tls_routes:
        if route.tls is None:
            continue
        checker = tlscheck.Checker(route, origins.get(route.name, ""), by_path)
        material = checker.check(route.tls, now)
        problems += checker.problems
        out.append(material)
    return tuple(out), problems
