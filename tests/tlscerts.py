"""Throw-away certificates for the metrics TLS tests, made with the openssl CLI at test time.

One CA signs the server certificate (SANs 127.0.0.1, ::1, localhost) and the scrapers' client
certificates; a second, unrelated CA signs a client certificate that must be refused. EC P-256
keys: quick to make, and what a cert-manager issuer hands out by default.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "2"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}", "-days", DAYS,
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
        cwd=directory,
    )  # fmt: skip
    return cert, key


def make_leaf(
    directory: Path,
    name: str,
    ca: tuple[Path, Path],
    *,
    sans: str,
    usage: str,
    days: str = DAYS,
) -> tuple[Path, Path]:
    """A certificate signed by `ca`: (certificate, key); usage serverAuth or clientAuth."""
    cert, key, csr = (directory / f"{name}.{ext}" for ext in ("crt", "key", "csr"))
    ext = directory / f"{name}.ext"
    ext.write_text(
        f"subjectAltName={sans}\nextendedKeyUsage={usage}\n"
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-out", str(cert), "-days", days, "-extfile", str(ext),
        cwd=directory,
    )  # fmt: skip
    return cert, key


@dataclass(frozen=True)
class Pki:
    """Everything a TLS test needs, as files in one directory."""

    directory: Path
    ca: Path  # signs the server and the good clients; the client CA of the web-config
    server: tuple[Path, Path]
    server2: tuple[Path, Path]  # a second server certificate, for rotation
    client: tuple[Path, Path]  # SAN DNS:prometheus
    other_client: tuple[Path, Path]  # SAN DNS:intruder, same CA
    stranger: tuple[Path, Path]  # signed by an unrelated CA


def make_pki(directory: Path) -> Pki:
    """A CA, two server certificates and three client certificates."""
    ca = make_ca(directory, "ca")
    other_ca = make_ca(directory, "other-ca")
    server_sans = "IP:127.0.0.1,IP:::1,DNS:localhost"
    return Pki(
        directory=directory,
        ca=ca[0],
        server=make_leaf(directory, "server", ca, sans=server_sans, usage="serverAuth"),
        server2=make_leaf(directory, "server2", ca, sans=server_sans, usage="serverAuth"),
        client=make_leaf(directory, "prometheus", ca, sans="DNS:prometheus", usage="clientAuth"),
        other_client=make_leaf(directory, "intruder", ca, sans="DNS:intruder", usage="clientAuth"),
        stranger=make_leaf(
            directory, "stranger", other_ca, sans="DNS:prometheus", usage="clientAuth"
        ),
    )


def make_crl(directory: Path, ca: tuple[Path, Path], revoked: tuple[Path, ...] = ()) -> Path:
    """A PEM CRL signed by `ca`, revoking the certificates in `revoked` (next update in a day)."""
    work = directory / f"{ca[0].stem}-crl-{len(list(directory.glob('*-crl-*.pem')))}"
    work.mkdir(parents=True)
    (work / "index.txt").write_text("")
    (work / "crlnumber").write_text("01\n")
    cnf = work / "ca.cnf"
    cnf.write_text(
        "[ca]\ndefault_ca = crl\n[crl]\ndatabase = index.txt\ncrlnumber = crlnumber\n"
        "default_md = sha256\ndefault_crl_days = 1\n"
    )
    keys = ("-keyfile", str(ca[1]), "-cert", str(ca[0]))
    for cert in revoked:
        _openssl("ca", "-config", str(cnf), *keys, "-revoke", str(cert), cwd=work)
    out = directory / f"{work.name}.pem"
    _openssl("ca", "-config", str(cnf), *keys, "-gencrl", "-out", str(out), cwd=work)
    return out
