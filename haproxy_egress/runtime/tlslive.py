"""Rotate TLS material in the running worker through the runtime API, then read it back.

A rotated client certificate, CA bundle or CRL changes no line of haproxy.cfg (the server
lines name the staged files under RunDir.tls), so it needs no new worker: `set ssl <kind>
<file> <<` opens a transaction with the new PEM, `commit ssl <kind> <file>` swaps it in for
new handshakes, and established connections keep theirs. The certificate and its key are one
payload, so a worker never holds half an identity. Any refusal aborts the transaction, and
the caller reloads: the staged files already hold the new material.

HAProxy (2.6.12 and 3.0.11 alike) detaches a server's certificate from its store when the
server's CA file or CRL is committed (`show ssl cert` then says `Status: Unused`): later
certificate commits change the store but no longer the server, and a CRL commit after such a
commit crashed a 2.6 worker (3.0 refuses it). So certificates go first in a change, a
certificate is only committed while its store is in use, and otherwise the change becomes a
reload, which links everything anew.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from haproxy_egress.errors import EgressError, HaproxyError
from haproxy_egress.haproxy import replies
from haproxy_egress.haproxy.show import SslEntry, parse_show_ssl
from haproxy_egress.render.tls import Material, parse_staged

__all__ = ["SslChangeFailed", "apply", "verify"]

Command = Callable[[str], str]  # one stats-socket command → its answer

# The runtime API's word for each kind of file.
_VERB = {Material.CLIENT_CERT: "cert", Material.CA: "ca-file", Material.CRL: "crl-file"}
_CRL_BLOCK = re.compile(r"-----BEGIN X509 CRL-----.*?-----END X509 CRL-----", re.DOTALL)


class SslChangeFailed(EgressError):
    """haproxy refused a TLS file, or holds other material than was sent."""


_ORDER = {Material.CLIENT_CERT: 0, Material.CA: 1, Material.CRL: 2}


def _asn1_time(moment: datetime) -> str:
    """A time as OpenSSL's ASN1_TIME_print writes it (what haproxy shows)."""
    return f"{moment:%b} {moment.day:>2} {moment:%H:%M:%S %Y} GMT"


def expected(kind: Material, content: str) -> SslEntry:
    """What `show ssl …` must say once `content` is committed."""
    # cryptography (about 9 MB of RSS) only once TLS material is rotated: most routers never
    # originate TLS, and the supervisor lives as long as the pod.
    from cryptography import x509  # noqa: PLC0415

    if kind is Material.CRL:
        crls = [x509.load_pem_x509_crl(b.encode()) for b in _CRL_BLOCK.findall(content)]
        return SslEntry(last_updates=tuple(_asn1_time(c.last_update_utc) for c in crls))
    certs = x509.load_pem_x509_certificates(content.encode())
    if kind is Material.CLIENT_CERT:
        certs = certs[:1]  # `show ssl cert` describes the leaf (the chain follows it)
    return SslEntry(serials=tuple(f"{c.serial_number:X}" for c in certs))


def _ask(command: Command, line: str) -> str:
    try:
        return command(line).strip()
    except HaproxyError as exc:
        raise SslChangeFailed(f"{line.splitlines()[0]!r}: {exc}") from exc


def _show(command: Command, kind: Material, path: Path) -> SslEntry:
    return parse_show_ssl(_ask(command, f"show ssl {_VERB[kind]} {path}"))


def _swap(command: Command, path: Path, kind: Material, content: str) -> None:
    verb = _VERB[kind]
    if kind is Material.CLIENT_CERT and not _show(command, kind, path).used:
        raise SslChangeFailed(
            f"{path}: the worker's servers no longer use this certificate's store (after a CA "
            "or CRL update); a reload applies it"
        )
    # The payload ends at the first empty line: the staged PEM has none (tlsmaterial.py).
    answer = _ask(command, f"set ssl {verb} {path} <<\n{content.strip()}\n")
    if not replies.ssl_transaction_open(answer):
        _ask(command, f"abort ssl {verb} {path}")
        raise SslChangeFailed(f"set ssl {verb} {path} was refused: {answer}")
    answer = _ask(command, f"commit ssl {verb} {path}")
    if not replies.ssl_committed(answer):
        _ask(command, f"abort ssl {verb} {path}")
        raise SslChangeFailed(f"commit ssl {verb} {path} was refused: {answer}")
    if kind is Material.CLIENT_CERT:
        _verify_one(command, path, kind, content)


def _verify_one(command: Command, path: Path, kind: Material, content: str) -> None:
    got = _show(command, kind, path)
    want = expected(kind, content)
    if kind is Material.CLIENT_CERT:
        if not got.used:
            raise SslChangeFailed(f"{path}: committed, but no server uses it")
        got = SslEntry(serials=got.serials[:1])
    else:
        got = SslEntry(got.serials, got.last_updates)
    if got != want:
        raise SslChangeFailed(f"{path}: read back {got}, wanted {want}")


def verify(command: Command, files: Sequence[tuple[str, str]], tls_dir: Path) -> None:
    """Read the rotated CA files and CRLs back (a certificate is read back right after its
    commit, before a CA or CRL commit detaches it); SslChangeFailed if haproxy holds
    something else."""
    for name, content in files:
        _, kind = parse_staged(name)
        if kind is not Material.CLIENT_CERT:
            _verify_one(command, tls_dir / name, kind, content)


def apply(command: Command, files: Sequence[tuple[str, str]], tls_dir: Path) -> None:
    """Swap each (name, content) in through a transaction, certificates first, then read all
    of them back."""
    ordered = sorted(files, key=lambda f: (_ORDER[parse_staged(f[0])[1]], f[0]))
    for name, content in ordered:
        _, kind = parse_staged(name)
        _swap(command, tls_dir / name, kind, content)
    verify(command, ordered, tls_dir)
