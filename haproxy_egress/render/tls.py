"""TLS origination → the `server` options of a route, and the files they load; pure.

haproxy loads a route's material from the run dir, never from the Secret mount: the files
there are the last good material (checked in config/tlsmaterial.py), so a broken Secret
never reaches a reload, and the runtime API can replace them in place by name. One file per
route and kind: two routes to one host present two identities without sharing anything.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from pathlib import Path

from haproxy_egress.config.route import Route
from haproxy_egress.config.scalars import Endpoint
from haproxy_egress.config.tlsmaterial import RouteTls

__all__ = [
    "SYSTEM_CA",
    "Material",
    "parse_staged",
    "server_options",
    "staged_files",
    "staged_name",
]

SYSTEM_CA = "@system-ca"  # haproxy (2.6+): the system's trust store, as OpenSSL finds it


class Material(enum.Enum):
    """The kinds of TLS material a route loads; the value is the staged file's suffix and
    the `material` label of the expiry metric."""

    CLIENT_CERT = "client_cert"
    CA = "ca"
    CRL = "crl"


_SUFFIX = {Material.CLIENT_CERT: "crt.pem", Material.CA: "ca.pem", Material.CRL: "crl.pem"}


def staged_name(route: str, kind: Material) -> str:
    """The file name of a route's material under RunDir.tls."""
    return f"{route}.{_SUFFIX[kind]}"


def parse_staged(name: str) -> tuple[str, Material]:
    """A staged file's route and kind, from its name."""
    for kind, suffix in _SUFFIX.items():
        if name.endswith(f".{suffix}"):
            return name[: -len(suffix) - 1], kind
    raise ValueError(f"not a staged TLS file: {name}")


def staged_files(materials: Iterable[RouteTls]) -> dict[str, str]:
    """name → content of every TLS file the routes load (under RunDir.tls)."""
    out: dict[str, str] = {}
    for m in materials:
        for kind, content in (
            (Material.CLIENT_CERT, m.client_pem),
            (Material.CA, m.ca_pem),
            (Material.CRL, m.crl_pem),
        ):
            if content is not None:
                out[staged_name(m.route, kind)] = content
    return out


def server_options(route: Route, endpoint: Endpoint, tls_dir: Path) -> str:
    """The TLS options of one server line of `route` ("" when it does not originate TLS).

    The name is both sent as SNI and verified (`verifyhost`): with `verify required` alone,
    haproxy checks only the chain and the dates. Health checks speak TLS with the same
    verification, name and ALPN.
    """
    tls = route.tls
    if tls is None:
        return ""
    name = tls.name_for(endpoint.host)
    opts = ["ssl"]
    if tls.verifies:
        ca = tls_dir / staged_name(route.name, Material.CA) if tls.ca_file else SYSTEM_CA
        opts += ["verify required", f"ca-file {ca}", f"verifyhost {name}"]
        if tls.crl_file:
            opts.append(f"crl-file {tls_dir / staged_name(route.name, Material.CRL)}")
    else:
        opts.append("verify none")
    opts.append(f"sni str({name})")
    if tls.client_cert_dir:
        opts.append(f"crt {tls_dir / staged_name(route.name, Material.CLIENT_CERT)}")
    opts.append(f"ssl-min-ver {tls.min_version}")
    if tls.alpn:
        opts.append(f"alpn {','.join(tls.alpn)}")
    if route.check.enabled:
        opts += ["check-ssl", f"check-sni {name}"]
        if tls.alpn:
            opts.append(f"check-alpn {','.join(tls.alpn)}")
    return "".join(f" {o}" for o in opts)
