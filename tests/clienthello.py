"""A raw TLS ClientHello with any SNI bytes, for tests of what the proxy does with names a
TLS library would refuse to send (Python's ssl IDNA-encodes server_hostname)."""

from __future__ import annotations

import os


def client_hello(sni: bytes) -> bytes:
    """A TLS 1.3 ClientHello naming `sni` as it is (Python's ssl would IDNA-encode it)."""
    entry = b"\x00" + len(sni).to_bytes(2, "big") + sni
    names = len(entry).to_bytes(2, "big") + entry
    extension = b"\x00\x00" + len(names).to_bytes(2, "big") + names
    extensions = len(extension).to_bytes(2, "big") + extension
    body = b"\x03\x03" + os.urandom(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + extensions
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake
