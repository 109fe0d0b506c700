"""The exporter-toolkit web-config: parsing, located problems, TLS context, basic auth.

The toolkit's own examples (tests/data/web-config/, origin in its README) are read the way an
exporter reads them: each copied into a directory beside certificates made with openssl.
"""

from __future__ import annotations

import base64
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from haproxy_egress.errors import ConfigError, Problem
from haproxy_egress.metrics.webconfig import (
    RateLimit,
    TlsServerConfig,
    go_duration,
    parse_web_config,
    read_web_config,
)
from haproxy_egress.metrics.websecurity import (
    BasicAuth,
    RateLimiter,
    load_web_security,
    peer_sans,
)
from tests.tlscerts import Pki, make_pki
from tests.unit.runtime.fakes import FakeClock

EXAMPLES = Path(__file__).parent.parent.parent / "data" / "web-config"

# The toolkit accepts these; haproxy-egress refuses them, each for a reason Python's ssl
# imposes (docs/metrics.md, "Supported web-config fields").
REFUSED_GOOD = {
    "web_config_noAuth_allCurves.good.yml": "tls_server_config.curve_preferences",
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def beside_certificates(example: Path, pki: Pki, directory: Path) -> Path:
    """The example copied into `directory` with the certificate files it names."""
    shutil.copy(pki.server[0], directory / "server.crt")
    shutil.copy(pki.server[1], directory / "server.key")
    shutil.copy(pki.ca, directory / "client_selfsigned.pem")
    shutil.copy(pki.ca, directory / "client2_selfsigned.pem")
    target = directory / example.name
    shutil.copy(example, target)
    return target


def problems_of(text: str, source: Path = Path("/etc/web/web.yml")) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_web_config(text.encode(), source)
    return [str(p) for p in info.value.problems]


# --- the toolkit's examples --------------------------------------------------------------


@pytest.mark.parametrize(
    "example",
    sorted(
        p.name for p in EXAMPLES.glob("*.y*ml") if ".bad." not in p.name and "junk" not in p.name
    ),
)
def test_the_toolkits_good_examples_load(example: str, pki: Pki, tmp_path: Path) -> None:
    path = beside_certificates(EXAMPLES / example, pki, tmp_path)
    if example in REFUSED_GOOD:
        with pytest.raises(ConfigError) as info:
            load_web_security(path)
        assert [p.path for p in info.value.problems] == [REFUSED_GOOD[example]]
        return
    security = load_web_security(path)
    assert security.digest


@pytest.mark.parametrize(
    ("example", "where"),
    [
        ("web_config_noAuth_inventedCiphers.bad.yml", "tls_server_config.cipher_suites[0]"),
        ("web_config_noAuth_inventedCurves.bad.yml", "tls_server_config.curve_preferences[0]"),
        ("web_config_noAuth_wrongTLSVersion.bad.yml", "tls_server_config.min_version"),
        ("web_config_headers_extra_header.bad.yml", "http_server_config.headers.Content-Type"),
        ("web_config_headers_frame_options.bad.yml", "http_server_config.headers.X-Frame-Options"),
        ("web_config_junk_key.yml", "tls_server_config.cert_filse"),
        ("web_config_noAuth.bad.yml", "tls_server_config.client_auth_type"),
        ("web_config_auth_user_list_invalid.bad.yml", "basic_auth_users.john"),
        ("web_config_noAuth_certPath_empty.bad.yml", "tls_server_config"),
        ("web_config_auth_clientCAs_missing.bad.yml", "tls_server_config.client_auth_type"),
        ("web_config_auth_clientCAs_invalid.bad.yml", "tls_server_config.client_auth_type"),
    ],
)
def test_the_toolkits_bad_examples_are_refused_with_their_place(
    example: str, where: str, pki: Pki, tmp_path: Path
) -> None:
    path = beside_certificates(EXAMPLES / example, pki, tmp_path)
    with pytest.raises(ConfigError) as info:
        load_web_security(path)
    assert where in [p.path for p in info.value.problems], info.value.summary()
    for problem in info.value.problems:
        assert problem.source == str(path)
        assert problem.line is not None


def test_the_documented_example_reads_as_the_toolkit_means_it(pki: Pki, tmp_path: Path) -> None:
    security = load_web_security(
        beside_certificates(EXAMPLES / "docs-web-config.yml", pki, tmp_path)
    )
    config = security.config
    assert set(config.users) == {"alice", "bob"}
    assert config.rate_limit == RateLimit(interval=1.0, burst=20)
    assert config.tls is not None
    assert config.tls.cert_file == tmp_path / "server.crt"  # relative to the file's directory
    assert config.tls.min_version == "TLS12"  # the toolkit's defaults
    assert config.tls.max_version == "TLS13"
    assert config.tls.client_auth == "none"
    assert security.context is not None
    assert security.context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert security.context.verify_mode is ssl.CERT_NONE
    assert security.describe() == "TLS TLS12..TLS13, basic auth (2 user(s)), rate limited"


# --- located problems ----------------------------------------------------------------------


def test_every_problem_at_once_with_line_numbers() -> None:
    text = """\
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAnyClientCert
  max_version: TLS11
  curve_preferences: [X25519, CurveP256]
basic_auth_users:
  alice: plaintext
http_server_config:
  headers:
    X-Frame-Options: allow
extra: 1
"""
    problems = problems_of(text)
    # In the order of the file, so an edit fixes them top to bottom.
    assert problems == [
        "/etc/web/web.yml:4: tls_server_config.client_auth_type: RequireAnyClientCert is not "
        "supported: Python's ssl verifies every client certificate it asks for (use "
        "RequireAndVerifyClientCert or VerifyClientCertIfGiven with a client_ca_file)",
        "/etc/web/web.yml:5: tls_server_config.max_version: TLS11 is not supported: Debian's "
        "OpenSSL refuses TLS 1.0 and 1.1, so no handshake could succeed (use TLS12 or TLS13)",
        "/etc/web/web.yml:6: tls_server_config.curve_preferences: more than one curve is not "
        "supported: Python's ssl sets a single ECDH curve",
        "/etc/web/web.yml:8: basic_auth_users.alice: must be a bcrypt hash ($2y$10$ and 53 "
        "characters; see `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)",
        "/etc/web/web.yml:11: http_server_config.headers.X-Frame-Options: must be one of deny, "
        "sameorigin (got 'allow')",
        "/etc/web/web.yml:12: extra: unknown field (the exporter-toolkit format has "
        "tls_server_config, http_server_config, basic_auth_users, rate_limit)",
    ]
    assert "plaintext" not in " ".join(problems)  # a pasted password is never echoed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tls_server_config: [1]\n", "tls_server_config: must be a mapping"),
        ("a: [\n", "YAML syntax error"),
        ("tls_server_config:\n  cert_file: a\n  cert_file: b\n", "key appears twice"),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n",
            "client CAs are configured without a client auth policy",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_allowed_sans: [x]\n",
            "needs client_auth_type: RequireAndVerifyClientCert",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n"
            "  max_version: TLS12\n",
            "is above max_version",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n"
            "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
            "lists only TLS 1.3 suites",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  cert: c\n",
            "give either cert_file or cert",
        ),
        ("rate_limit:\n  interval: fast\n", "must be a duration"),
        ("rate_limit:\n  interval: 1.5\n", "must be a duration"),  # Go reads no bare float
        ("http_server_config:\n  http2: maybe\n", "must be true or false"),
        ("\xff", "not UTF-8"),
    ],
)
def test_problems(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_web_config(text.encode("latin-1"), Path("web.yml"))
    assert expected in info.value.summary()


def test_an_empty_file_means_plain_http_and_no_auth() -> None:
    config = parse_web_config(b"", Path("web.yml")).config
    assert config.tls is None
    assert not config.users


def test_unreadable_files_are_named_with_their_field(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n")
    with pytest.raises(ConfigError) as info:
        read_web_config(web)
    assert [(p.path, p.line) for p in info.value.problems] == [
        ("tls_server_config.cert_file", 2),
        ("tls_server_config.key_file", 3),
    ]
    with pytest.raises(ConfigError) as missing:
        read_web_config(tmp_path / "nope.yml")
    assert "EGRESS_WEB_CONFIG_FILE" in str(missing.value)


def test_a_key_that_does_not_match_its_certificate(tmp_path: Path, pki: Pki) -> None:
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {pki.server[0]}\n  key_file: {pki.server2[1]}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_web_security(web)
    (problem,) = info.value.problems
    assert problem.path == "tls_server_config.cert_file"
    assert "do not load together" in problem.message


def test_inline_certificate_and_key_never_touch_the_disk(tmp_path: Path, pki: Pki) -> None:
    cert, key = (p.read_text().replace("\n", "\n    ") for p in pki.server)
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert: |\n    {cert}\n  key: |\n    {key}\n")
    security = load_web_security(web)
    assert security.context is not None
    assert security.file.watched_files() == (web,)


def test_digest_covers_the_certificate_files(tmp_path: Path, pki: Pki) -> None:
    shutil.copy(pki.server[0], tmp_path / "s.crt")
    shutil.copy(pki.server[1], tmp_path / "s.key")
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n")
    first = load_web_security(web).digest
    shutil.copy(pki.server2[0], tmp_path / "s.crt")
    shutil.copy(pki.server2[1], tmp_path / "s.key")
    assert load_web_security(web).digest != first


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("250ms", 0.25),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("0", 0.0),
        (2_000_000_000, 2.0),
    ],
)
def test_go_durations(text: str | int, seconds: float) -> None:
    assert go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "s", "1x", "-1s", "1s ", True])
def test_not_go_durations(text: object) -> None:
    assert go_duration(text) is None


# --- basic auth, rate limit, SANs ----------------------------------------------------------


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth_caches_verdicts_so_a_scrape_rarely_pays_a_bcrypt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return real(password, hashed)

    # websecurity calls bcrypt.checkpw through the module: patching the module counts its calls.
    monkeypatch.setattr(bcrypt, "checkpw", counting)
    auth = BasicAuth({"prom": bcrypt.hashpw(b"pw", bcrypt.gensalt(4))})
    assert auth.check(basic("prom", "pw"))
    for _ in range(20):
        assert auth.check(basic("prom", "pw"))
        assert not auth.check(basic("prom", "bad"))
        assert not auth.check(basic("ghost", "pw"))  # costs a bcrypt too: no user oracle
    assert len(calls) == 3
    assert not auth.check("Bearer abc")
    assert not auth.check("Basic !!!")
    assert not auth.check("Basic " + base64.b64encode(b"no-colon").decode())
    assert not auth.check(basic("prom", "x" * 100))  # beyond bcrypt's 72 bytes
    assert "pw" not in repr(auth._cache)


def test_rate_limiter_refills_one_token_per_interval() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(interval=0.2, burst=2), clock)
    assert [limiter.allow() for _ in range(3)] == [True, True, False]
    clock.now += 0.19
    assert not limiter.allow()
    clock.now += 0.02
    assert limiter.allow()
    assert not limiter.allow()


def test_peer_sans_are_compared_as_go_prints_them() -> None:
    cert = {
        "subjectAltName": (
            ("DNS", "prometheus"),
            ("IP Address", "0:0:0:0:0:0:0:1\n"),
            ("email", "a@b.test"),
            ("URI", "spiffe://cluster/ns/monitoring"),
            ("othername", "<unsupported>"),
        )
    }
    assert peer_sans(cert) == ["prometheus", "::1", "a@b.test", "spiffe://cluster/ns/monitoring"]
    assert peer_sans(None) == []


# --- any input: a model or located problems, never a traceback ------------------------------


def _keys(value: object) -> Iterator[str]:
    """Every mapping key in a YAML document, at any depth."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield str(key)
            yield from _keys(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _keys(inner)


# The keys the toolkit's own examples use (its sections, fields, header and user names, and
# the junk key one of them holds), and one nobody uses.
_EXAMPLE_KEYS = {k for p in EXAMPLES.glob("*.y*ml") for k in _keys(yaml.safe_load(p.read_text()))}
_KEYS = st.sampled_from([*sorted(_EXAMPLE_KEYS), "junk"])
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**12),
    st.floats(allow_nan=False),
    st.sampled_from(["TLS13", "TLS10", "RequireAndVerifyClientCert", "1s", "deny", "X25519"]),
    st.text(max_size=12),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None)
@given(doc=st.dictionaries(_KEYS, _VALUES, max_size=5))
def test_any_document_gives_a_model_or_located_problems(doc: dict[str, object]) -> None:
    text = yaml.safe_dump(doc).encode()
    problems: tuple[Problem, ...] = ()
    try:
        parse_web_config(text, Path("/etc/web/web.yml"))
    except ConfigError as exc:
        problems = exc.problems or (Problem("?", "", "ConfigError without problems"),)
    for problem in problems:
        assert problem.source == "/etc/web/web.yml"
        assert "\n" not in str(problem)


# --- the model and the shared YAML loader ---------------------------------------------------


def test_problems_spanning_fields_are_all_reported_beside_type_errors() -> None:
    text = """\
tls_server_config:
  cert: inline
  cert_file: a.crt
  client_ca_file: ca.crt
http_server_config:
  http2: maybe
  headers:
    Server: x
    X-Content-Type-Options: sniff
"""
    assert problems_of(text, Path("w.yml")) == [
        "w.yml:2: tls_server_config.cert: give either cert_file or cert, not both",
        "w.yml:2: tls_server_config: missing one of key or key_file",
        "w.yml:2: tls_server_config.client_auth_type: client CAs are configured without a "
        "client auth policy (set client_auth_type: RequireAndVerifyClientCert)",
        "w.yml:6: http_server_config.http2: must be true or false (got 'maybe')",
        "w.yml:8: http_server_config.headers.Server: header 'Server' cannot be configured (only "
        "Strict-Transport-Security, X-Content-Type-Options, X-Frame-Options, X-XSS-Protection, "
        "Content-Security-Policy)",
        "w.yml:9: http_server_config.headers.X-Content-Type-Options: must be one of nosniff "
        "(got 'sniff')",
    ]


def test_an_alias_bomb_is_refused_by_the_shared_loader() -> None:
    text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(6)
    )
    (problem,) = problems_of(text)
    assert "alias bomb" in problem


def test_an_interval_of_zero_turns_the_limiter_off() -> None:
    config = parse_web_config(b"rate_limit:\n  interval: 0\n  burst: 5\n", Path("w.yml")).config
    assert config.rate_limit == RateLimit(interval=0.0, burst=5)
    assert config.limit is None


def test_a_model_built_in_code_is_checked_as_a_file_is() -> None:
    with pytest.raises(ValidationError, match="missing one of key or key_file"):
        TlsServerConfig(cert_file=Path("/a.crt"))
