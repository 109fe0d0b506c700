"""A route's TLS material, checked: client certificate and key, CA bundle, CRL; no I/O.

The files were read into the snapshot (config/sources/tlsfiles.py). Here each one is parsed
and checked before haproxy ever sees it: a key that does not match its certificate, an
expired certificate, a CA bundle or CRL that does not parse are problems naming the route,
the field and the file, and the last good material keeps running. What haproxy gets is
re-encoded PEM without blank lines, so the same text can go through the runtime API's
`<<` payload (which ends at the first empty line).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from haproxy_egress.config.document import Config
from haproxy_egress.config.route import Route
from haproxy_egress.config.sources.tlsfiles import TlsFile
from haproxy_egress.config.tls import TlsOrigination, material_paths
from haproxy_egress.errors import Problem

__all__ = ["Identity", "RouteTls", "describe", "load_material", "material_paths_of"]

_CRL_BLOCK = re.compile(rb"-----BEGIN X509 CRL-----\r?\n.*?-----END X509 CRL-----", re.DOTALL)


@dataclass(frozen=True)
class Identity:
    """What a certificate says about itself, for logs, `explain` and the info metric."""

    subject: str  # RFC 4514, e.g. CN=egress,O=Example
    issuer: str
    not_after: float  # Unix time in seconds
    serial: str  # hex, upper case, as haproxy's `show ssl cert` prints it

    @classmethod
    def of(cls, cert: x509.Certificate) -> Identity:
        """The identity of one parsed certificate."""
        return cls(
            cert.subject.rfc4514_string(),
            cert.issuer.rfc4514_string(),
            cert.not_valid_after_utc.timestamp(),
            f"{cert.serial_number:X}",
        )

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


def _certificates(data: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        return []


def _pem(certs: Iterable[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def _spki(key: object) -> bytes:
    public = getattr(key, "public_key", None)
    if public is None:
        return b""
    return bytes(
        public().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


class _Checker:
    """Collects the problems of one route's material, each located and naming its file."""

    def __init__(self, route: Route, origin: str, files: Mapping[str, TlsFile]) -> None:
        self.route = route
        source, _, path = origin.partition(": ")
        self.source = source or f"route {route.name}"
        self.path = path
        self.files = files
        self.problems: list[Problem] = []

    def problem(self, key: str, message: str) -> None:
        where = f"{self.path}.tls.{key}" if self.path else f"tls.{key}"
        self.problems.append(Problem(self.source, where, message))

    def data(self, key: str, path: str) -> bytes | None:
        found = self.files.get(path)
        if found is None or found.data is None:
            self.problem(key, f"{path}: {found.error if found else 'was not read'}")
            return None
        return found.data

    def client(self, tls: TlsOrigination, now: float) -> tuple[Identity, str] | None:
        if tls.cert_file is None or tls.key_file is None:
            return None
        cert_data = self.data("client_cert_dir", tls.cert_file)
        key_data = self.data("client_cert_dir", tls.key_file)
        if cert_data is None or key_data is None:
            return None
        certs = _certificates(cert_data)
        if not certs:
            self.problem("client_cert_dir", f"{tls.cert_file}: no PEM certificate could be read")
            return None
        key = self._key(tls.key_file, key_data)
        if key is None:
            return None
        leaf = certs[0]
        if _spki(key) != _spki(leaf):
            self.problem(
                "client_cert_dir",
                f"{tls.key_file} is not the key of the certificate in {tls.cert_file}",
            )
            return None
        identity = Identity.of(leaf)
        if identity.not_after <= now:
            self.problem(
                "client_cert_dir",
                f"{tls.cert_file}: the certificate ({identity.subject}) expired on "
                f"{identity.not_after_text}",
            )
            return None
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return identity, _pem(certs) + key_pem

    def _key(self, path: str, data: bytes) -> PrivateKeyTypes | None:
        try:
            return serialization.load_pem_private_key(data, password=None)
        except TypeError:
            self.problem(
                "client_cert_dir", f"{path}: the key is encrypted (haproxy needs it plain)"
            )
        except (ValueError, UnsupportedAlgorithm) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else "not a PEM private key"
            self.problem("client_cert_dir", f"{path}: no private key could be read ({reason})")
        return None

    def ca(self, path: str) -> tuple[str, float] | None:
        data = self.data("ca_file", path)
        if data is None:
            return None
        certs = _certificates(data)
        if not certs:
            self.problem("ca_file", f"{path}: no PEM CA certificate could be read")
            return None
        return _pem(certs), min(c.not_valid_after_utc.timestamp() for c in certs)

    def crl(self, path: str) -> tuple[str, float | None] | None:
        data = self.data("crl_file", path)
        if data is None:
            return None
        crls = []
        for block in _CRL_BLOCK.findall(data):
            try:
                crls.append(x509.load_pem_x509_crl(block))
            except ValueError:
                self.problem("crl_file", f"{path}: a CRL does not parse")
                return None
        if not crls:
            self.problem("crl_file", f"{path}: no PEM CRL could be read")
            return None
        updates = [c.next_update_utc.timestamp() for c in crls if c.next_update_utc is not None]
        pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in crls)
        return pem, (min(updates) if updates else None)

    def check(self, tls: TlsOrigination, now: float) -> RouteTls:
        client = self.client(tls, now) if tls.client_cert_dir else None
        ca = self.ca(tls.ca_file) if tls.ca_file else None
        crl = self.crl(tls.crl_file) if tls.crl_file else None
        return RouteTls(
            self.route.name,
            tls,
            client[0] if client else None,
            client[1] if client else None,
            ca[0] if ca else None,
            ca[1] if ca else None,
            crl[0] if crl else None,
            crl[1] if crl else None,
        )


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
    by_path = {f.path: f for f in files}
    origins = dict(config.origins)
    out: list[RouteTls] = []
    problems: list[Problem] = []
    for route in config.tls_routes:
        if route.tls is None:
            continue
        checker = _Checker(route, origins.get(route.name, ""), by_path)
        material = checker.check(route.tls, now)
        problems += checker.problems
        out.append(material)
    return tuple(out), problems
