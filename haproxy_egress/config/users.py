"""Proxy users of the policy proxy: the credentials file (a mounted Secret) and its hashes.

One line per user, htpasswd-like: `NAME:$egress-sha256$SALT$DIGEST`, where DIGEST is the hex
SHA-256 of `SALT:NAME:PASSWORD`. Blank lines and `#` comments are ignored.

Why not bcrypt, as web-config uses for the metrics endpoint: haproxy checks the credential of
every proxied request itself (an HTTP forward proxy sends it with each request), so the hash
must cost microseconds, and haproxy 2.6 can compute SHA-256 (`sha2` converter) but nothing
slower. These are machine credentials: `haproxy-egress hash-password` makes a random 128-bit
password with its line, the way API-key stores keep SHA-256 of random tokens. A salted fast
hash of a human-chosen password would be guessable from a leaked Secret; docs/policy.md says so.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from haproxy_egress.errors import Problem

SCHEME = "$egress-sha256$"
# Map keys in haproxy: no white space; `:` separates name and password in Basic credentials.
USER_NAME = r"^[A-Za-z0-9._@-]{1,64}$"
_NAME = re.compile(USER_NAME)
_SALT = re.compile(r"^[0-9a-f]{16,64}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ProxyUser:
    """One user's salted hash, as the map file gives it to haproxy (`SALT:DIGEST`)."""

    name: str
    salt: str
    digest: str

    @property
    def entry(self) -> str:
        """The value of the user's map line: haproxy splits it at `:`."""
        return f"{self.salt}:{self.digest}"

    @property
    def line(self) -> str:
        """The user's line in the credentials file."""
        return f"{self.name}:{SCHEME}{self.salt}${self.digest}"

    def verify(self, password: str) -> bool:
        """Whether `password` is this user's (what haproxy computes per request)."""
        return hmac.compare_digest(_digest(self.salt, self.name, password), self.digest)


def _digest(salt: str, name: str, password: str) -> str:
    return hashlib.sha256(f"{salt}:{name}:{password}".encode()).hexdigest()


def hash_password(name: str, password: str, salt: str | None = None) -> ProxyUser:
    """A user's entry for `password`, with a fresh random salt unless one is given."""
    if not _NAME.match(name):
        raise ValueError(f"user name {name!r} must match {USER_NAME}")
    salt = salt if salt is not None else secrets.token_hex(16)
    return ProxyUser(name, salt, _digest(salt, name, password))


def new_password() -> str:
    """A random password worth a fast hash: 128 bits, URL-safe."""
    return secrets.token_urlsafe(16)


def parse_users(data: bytes, source: str) -> tuple[dict[str, ProxyUser], list[Problem]]:
    """The users of a credentials file, and every problem in it with its line."""
    users: dict[str, ProxyUser] = {}
    problems: list[Problem] = []
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return {}, [Problem(source, "", "not UTF-8 text")]
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue

        def problem(message: str, number: int = number) -> None:
            problems.append(Problem(source, "", message, line=number))

        name, sep, hashed = line.partition(":")
        if not sep:
            problem("expected NAME:$egress-sha256$SALT$DIGEST")
            continue
        if not _NAME.match(name):
            problem(f"user name {name!r} must match {USER_NAME}")
            continue
        if name in users:
            problem(f"user {name!r} is listed twice")
            continue
        if not hashed.startswith(SCHEME):
            problem(
                f"user {name!r}: unsupported hash (expected {SCHEME}SALT$DIGEST; make one "
                "with `haproxy-egress hash-password`)"
            )
            continue
        salt, sep, digest = hashed[len(SCHEME) :].partition("$")
        if not sep or not _SALT.match(salt) or not _DIGEST.match(digest):
            problem(
                f"user {name!r}: the salt must be 16-64 lower-case hex digits and the digest "
                "64 (SHA-256)"
            )
            continue
        users[name] = ProxyUser(name, salt, digest)
    return users, problems
