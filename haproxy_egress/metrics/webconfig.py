"""The exporter-toolkit web-config file (`--web.config.file` of every official exporter).

The same field names, defaults and meanings as prometheus/exporter-toolkit, so a platform team
hands the router the file it already gives its exporters. What Python's `ssl` cannot honour
is refused with a located problem instead of being ignored (docs/metrics.md lists the subset):

- `client_auth_type` RequestClientCert / RequireAnyClientCert (RequireClientCert): OpenSSL
  through Python verifies every certificate it asks for; there is no "ask but do not verify".
- `curve_preferences` with more than one curve: Python's ssl sets one ECDH curve only.
- `max_version` below TLS12: Debian's OpenSSL refuses TLS 1.0/1.1 at its security level, so
  every handshake would fail. A `min_version` below TLS12 is accepted: OpenSSL's floor holds.
- `http_server_config.http2`: accepted either way; the endpoint speaks HTTP/1.1 (Prometheus
  scrapes with it), as a Go exporter does for a client that does not offer h2.

Parsing is pure (bytes in, frozen model or every problem out): the file is read by the
ConfigMap's own YAML loader (`config.sources.yamlfile.load_located`: the same line index,
duplicate-key and alias-bomb checks), and validated as a frozen pydantic model whose field
names are the toolkit's. `websecurity.py` turns the model into an SSLContext, a password
check and a rate limiter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from haproxy_egress.config.problems import format_loc, nearest_line, problems_from
from haproxy_egress.config.sources.yamlfile import load_located
from haproxy_egress.errors import ConfigError, Problem

__all__ = [
    "CIPHER_SUITES",
    "CLIENT_AUTH_TYPES",
    "CURVES",
    "TLS_VERSIONS",
    "RateLimit",
    "TlsServerConfig",
    "WebConfig",
    "WebConfigFile",
    "parse_web_config",
    "read_web_config",
]

# exporter-toolkit's names -> what Python's ssl honours (None: refused, with the reason).
CLIENT_AUTH_TYPES: Mapping[str, str | None] = {
    "NoClientCert": "none",
    "VerifyClientCertIfGiven": "optional",
    "RequireAndVerifyClientCert": "required",
    "RequestClientCert": None,
    "RequireAnyClientCert": None,
    "RequireClientCert": None,  # the toolkit's old spelling of RequireAnyClientCert
}
TLS_VERSIONS = ("TLS10", "TLS11", "TLS12", "TLS13")
# Go's crypto/tls CipherSuites() (the toolkit accepts only these) -> OpenSSL names. The three
# TLS 1.3 suites are not configurable in Go either; they are accepted and change nothing.
CIPHER_SUITES: Mapping[str, str | None] = {
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
CURVES: Mapping[str, str] = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
}
# The toolkit lets only these response headers be set, some only to these values.
HEADERS: Mapping[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
# bcrypt's modular crypt format, as golang.org/x/crypto/bcrypt reads it: $2a$, $2b$ or $2y$.
_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def go_duration(value: object) -> float | None:
    """A Go duration ("1s", "1m30s", "250ms", "0") or integer nanoseconds, in seconds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value / 1e9
    if not isinstance(value, str) or not value:
        return None
    if value == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(value):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return total if pos == len(value) else None


class _Checks:
    """The validation context: the file's directory (relative paths are relative to it) and
    the problems that concern several fields at once, so each is reported, not just the first
    (pydantic collects per-field errors itself; a model validator could raise only one)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.found: list[tuple[tuple[int | str, ...], str]] = []


def _collect(info: ValidationInfo, found: Sequence[tuple[tuple[int | str, ...], str]]) -> None:
    """Hand cross-field problems to the context; without one (a model built in code), the
    first is an error as any other."""
    if isinstance(info.context, _Checks):
        info.context.found += found
    elif found:
        raise ValueError(found[0][1])


def _absent_is_empty(value: object) -> object:
    """A key written without a value (`cert:`) means what leaving it out means."""
    return "" if value is None else value


def _absent_is_none(value: object) -> object:
    return None if value in (None, "") else value


def _absent_is_no_items(value: object) -> object:
    return () if value is None else value


_Text = Annotated[str, BeforeValidator(_absent_is_empty)]
# Relative to the web-config file's directory, made absolute by TlsServerConfig's validator.
_File = Annotated[Path | None, Field(strict=False), BeforeValidator(_absent_is_none)]


def _known_cipher(name: str) -> str:
    if name not in CIPHER_SUITES:
        raise ValueError(f"unknown cipher suite {name!r}")
    return name


def _known_curve(name: str) -> str:
    if name not in CURVES:
        raise ValueError(f"unknown curve {name!r} (one of {', '.join(CURVES)})")
    return name


def _bcrypt(value: object) -> object:
    # Never echo the value: it may be a plain-text password pasted by mistake.
    if not isinstance(value, str) or not _BCRYPT.fullmatch(value):
        raise ValueError(
            "must be a bcrypt hash ($2y$10$ and 53 characters; see "
            "`htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"
        )
    return value


# A YAML list (absent = empty), read into a tuple.
_Strings = Annotated[tuple[str, ...], Field(strict=False), BeforeValidator(_absent_is_no_items)]
_Ciphers = Annotated[
    tuple[Annotated[str, AfterValidator(_known_cipher)], ...],
    Field(strict=False),
    BeforeValidator(_absent_is_no_items),
]
_Curves = Annotated[
    tuple[Annotated[str, AfterValidator(_known_curve)], ...],
    Field(strict=False),
    BeforeValidator(_absent_is_no_items),
]


class _Toolkit(BaseModel):
    """The toolkit's unmarshalling: unknown keys refused, no type coercion, frozen."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class TlsServerConfig(_Toolkit):
    """`tls_server_config`, paths made absolute against the web-config file's directory."""

    cert: _Text = ""  # inline PEM, instead of cert_file
    key: _Text = ""  # inline PEM, instead of key_file
    client_ca: _Text = ""
    cert_file: _File = None
    key_file: _File = None
    client_auth_type: _Text = "NoClientCert"
    client_ca_file: _File = None
    client_allowed_sans: _Strings = ()
    min_version: _Text = "TLS12"
    max_version: _Text = "TLS13"
    cipher_suites: _Ciphers = ()
    prefer_server_cipher_suites: bool = True
    curve_preferences: _Curves = ()

    @field_validator("cert_file", "key_file", "client_ca_file")
    @classmethod
    def _relative_to_the_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and isinstance(info.context, _Checks):
            return info.context.base / value
        return value

    @field_validator("client_auth_type")
    @classmethod
    def _supported_auth(cls, value: str) -> str:
        value = value or "NoClientCert"
        if value not in CLIENT_AUTH_TYPES:
            known = ", ".join(k for k in CLIENT_AUTH_TYPES if k != "RequireClientCert")
            raise ValueError(f"unknown client_auth_type {value!r} (one of {known})")
        if CLIENT_AUTH_TYPES[value] is None:
            raise ValueError(
                f"{value} is not supported: Python's ssl verifies every client certificate it "
                "asks for (use RequireAndVerifyClientCert or VerifyClientCertIfGiven with a "
                "client_ca_file)"
            )
        return value

    @field_validator("min_version", "max_version")
    @classmethod
    def _known_version(cls, value: str, info: ValidationInfo) -> str:
        value = value or ("TLS12" if info.field_name == "min_version" else "TLS13")
        if value not in TLS_VERSIONS:
            raise ValueError(f"unknown TLS version {value!r} (one of TLS10..TLS13)")
        if info.field_name == "max_version" and value in ("TLS10", "TLS11"):
            raise ValueError(
                f"{value} is not supported: Debian's OpenSSL refuses TLS 1.0 and 1.1, so no "
                "handshake could succeed (use TLS12 or TLS13)"
            )
        return value

    @field_validator("cipher_suites")
    @classmethod
    def _configurable_ciphers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if value and all(CIPHER_SUITES[name] is None for name in value):
            raise ValueError(
                "lists only TLS 1.3 suites, which are not configurable; list TLS 1.2 suites or "
                "leave cipher_suites out"
            )
        return value

    @field_validator("curve_preferences")
    @classmethod
    def _one_curve(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) > 1:
            raise ValueError(
                "more than one curve is not supported: Python's ssl sets a single ECDH curve"
            )
        return value

    @property
    def configured(self) -> bool:
        """As the toolkit: no TLS field set means plain HTTP."""
        return any(
            getattr(self, name) for name in self.model_fields_set - {"prefer_server_cipher_suites"}
        )

    @property
    def client_auth(self) -> str:
        """What Python's ssl does: "none" | "optional" | "required" (ssl.CERT_*)."""
        return CLIENT_AUTH_TYPES[self.client_auth_type] or "none"

    @property
    def ciphers(self) -> tuple[str, ...]:
        """OpenSSL names of the TLS <= 1.2 suites; () = OpenSSL's default."""
        return tuple(n for name in self.cipher_suites if (n := CIPHER_SUITES[name]) is not None)

    @property
    def curve(self) -> str:
        """OpenSSL name of the one ECDH curve; "" = OpenSSL's default list."""
        return CURVES[self.curve_preferences[0]] if self.curve_preferences else ""

    @model_validator(mode="after")
    def _coherent(self, info: ValidationInfo) -> TlsServerConfig:
        if not self.configured:
            return self
        loc = ("tls_server_config",)
        found: list[tuple[tuple[int | str, ...], str]] = []
        for file_key, inline_key in (("cert_file", "cert"), ("key_file", "key")):
            if getattr(self, file_key) and getattr(self, inline_key):
                found.append(
                    ((*loc, inline_key), f"give either {file_key} or {inline_key}, not both")
                )
            elif not getattr(self, file_key) and not getattr(self, inline_key):
                found.append((loc, f"missing one of {inline_key} or {file_key}"))
        if self.client_ca_file is not None and self.client_ca:
            found.append(((*loc, "client_ca"), "give either client_ca_file or client_ca, not both"))
        auth, has_ca = self.client_auth, self.client_ca_file is not None or bool(self.client_ca)
        if auth == "none" and has_ca:
            found.append(
                (
                    (*loc, "client_auth_type"),
                    "client CAs are configured without a client auth policy "
                    "(set client_auth_type: RequireAndVerifyClientCert)",
                )
            )
        if auth == "required" and not has_ca:
            # The toolkit too refuses this one; VerifyClientCertIfGiven without a CA verifies
            # against the system's CA store, as Go does.
            found.append(
                (
                    (*loc, "client_auth_type"),
                    f"{self.client_auth_type} needs client_ca_file (or client_ca): the CA that "
                    "signs the scrapers' certificates",
                )
            )
        if self.client_allowed_sans and auth != "required":
            found.append(
                (
                    (*loc, "client_allowed_sans"),
                    "needs client_auth_type: RequireAndVerifyClientCert (otherwise a client may "
                    "connect without a certificate, leaving no SAN to match)",
                )
            )
        if TLS_VERSIONS.index(self.min_version) > TLS_VERSIONS.index(self.max_version):
            found.append(((*loc, "min_version"), "is above max_version"))
        _collect(info, found)
        return self


class HttpServerConfig(_Toolkit):
    """`http_server_config`: response headers (only those the toolkit allows) and http2."""

    http2: bool = True  # accepted either way: the endpoint speaks HTTP/1.1
    headers: Annotated[dict[str, str | int] | None, BeforeValidator(_absent_is_none)] = None

    @field_validator("headers")
    @classmethod
    def _allowed_headers(
        cls, value: dict[str, str | int] | None, info: ValidationInfo
    ) -> dict[str, str | int] | None:
        found: list[tuple[tuple[int | str, ...], str]] = []
        for name, setting in (value or {}).items():
            where = ("http_server_config", "headers", name)
            allowed, text = HEADERS.get(name), str(setting)
            if allowed is None:
                found.append(
                    (where, f"header {name!r} cannot be configured (only {', '.join(HEADERS)})")
                )
            elif "\n" in text or "\r" in text:
                found.append((where, "must be a one-line string"))
            elif allowed and text not in allowed:
                found.append((where, f"must be one of {', '.join(allowed)} (got {text!r})"))
        _collect(info, found)
        return value


class RateLimit(_Toolkit):
    """`rate_limit`: a token bucket, one token every `interval` seconds, `burst` at most; an
    interval of 0 (the default) disables it."""

    interval: float = 0.0
    burst: Annotated[int, Field(ge=0)] = 0

    @field_validator("interval", mode="before")
    @classmethod
    def _go_duration(cls, value: object, info: ValidationInfo) -> float:
        if isinstance(value, float) and not isinstance(info.context, _Checks):
            return value  # built in code, already in seconds; a file says "1.5" or "1500ms"
        seconds = go_duration(value)
        if seconds is None:
            raise ValueError("must be a duration such as 1s or 250ms")
        return seconds


class WebConfig(_Toolkit):
    """A web-config document, field for field as exporter-toolkit reads it."""

    tls_server_config: TlsServerConfig | None = None
    http_server_config: HttpServerConfig | None = None
    basic_auth_users: dict[str, Annotated[str, BeforeValidator(_bcrypt)]] | None = None
    rate_limit: RateLimit | None = None

    @property
    def tls(self) -> TlsServerConfig | None:
        """The TLS settings, or None for plain HTTP."""
        tls = self.tls_server_config
        return tls if tls is not None and tls.configured else None

    @property
    def users(self) -> Mapping[str, bytes]:
        """User name -> bcrypt hash."""
        return {name: hashed.encode() for name, hashed in (self.basic_auth_users or {}).items()}

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """The response headers to add (those set to an empty value are left out)."""
        http = self.http_server_config
        headers = (http.headers or {}) if http is not None else {}
        return tuple((name, str(value)) for name, value in headers.items() if str(value))

    @property
    def limit(self) -> RateLimit | None:
        """The rate limit in force; None when off (no section, or an interval of 0)."""
        limit = self.rate_limit
        return limit if limit is not None and limit.interval > 0 else None


# The model of each section by its YAML path, for the unknown-field message.
_SECTIONS: Mapping[str, type[BaseModel]] = {
    "": WebConfig,
    "tls_server_config": TlsServerConfig,
    "http_server_config": HttpServerConfig,
    "rate_limit": RateLimit,
}
# pydantic's type errors in the words the rest of this file uses.
_TYPE_WORDS = {
    "model_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "tuple_type": "must be a list",
    "bool_type": "must be true or false",
    "path_type": "must be a file name",
}


@dataclass(frozen=True)
class WebConfigFile:
    """A web-config file as read: the model, where it came from, and `digest` over it and
    every file it names."""

    source: Path
    config: WebConfig
    digest: str = ""
    # 1-based line of each YAML path, for problems found after parsing (unreadable files).
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def watched_files(self) -> tuple[Path, ...]:
        """The files whose change means a reload: this one and the TLS files it names."""
        files = [self.source]
        tls = self.config.tls
        if tls is not None:
            files += [p for p in (tls.cert_file, tls.key_file, tls.client_ca_file) if p is not None]
        return tuple(files)


def _problems(exc: ValidationError, source: str, lines: Mapping[str, int]) -> list[Problem]:
    """pydantic's errors as located problems, in the toolkit's words where they differ."""
    errors = exc.errors()
    problems = problems_from(exc, source)
    if len(problems) != len(errors):  # problems_from drops only a too-short list's echo
        return problems
    out = []
    for err, problem in zip(errors, problems, strict=True):
        message = problem.message
        if err["type"] == "extra_forbidden":
            keys = _SECTIONS.get(format_loc(err["loc"][:-1]), WebConfig).model_fields
            message = f"unknown field (the exporter-toolkit format has {', '.join(keys)})"
        elif err["type"] in _TYPE_WORDS:
            message = _TYPE_WORDS[err["type"]] + message[len(err["msg"]) :]
        line = nearest_line(lines, problem.path)
        out.append(dataclasses.replace(problem, message=message, line=line))
    return out


def parse_web_config(text: bytes, source: Path) -> WebConfigFile:
    """Parse a web-config file's bytes; ConfigError lists every problem with its line, in
    the order of the file."""
    name = str(source)
    data, lines, problems = load_located(name, text)
    if problems and not lines:
        raise ConfigError(problems)  # not YAML at all
    checks = _Checks(source.parent)
    config = None
    try:
        config = WebConfig.model_validate({} if data is None else data, context=checks)
    except ValidationError as exc:
        problems += _problems(exc, name, lines)
    problems += [
        Problem(name, format_loc(loc), m, nearest_line(lines, format_loc(loc)))
        for loc, m in checks.found
    ]
    if problems or config is None:
        raise ConfigError(sorted(problems, key=lambda p: p.line or 0))
    return WebConfigFile(source, config, hashlib.sha256(text).hexdigest(), lines)


def read_web_config(path: Path) -> tuple[WebConfigFile, dict[Path, bytes]]:
    """Read and parse the file and read every TLS file it names (one consistent snapshot).

    Returns the model (its digest covering all the bytes) and the TLS files' contents, so the
    context is built from exactly the bytes that were hashed.
    """
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            [Problem("EGRESS_WEB_CONFIG_FILE", "", f"cannot read {path}: {exc.strerror}")]
        ) from None
    loaded = parse_web_config(text, path)
    contents: dict[Path, bytes] = {}
    problems: list[Problem] = []
    digest = hashlib.sha256(text)
    tls = loaded.config.tls
    if tls is not None:
        for key, file in (
            ("cert_file", tls.cert_file),
            ("key_file", tls.key_file),
            ("client_ca_file", tls.client_ca_file),
        ):
            if file is None:
                continue
            try:
                contents[file] = file.read_bytes()
            except OSError as exc:
                where = f"tls_server_config.{key}"
                problems.append(
                    Problem(
                        str(path),
                        where,
                        f"cannot read {file}: {exc.strerror}",
                        loaded.lines.get(where),
                    )
                )
                continue
            digest.update(b"\0" + str(file).encode() + b"\0" + contents[file])
    if problems:
        raise ConfigError(problems)
    return dataclasses.replace(loaded, digest=digest.hexdigest()), contents
