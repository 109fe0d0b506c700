"""Parsing and checking one route's TLS material with cryptography (config/tlsmaterial.py
loads this module only when a route originates TLS, so a router without one never maps the
library); no I/O."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from haproxy_egress.config.route import Route
from haproxy_egress.config.sources.tlsfiles import TlsFile
from haproxy_egress.config.tls import TlsOrigination
from haproxy_egress.config.tlsmaterial import Identity, RouteTls
from haproxy_egress.errors import Problem

__all__ = ["Checker", "identity_of"]

_CRL_BLOCK = re.compile(rb"-----BEGIN X509 CRL-----\r?\n.*?-----END X509 CRL-----", re.DOTALL)


def identity_of(cert: x509.Certificate) -> Identity:
    """The identity of one parsed certificate."""
    return Identity(
        cert.subject.rfc4514_string(),
        cert.issuer.rfc4514_string(),
        cert.not_valid_after_utc.timestamp(),
        f"{cert.serial_number:X}",
    )


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


class Checker:
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
        identity = identity_of(leaf)
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
