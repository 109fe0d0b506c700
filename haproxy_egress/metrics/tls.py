"""TLS origination metrics: expiry and identity of each route's material, verification turned
off, material refused, and handshake failures to the destinations.

Expiry and identity come from the material the running configuration loaded (checked in
config/tlsmaterial.py), handed over in the supervisor's status; handshake failures from
haproxy's own `ssl_failed_handshake` column of `show stat` (its SSL statistics module, read by
haproxy/stat.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from haproxy_egress.config.tlsmaterial import RouteTls
from haproxy_egress.haproxy.stat import SSL_FAILED_HANDSHAKE, backend_counters

__all__ = ["handshake_family", "tls_families"]


def tls_families(material: Iterable[RouteTls], rejected: bool) -> list[Metric]:
    """Expiry (per route and material), the client certificate's subject and issuer, and
    whether verification is off; one sample per TLS-originating route."""
    not_after = GaugeMetricFamily(
        "haproxy_egress_tls_not_after_seconds",
        "Unix time a route's TLS material expires: client_cert and ca (the earliest in the "
        "bundle) notAfter, crl_next_update the CRL's nextUpdate.",
        labels=["route", "material"],
    )
    info = GaugeMetricFamily(
        "haproxy_egress_tls_client_cert_info",
        "The client certificate a route presents: subject and issuer (value always 1).",
        labels=["route", "subject", "issuer"],
    )
    insecure = GaugeMetricFamily(
        "haproxy_egress_tls_insecure_skip_verify",
        "1 for a route whose destination certificate and name are NOT verified "
        "(insecure_skip_verify: true).",
        labels=["route"],
    )
    for m in material:
        for kind, value in (
            ("client_cert", m.client.not_after if m.client else None),
            ("ca", m.ca_not_after),
            ("crl_next_update", m.crl_next_update),
        ):
            if value is not None:
                not_after.add_metric([m.route, kind], value)
        if m.client is not None:
            info.add_metric([m.route, m.client.subject, m.client.issuer], 1)
        insecure.add_metric([m.route], 1 if m.settings.insecure_skip_verify else 0)
    rejected_family = GaugeMetricFamily(
        "haproxy_egress_tls_material_rejected",
        "1 while the last change was refused because of TLS material (a key that does not "
        "match, an expired certificate, a CA or CRL that does not parse); the last good "
        "material keeps serving.",
        value=1 if rejected else 0,
    )
    return [not_after, info, insecure, rejected_family]


def handshake_family(stat: str, routes: Iterable[str]) -> Metric | None:
    """Failed TLS handshakes to the destinations of each TLS-originating route (its backend
    row in `show stat`); None when there is none or haproxy has no such column."""
    wanted = set(routes)
    if not wanted:
        return None
    failed = backend_counters(stat, SSL_FAILED_HANDSHAKE)
    if failed is None:
        return None
    family = CounterMetricFamily(
        "haproxy_egress_tls_handshake_failures_total",
        "TLS handshakes with a route's destinations that failed (name or chain not verified, "
        "client certificate refused, protocol mismatch), from haproxy's SSL statistics.",
        labels=["route"],
    )
    for name, value in failed.items():
        if name in wanted:
            family.add_metric([name], value)
    return family
