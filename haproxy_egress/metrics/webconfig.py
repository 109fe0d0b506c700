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

Parsing is pure (bytes in, frozen model or every problem out); `websecurity.py` turns the
model into an SSLContext, a password check and a rate limiter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from haproxy_egress.config.model import format_loc
from haproxy_egress.errors import ConfigError, Problem

__all__ = [
    "CIPHER_SUITES",
    "CLIENT_AUTH_TYPES",
    "CURVES",
    "TLS_VERSIONS",
    "RateLimit",
    "TlsServerConfig",
    "WebConfig",
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
_TLS_KEYS = (
    "cert",
    "key",
    "client_ca",
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "client_allowed_sans",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
)
_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
_HTTP_KEYS = ("http2", "headers")
_RATE_KEYS = ("interval", "burst")
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


@dataclass(frozen=True)
class TlsServerConfig:
    """`tls_server_config`, paths made absolute against the web-config file's directory."""

    cert_file: Path | None = None
    key_file: Path | None = None
    cert: str = ""  # inline PEM, instead of cert_file
    key: str = ""  # inline PEM, instead of key_file
    client_ca_file: Path | None = None
    client_ca: str = ""
    client_auth: str = "none"  # "none" | "optional" | "required" (ssl.CERT_*)
    client_allowed_sans: tuple[str, ...] = ()
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    ciphers: tuple[str, ...] = ()  # OpenSSL names of the TLS <= 1.2 suites; () = default
    prefer_server_cipher_suites: bool = True
    curve: str = ""  # OpenSSL name of the one ECDH curve; "" = OpenSSL's default list


@dataclass(frozen=True)
class RateLimit:
    """`rate_limit`: a token bucket, one token every `interval` seconds, `burst` at most."""

    interval: float
    burst: int


@dataclass(frozen=True)
class WebConfig:
    """A parsed web-config file; `digest` covers it and every file it names."""

    source: Path
    tls: TlsServerConfig | None = None
    headers: tuple[tuple[str, str], ...] = ()
    users: Mapping[str, bytes] = field(default_factory=dict)
    rate_limit: RateLimit | None = None
    http2: bool = True
    digest: str = ""
    # 1-based line of each YAML path, for problems found after parsing (unreadable files).
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def watched_files(self) -> tuple[Path, ...]:
        """The files whose change means a reload: this one and the TLS files it names."""
        files = [self.source]
        if self.tls is not None:
            files += [
                p
                for p in (self.tls.cert_file, self.tls.key_file, self.tls.client_ca_file)
                if p is not None
            ]
        return tuple(files)


class _Doc:
    """One document being checked: its data, line numbers by YAML path, and the problems."""

    def __init__(self, source: str, lines: Mapping[str, int]) -> None:
        self.source = source
        self.lines = lines
        self.problems: list[Problem] = []

    def problem(self, loc: Sequence[int | str], message: str) -> None:
        where = format_loc(loc)
        line = self.lines.get(where)
        if line is None and loc:
            line = self.lines.get(format_loc(loc[:-1]))
        self.problems.append(Problem(self.source, where, message, line))

    def mapping(self, value: object, loc: tuple[str, ...], keys: Sequence[str]) -> dict[str, Any]:
        """A mapping with only known keys (as the toolkit's strict unmarshalling demands)."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(loc, "must be a mapping")
            return {}
        for key in value:
            if key not in keys:
                self.problem(
                    (*loc, str(key)),
                    f"unknown field (the exporter-toolkit format has {', '.join(keys)})",
                )
        return {k: v for k, v in value.items() if k in keys}

    def string(self, section: Mapping[str, Any], loc: tuple[str, ...], key: str) -> str:
        value = section.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            self.problem((*loc, key), f"must be a string (got {type(value).__name__})")
            return ""
        return value

    def strings(self, section: Mapping[str, Any], loc: tuple[str, ...], key: str) -> list[str]:
        value = section.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem((*loc, key), "must be a list of strings")
            return []
        return list(value)

    def boolean(
        self, section: Mapping[str, Any], loc: tuple[str, ...], key: str, default: bool
    ) -> bool:
        value = section.get(key, default)
        if not isinstance(value, bool):
            self.problem((*loc, key), f"must be true or false (got {value!r})")
            return default
        return value


def _lines(node: yaml.Node, loc: tuple[int | str, ...], out: dict[str, int]) -> None:
    """The 1-based line of every value by YAML path; a repeated key is also recorded, under a
    "\\0dup\\0" prefix, so that it can be reported (PyYAML keeps the last silently)."""
    out[format_loc(loc)] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                out[f"\0dup\0{format_loc((*loc, name))}"] = key.start_mark.line + 1
            seen.add(name)
            _lines(value, (*loc, name), out)
            # The key's line: for a section (`tls_server_config:`) that is where it starts.
            out[format_loc((*loc, name))] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, (*loc, i), out)


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


def _tls(doc: _Doc, raw: object, base: Path) -> TlsServerConfig | None:
    loc = ("tls_server_config",)
    section = doc.mapping(raw, loc, _TLS_KEYS)
    if not any(section.get(k) for k in _TLS_KEYS if k not in ("prefer_server_cipher_suites",)):
        return None  # as the toolkit: no TLS field set means plain HTTP

    def path(key: str) -> Path | None:
        text = doc.string(section, loc, key)
        return base / text if text else None

    cert_file, key_file, ca_file = path("cert_file"), path("key_file"), path("client_ca_file")
    cert, key, ca = (doc.string(section, loc, k) for k in ("cert", "key", "client_ca"))
    for file_key, inline_key in (("cert_file", "cert"), ("key_file", "key")):
        if section.get(file_key) and section.get(inline_key):
            doc.problem((*loc, inline_key), f"give either {file_key} or {inline_key}, not both")
        elif not section.get(file_key) and not section.get(inline_key):
            doc.problem(loc, f"missing one of {inline_key} or {file_key}")
    if ca_file is not None and ca:
        doc.problem((*loc, "client_ca"), "give either client_ca_file or client_ca, not both")

    auth_name = doc.string(section, loc, "client_auth_type") or "NoClientCert"
    auth = CLIENT_AUTH_TYPES.get(auth_name, "")
    if auth == "":
        doc.problem(
            (*loc, "client_auth_type"),
            f"unknown client_auth_type {auth_name!r} "
            f"(one of {', '.join(k for k in CLIENT_AUTH_TYPES if k != 'RequireClientCert')})",
        )
        auth = "none"
    elif auth is None:
        doc.problem(
            (*loc, "client_auth_type"),
            f"{auth_name} is not supported: Python's ssl verifies every client certificate it "
            "asks for (use RequireAndVerifyClientCert or VerifyClientCertIfGiven with a "
            "client_ca_file)",
        )
        auth = "none"
    has_ca = ca_file is not None or bool(ca)
    if auth == "none" and has_ca:
        doc.problem(
            (*loc, "client_auth_type"),
            "client CAs are configured without a client auth policy "
            "(set client_auth_type: RequireAndVerifyClientCert)",
        )
    if auth == "required" and not has_ca:
        # The toolkit too refuses this one; VerifyClientCertIfGiven without a CA verifies
        # against the system's CA store, as Go does.
        doc.problem(
            (*loc, "client_auth_type"),
            f"{auth_name} needs client_ca_file (or client_ca): the CA that signs the scrapers' "
            "certificates",
        )
    sans = doc.strings(section, loc, "client_allowed_sans")
    if sans and auth != "required":
        doc.problem(
            (*loc, "client_allowed_sans"),
            "needs client_auth_type: RequireAndVerifyClientCert (otherwise a client may "
            "connect without a certificate, leaving no SAN to match)",
        )

    versions = {}
    for field_name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        name = doc.string(section, loc, field_name) or default
        if name not in TLS_VERSIONS:
            doc.problem((*loc, field_name), f"unknown TLS version {name!r} (one of TLS10..TLS13)")
            name = default
        versions[field_name] = name
    if versions["max_version"] in ("TLS10", "TLS11"):
        doc.problem(
            (*loc, "max_version"),
            f"{versions['max_version']} is not supported: Debian's OpenSSL refuses TLS 1.0 and "
            "1.1, so no handshake could succeed (use TLS12 or TLS13)",
        )
    elif versions["min_version"] > versions["max_version"]:
        doc.problem((*loc, "min_version"), "is above max_version")

    ciphers: list[str] = []
    names = doc.strings(section, loc, "cipher_suites")
    unknown = [name for name in names if name not in CIPHER_SUITES]
    for i, name in enumerate(names):
        if name in unknown:
            doc.problem((*loc, "cipher_suites", i), f"unknown cipher suite {name!r}")
        elif (openssl := CIPHER_SUITES[name]) is not None:
            ciphers.append(openssl)
    if names and not ciphers and not unknown:
        doc.problem(
            (*loc, "cipher_suites"),
            "lists only TLS 1.3 suites, which are not configurable; list TLS 1.2 suites or "
            "leave cipher_suites out",
        )

    curve = ""
    curves = doc.strings(section, loc, "curve_preferences")
    for i, name in enumerate(curves):
        if name not in CURVES:
            doc.problem(
                (*loc, "curve_preferences", i),
                f"unknown curve {name!r} (one of {', '.join(CURVES)})",
            )
    if len(curves) > 1:
        doc.problem(
            (*loc, "curve_preferences"),
            "more than one curve is not supported: Python's ssl sets a single ECDH curve",
        )
    elif curves and curves[0] in CURVES:
        curve = CURVES[curves[0]]
    return TlsServerConfig(
        cert_file=cert_file,
        key_file=key_file,
        cert=cert,
        key=key,
        client_ca_file=ca_file,
        client_ca=ca,
        client_auth=auth,
        client_allowed_sans=tuple(sans),
        min_version=versions["min_version"],
        max_version=versions["max_version"],
        ciphers=tuple(ciphers),
        prefer_server_cipher_suites=doc.boolean(section, loc, "prefer_server_cipher_suites", True),
        curve=curve,
    )


def _users(doc: _Doc, raw: object) -> dict[str, bytes]:
    loc = ("basic_auth_users",)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        doc.problem(loc, "must be a mapping of user names to bcrypt hashes")
        return {}
    users: dict[str, bytes] = {}
    for name, hashed in raw.items():
        where = (*loc, str(name))
        if not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed):
            # Never echo the value: it may be a plain-text password pasted by mistake.
            doc.problem(
                where,
                "must be a bcrypt hash ($2y$10$ and 53 characters; see "
                "`htpasswd -nBC 10 \"\" | tr -d ':\\n'`)",
            )
            continue
        users[str(name)] = hashed.encode()
    return users


def _http(doc: _Doc, raw: object) -> tuple[bool, tuple[tuple[str, str], ...]]:
    loc = ("http_server_config",)
    section = doc.mapping(raw, loc, _HTTP_KEYS)
    http2 = doc.boolean(section, loc, "http2", True)
    headers_raw = section.get("headers")
    headers: list[tuple[str, str]] = []
    if headers_raw is None:
        return http2, ()
    if not isinstance(headers_raw, dict):
        doc.problem((*loc, "headers"), "must be a mapping of header names to values")
        return http2, ()
    for name, value in headers_raw.items():
        where = (*loc, "headers", str(name))
        allowed = HEADERS.get(str(name))
        if allowed is None:
            doc.problem(where, f"header {name!r} cannot be configured (only {', '.join(HEADERS)})")
            continue
        text = str(value) if isinstance(value, (str, int)) else None
        if text is None or "\n" in text or "\r" in text:
            doc.problem(where, "must be a one-line string")
            continue
        if allowed and text not in allowed:
            doc.problem(where, f"must be one of {', '.join(allowed)} (got {text!r})")
            continue
        if text:
            headers.append((str(name), text))
    return http2, tuple(headers)


def _rate(doc: _Doc, raw: object) -> RateLimit | None:
    loc = ("rate_limit",)
    section = doc.mapping(raw, loc, _RATE_KEYS)
    if not section:
        return None
    interval = go_duration(section.get("interval", 0))
    if interval is None or interval < 0:
        doc.problem((*loc, "interval"), "must be a duration such as 1s or 250ms")
        return None
    burst = section.get("burst", 0)
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 0:
        doc.problem((*loc, "burst"), "must be a non-negative integer")
        return None
    if interval == 0:
        return None  # the toolkit: interval 0 disables the limiter
    return RateLimit(interval, burst)


def parse_web_config(text: bytes, source: Path) -> WebConfig:
    """Parse a web-config file's bytes; ConfigError lists every problem with its line."""
    name = str(source)
    try:
        node = yaml.compose(text.decode("utf-8"), Loader=yaml.SafeLoader)
        data = yaml.safe_load(text) if node is not None else None
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(name, "", f"not UTF-8 text (byte {exc.start})")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([Problem(name, "", f"YAML syntax error: {reason}", line)]) from None
    lines: dict[str, int] = {}
    if node is not None:
        _lines(node, (), lines)
    doc = _Doc(name, lines)
    for key, line in lines.items():
        if key.startswith("\0dup\0"):
            doc.problems.append(Problem(name, key[5:], "key appears twice", line))
    top = doc.mapping(data, (), _TOP_KEYS)
    tls = _tls(doc, top.get("tls_server_config"), source.parent)
    http2, headers = _http(doc, top.get("http_server_config"))
    users = _users(doc, top.get("basic_auth_users"))
    rate = _rate(doc, top.get("rate_limit"))
    if doc.problems:
        raise ConfigError(doc.problems)
    return WebConfig(
        source=source,
        tls=tls,
        headers=headers,
        users=users,
        rate_limit=rate,
        http2=http2,
        digest=hashlib.sha256(text).hexdigest(),
        lines=lines,
    )


def read_web_config(path: Path) -> tuple[WebConfig, dict[Path, bytes]]:
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
    config = parse_web_config(text, path)
    contents: dict[Path, bytes] = {}
    problems: list[Problem] = []
    digest = hashlib.sha256(text)
    tls = config.tls
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
                        config.lines.get(where),
                    )
                )
                continue
            digest.update(b"\0" + str(file).encode() + b"\0" + contents[file])
    if problems:
        raise ConfigError(problems)
    return dataclasses.replace(config, digest=digest.hexdigest()), contents
