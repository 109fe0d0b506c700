"""TLS origination: the `tls:` block, its material checks, the server options it renders, how
a rotation is planned, and the runtime API's answers about TLS files (recorded on 2.6)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from haproxy_egress.config.document import Config
from haproxy_egress.config.problems import ProblemList, validate
from haproxy_egress.config.route import Route
from haproxy_egress.config.sources.tlsfiles import TlsFile, read_tls_files
from haproxy_egress.config.tls import material_paths
from haproxy_egress.config.tlsmaterial import Identity, RouteTls, load_material
from haproxy_egress.haproxy.show import SslEntry, parse_show_ssl
from haproxy_egress.render.tls import server_options, staged_files
from haproxy_egress.runtime import changes
from tests.routes import route_from
from tests.tlscerts import make_ca, make_crl, make_leaf

Pair = tuple[Path, Path]


@dataclass(frozen=True)
class Pki:
    ca: Pair
    client: Pair
    other: Pair
    crl: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "ca")
    return Pki(
        ca,
        make_leaf(d, "client", ca, sans="DNS:client", usage="clientAuth"),
        make_leaf(d, "other", ca, sans="DNS:other", usage="clientAuth"),
        make_crl(d, ca),
    )


def _route(**tls: Any) -> dict[str, Any]:
    return {
        "name": "partner",
        "listen": 9443,
        "destinations": ["api.partner.example:443"],
        "tls": tls,
    }


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ProblemList) as info:
        validate(Route, data, "routes.yaml", "routes[0]")
    return [str(p) for p in info.value.problems]


def test_ip_destination_needs_a_name() -> None:
    data = {**_route(), "destinations": ["192.0.2.10:636"]}
    (problem,) = _problems(data)
    assert problem.startswith("routes.yaml: routes[0].tls: destination 192.0.2.10:636 is an IP")
    named = validate(Route, {**data, "tls": {"server_name": "ldap.corp.example"}}, "r", "")
    assert named.tls is not None
    assert named.tls.name_for("192.0.2.10") == "ldap.corp.example"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {**_route(), "mode": "tls", "policy": ["*"], "destinations": []},
            "applies to tcp and http",
        ),
        (_route(insecure_skip_verify=True, ca_file="/ca.crt"), "ca_file has no effect"),
        (_route(server_name="10.0.0.1"), "must be a DNS name"),
        (_route(ca_file="relative/ca.crt"), "must match"),
        (_route(min_version="SSLv3"), "TLSv1.2"),
        (_route(verify=False), "unknown field"),
    ],
)
def test_bad_tls_blocks_are_located(data: dict[str, Any], message: str) -> None:
    problems = _problems(data)
    assert any(p.startswith("routes.yaml: routes[0]") and message in p for p in problems), problems


def _config(route: Route) -> Config:
    return Config(routes=(route,), origins=((route.name, "routes.yaml: routes[0]"),))


def _secret(directory: Path, cert: Path, key: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_bytes(cert.read_bytes())
    (directory / "tls.key").write_bytes(key.read_bytes())


def _material(route: Route, now: float = 0.0) -> tuple[tuple[RouteTls, ...], list[str]]:
    assert route.tls is not None
    material, problems = load_material(
        _config(route), read_tls_files(material_paths(route.tls)), now or _now()
    )
    return material, [str(p) for p in problems]


def _now() -> float:
    return time.time()


def test_good_material_is_reencoded_without_blank_lines(pki: Pki, tmp_path: Path) -> None:
    _secret(tmp_path / "mtls", *pki.client)
    route = route_from(
        _route(
            client_cert_dir=str(tmp_path / "mtls"), ca_file=str(pki.ca[0]), crl_file=str(pki.crl)
        )
    )
    (m,), problems = _material(route)
    assert problems == []
    assert m.client is not None
    assert m.client.subject == "CN=client"
    assert m.client.issuer == "CN=ca"
    assert m.crl_next_update is not None
    assert m.ca_not_after is not None
    files = staged_files([m])
    assert sorted(files) == ["partner.ca.pem", "partner.crl.pem", "partner.crt.pem"]
    crt = files["partner.crt.pem"]
    assert "\n\n" not in crt
    assert "BEGIN CERTIFICATE" in crt
    assert "BEGIN PRIVATE KEY" in crt


def test_broken_material_names_the_file(pki: Pki, tmp_path: Path) -> None:
    mismatched = tmp_path / "mismatched"
    _secret(mismatched, pki.client[0], pki.other[1])
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    route = route_from(
        _route(client_cert_dir=str(mismatched), ca_file=str(garbage), crl_file=str(garbage))
    )
    _, problems = _material(route)
    assert problems == [
        f"routes.yaml: routes[0].tls.client_cert_dir: {mismatched}/tls.key is not the key of "
        f"the certificate in {mismatched}/tls.crt",
        f"routes.yaml: routes[0].tls.ca_file: {garbage}: no PEM CA certificate could be read",
        f"routes.yaml: routes[0].tls.crl_file: {garbage}: no PEM CRL could be read",
    ]


def test_expired_and_missing_material(pki: Pki, tmp_path: Path) -> None:
    _secret(tmp_path / "mtls", *pki.client)
    route = route_from(_route(client_cert_dir=str(tmp_path / "mtls")))
    (m,), _ = _material(route)
    assert m.client is not None
    _, problems = _material(route, now=m.client.not_after + 1)
    (problem,) = problems
    assert f"{tmp_path}/mtls/tls.crt: the certificate (CN=client) expired on " in problem
    missing = route_from(_route(client_cert_dir=str(tmp_path / "nowhere")))
    _, problems = _material(missing)
    assert problems[0].endswith(f"{tmp_path}/nowhere/tls.crt: No such file or directory")


def test_server_options_verify_the_name_and_speak_tls_to_checks(tmp_path: Path) -> None:
    route = route_from(
        _route(client_cert_dir="/s/mtls", crl_file="/s/ca.crl", ca_file="/s/ca.crt", alpn=["h2"])
    )
    opts = server_options(route, route.destinations[0], tmp_path)
    assert opts == (
        f" ssl verify required ca-file {tmp_path}/partner.ca.pem verifyhost api.partner.example"
        f" crl-file {tmp_path}/partner.crl.pem sni str(api.partner.example)"
        f" crt {tmp_path}/partner.crt.pem ssl-min-ver TLSv1.2 alpn h2"
        " check-ssl check-sni api.partner.example check-alpn h2"
    )
    default = route_from({**_route(), "check": {"enabled": False}})
    assert server_options(default, default.destinations[0], tmp_path) == (
        " ssl verify required ca-file @system-ca verifyhost api.partner.example"
        " sni str(api.partner.example) ssl-min-ver TLSv1.2"
    )
    insecure = route_from(_route(insecure_skip_verify=True))
    assert " verify none " in server_options(insecure, insecure.destinations[0], tmp_path)


@dataclass(frozen=True)
class _Version:
    config: Config
    text: str
    maps: Mapping[str, str] = field(default_factory=dict)
    tls_files: Mapping[str, str] = field(default_factory=dict)


def test_a_rotation_alone_is_a_runtime_change() -> None:
    route = route_from(_route(client_cert_dir="/s/mtls"))
    config = _config(route)
    old = _Version(
        config, "backend partner\n    server a 1.2.3.4:443 ssl\n", {}, {"partner.crt.pem": "A"}
    )
    new = _Version(config, old.text, {}, {"partner.crt.pem": "B"})
    plan = changes.plan(old, new)
    assert plan.kind is changes.Kind.RUNTIME
    assert plan.ssl == (("partner.crt.pem", "B"),)
    assert plan.notes == ("route partner: client_cert rotated",)
    added = _Version(config, old.text, {}, {"partner.crt.pem": "A", "partner.ca.pem": "C"})
    assert changes.plan(old, added).kind is changes.Kind.RELOAD


# `show ssl cert <file>` and `show ssl crl-file <file>` as haproxy 2.6.12 answered them.
SHOW_SSL = Path(__file__).parents[2] / "data" / "haproxy" / "2.6"


def test_show_ssl_answers() -> None:
    assert parse_show_ssl((SHOW_SSL / "show_ssl_cert.txt").read_text()) == SslEntry(
        serials=("C1C8113BE97B75CCD98E4A78C0FC6B7E0D594",), used=False
    )
    assert parse_show_ssl((SHOW_SSL / "show_ssl_crl_file.txt").read_text()) == SslEntry(
        last_updates=("Dec  6 21:23:58 2026 GMT",), used=True
    )


def test_identity_text() -> None:
    assert Identity("CN=a", "CN=ca", 0.0, "1").not_after_text == "1970-01-01T00:00:00Z"


def test_unreadable_file_is_reported_not_raised(tmp_path: Path) -> None:
    (f,) = read_tls_files([str(tmp_path / "absent.crt")])
    assert f == TlsFile(str(tmp_path / "absent.crt"), None, "No such file or directory")
