"""A web-config model made live: the TLS context, the basic-auth check, the rate limiter.

Built once per (re)load from exactly the bytes `webconfig.read_web_config` hashed, so the
context in use always matches the digest reported; a new load replaces the whole object.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from haproxy_egress.errors import ConfigError, Problem
from haproxy_egress.metrics.webconfig import (
    RateLimit,
    TlsServerConfig,
    WebConfig,
    WebConfigFile,
    read_web_config,
)

__all__ = ["BasicAuth", "RateLimiter", "WebSecurity", "load_web_security"]

logger = logging.getLogger(__name__)

_VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Compared against for an unknown user, so a wrong name costs as much as a wrong password
# and response times do not tell which user names exist (the toolkit does the same).
_DUMMY_HASH = b"$2b$10$ldRqiZjuPczZBi.F5mBjAO4fGVQ1AIaPohloX/5kFeAJ.9RHigW9y"
AUTH_CACHE_SIZE = 1024  # verifications remembered; a scraper or two need a handful


@contextlib.contextmanager
def _memory_file(data: bytes, name: str) -> Iterator[str]:
    """A path to `data` that never touches a disk (memfd), for ssl's file-only loaders."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _pem(contents: Mapping[Path, bytes], file: Path | None, inline: str) -> bytes:
    return contents[file] if file is not None else inline.encode()


def tls_context(
    file: WebConfigFile, tls: TlsServerConfig, contents: Mapping[Path, bytes]
) -> ssl.SSLContext:
    """The server SSLContext for `tls_server_config`; ConfigError names the field at fault."""
    source = str(file.source)

    def problem(key: str, message: str) -> ConfigError:
        where = f"tls_server_config.{key}"
        return ConfigError([Problem(source, where, message, file.lines.get(where))])

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        # Python deprecates naming TLS 1.0/1.1 at all; as a floor they only let OpenSSL's own
        # (higher) floor apply, which is what the user asked for.
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.maximum_version = _VERSIONS[tls.max_version]
    cert = _pem(contents, tls.cert_file, tls.cert)
    key = _pem(contents, tls.key_file, tls.key)
    cert_key = "cert_file" if tls.cert_file is not None else "cert"
    try:
        with _memory_file(cert, "web-cert") as cert_path, _memory_file(key, "web-key") as key_path:
            ctx.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        raise problem(
            cert_key, f"certificate and key do not load together ({exc.reason or exc})"
        ) from None
    if tls.client_auth != "none" and tls.client_ca_file is None and not tls.client_ca:
        ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)  # Go: nil ClientCAs = system roots
        ctx.verify_mode = _VERIFY[tls.client_auth]
    elif tls.client_auth != "none":
        ca_key = "client_ca_file" if tls.client_ca_file is not None else "client_ca"
        ca = _pem(contents, tls.client_ca_file, tls.client_ca)
        try:
            ctx.load_verify_locations(cadata=ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise problem(ca_key, f"no CA certificate could be read ({reason})") from None
        ctx.verify_mode = _VERIFY[tls.client_auth]
    if tls.ciphers:
        try:
            ctx.set_ciphers(":".join(tls.ciphers))
        except ssl.SSLError:
            raise problem("cipher_suites", "OpenSSL supports none of these suites") from None
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.curve:
        ctx.set_ecdh_curve(tls.curve)
    return ctx


def _normalise_san(value: str) -> str:
    """IP SANs as Go prints them (OpenSSL spells IPv6 in full, upper case); others as they are."""
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return value


def peer_sans(cert: Mapping[str, object] | None) -> list[str]:
    """The DNS, IP, e-mail and URI subject alternative names of a verified peer certificate."""
    if not cert:
        return []
    sans = cert.get("subjectAltName", ())
    out: list[str] = []
    if isinstance(sans, tuple):
        for entry in sans:
            if isinstance(entry, tuple) and len(entry) == 2:
                kind, value = entry
                if kind in ("DNS", "email", "URI"):
                    out.append(str(value))
                elif kind == "IP Address":
                    out.append(_normalise_san(str(value)))
    return out


class BasicAuth:
    """`basic_auth_users` checked with bcrypt; verdicts cached so a scrape rarely pays one.

    The cache key is an HMAC (per-process random key) of user, hash and password: the
    password itself is never kept. Failures are cached too, so a client retrying a wrong
    password cannot make every request cost a bcrypt. One bcrypt runs at a time.
    """

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self._users = dict(users)
        self._key = secrets.token_bytes(32)
        self._cache: collections.OrderedDict[bytes, bool] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._bcrypt = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._users)

    def check(self, authorization: str) -> bool:
        """True when the Authorization header carries a configured user and its password."""
        scheme, _, encoded = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user_bytes, sep, password = decoded.partition(b":")
        if not sep:
            return False
        user = user_bytes.decode("utf-8", "replace")
        hashed = self._users.get(user)
        known = hashed is not None
        hashed = hashed if hashed is not None else _DUMMY_HASH
        key = hmac.new(self._key, b"\0".join((user_bytes, hashed, password)), hashlib.sha256)
        digest = key.digest()
        with self._lock:
            cached = self._cache.get(digest)
            if cached is not None:
                self._cache.move_to_end(digest)
                return cached
        # Imported here: only a web config with basic_auth_users needs it (0.4 MB).
        import bcrypt  # noqa: PLC0415

        with self._bcrypt:
            try:
                ok = bcrypt.checkpw(password, hashed)
            except ValueError:
                ok = False  # e.g. a password longer than bcrypt's 72 bytes
        verdict = ok and known
        with self._lock:
            self._cache[digest] = verdict
            while len(self._cache) > AUTH_CACHE_SIZE:
                self._cache.popitem(last=False)
        return verdict


class RateLimiter:
    """A token bucket (`rate_limit`): one token every `interval` seconds, `burst` at most."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = limit.interval
        self._burst = float(limit.burst)
        self._tokens = float(limit.burst)
        self._clock = clock  # handed in, so the refill is tested without waiting
        self._at = clock()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """Take a token if one is there."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._at) / self._interval)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False


@dataclass(frozen=True)
class WebSecurity:
    """Everything a request needs from the web-config: built whole, swapped whole."""

    file: WebConfigFile
    context: ssl.SSLContext | None
    auth: BasicAuth
    limiter: RateLimiter | None

    @property
    def config(self) -> WebConfig:
        """The web-config in force."""
        return self.file.config

    @property
    def digest(self) -> str:
        """sha256 over the web-config file and every TLS file it names."""
        return self.file.digest

    def peer_allowed(self, cert: Mapping[str, object] | None) -> bool:
        """`client_allowed_sans`: the verified client certificate names one of them."""
        allowed = self.config.tls.client_allowed_sans if self.config.tls else ()
        if not allowed:
            return True
        wanted = {_normalise_san(s) for s in allowed}
        return any(san in wanted for san in peer_sans(cert))

    def describe(self) -> str:
        """One line for the log: what the endpoint now demands."""
        tls = self.config.tls
        parts = []
        if tls is None:
            parts.append("plain HTTP")
        else:
            parts.append(f"TLS {tls.min_version}..{tls.max_version}")
            if tls.client_auth != "none":
                parts.append(f"client certificates {tls.client_auth}")
        if self.auth:
            parts.append(f"basic auth ({len(self.config.users)} user(s))")
        if self.limiter is not None:
            parts.append("rate limited")
        return ", ".join(parts)


def load_web_security(path: Path) -> WebSecurity:
    """Read, validate and build; ConfigError (every problem, located) if any part is unusable."""
    file, contents = read_web_config(path)
    tls, limit = file.config.tls, file.config.limit
    context = tls_context(file, tls, contents) if tls is not None else None
    limiter = RateLimiter(limit) if limit is not None else None
    return WebSecurity(file, context, BasicAuth(file.config.users), limiter)
