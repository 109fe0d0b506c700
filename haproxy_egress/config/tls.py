"""TLS origination of a tcp or http route: the `tls:` block of a route; no I/O.

The router, not the application, speaks TLS to the destination: it verifies the destination's
certificate and name (and sends the name as SNI), and may present the organisation's client
certificate from a mounted kubernetes.io/tls Secret. Verification is never off by omission:
only `insecure_skip_verify: true`, written on the route, turns it off.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from haproxy_egress.config.addresses import ip_or_none, normalize_host

__all__ = [
    "CLIENT_CERT",
    "CLIENT_KEY",
    "TlsOrigination",
    "TlsSpec",
    "material_paths",
]

# The keys of a kubernetes.io/tls Secret.
CLIENT_CERT = "tls.crt"
CLIENT_KEY = "tls.key"
# Absolute paths with no blank, quote, '#' or '$': printed unquoted in haproxy.cfg.
FILE_PATH = r"^/[A-Za-z0-9._+@=,:/-]{0,254}$"
# An ALPN protocol id as haproxy's `alpn` list takes it (comma-separated, so no comma).
ALPN_ID = r"^[A-Za-z0-9._/-]{1,32}$"
TLS_VERSIONS = ("TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3")

FilePath = Annotated[str, Field(pattern=FILE_PATH)]


def _dns_name(value: str) -> str:
    """The name verified in the destination's certificate: a DNS name, not an IP literal
    (haproxy's verifyhost compares names; an IP in SNI is not allowed by RFC 6066)."""
    name = normalize_host(value)
    if ip_or_none(name) is not None:
        raise ValueError(f"must be a DNS name, not an IP address (got {value!r})")
    return name


ServerName = Annotated[str, AfterValidator(_dns_name)]


class TlsOrigination(BaseModel):
    """How a route speaks TLS to its destinations (docs/configuration.md, `tls:`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    ca_file: FilePath | None = None  # None: the system's CA store
    server_name: ServerName | None = None  # None: each destination's own host name
    client_cert_dir: FilePath | None = None  # a mounted kubernetes.io/tls Secret
    crl_file: FilePath | None = None
    min_version: Literal["TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    alpn: tuple[Annotated[str, Field(pattern=ALPN_ID)], ...] = ()
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _coherent(self) -> TlsOrigination:
        if self.insecure_skip_verify:
            for key in ("ca_file", "crl_file"):
                if getattr(self, key) is not None:
                    # Both would suggest a verification that does not happen.
                    raise ValueError(f"{key} has no effect with insecure_skip_verify: true")
        return self

    @property
    def verifies(self) -> bool:
        """Whether the destination's certificate and name are verified."""
        return not self.insecure_skip_verify

    @property
    def cert_file(self) -> str | None:
        """The client certificate chain in the Secret, when the route presents one."""
        return _join(self.client_cert_dir, CLIENT_CERT)

    @property
    def key_file(self) -> str | None:
        """The client certificate's private key in the Secret."""
        return _join(self.client_cert_dir, CLIENT_KEY)

    def name_for(self, host: str) -> str:
        """The name sent as SNI and verified for a destination host."""
        return self.server_name or host.rstrip(".").lower()


def _join(directory: str | None, name: str) -> str | None:
    return None if directory is None else str(PurePosixPath(directory) / name)


def _for_route(value: TlsOrigination | None, info: ValidationInfo) -> TlsOrigination | None:
    """`tls:` belongs to tcp and http routes, and an IP destination needs a name to verify."""
    if value is None:
        return None
    data: Mapping[str, object] = info.data
    mode = data.get("mode", "tcp")
    if mode not in ("tcp", "http"):
        raise ValueError(
            f"tls (origination) applies to tcp and http routes, not {mode}: a {mode} route "
            "passes the client's own TLS through"
        )
    destinations = data.get("destinations", ())
    if value.server_name is None and isinstance(destinations, tuple):
        for d in destinations:
            if getattr(d, "ip", None) is not None:
                raise ValueError(
                    f"destination {d.hostport} is an IP address: set tls.server_name to the "
                    "name its certificate must carry (an address cannot be verified as a name)"
                )
    return value


TlsSpec = Annotated[TlsOrigination | None, AfterValidator(_for_route)]


def material_paths(tls: TlsOrigination) -> tuple[str, ...]:
    """The files a route's TLS material is read from, in a fixed order."""
    out = [tls.cert_file, tls.key_file, tls.ca_file, tls.crl_file]
    return tuple(p for p in out if p is not None)
