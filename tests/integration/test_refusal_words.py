"""Every refusal body says which rule decided and what would change it, in `explain`'s words.

The live proxy's 403 body (plain HTTP and CONNECT) must equal the reason `explain` gives for
the same request: both come from config/policy.py REFUSALS, one filled by haproxy's variables,
the other by Python. The loopback class names the way out (`guard: [default, -loopback]`, or
an address rule before rule N), and no reason ends empty.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from haproxy_egress.commands.explain import explain
from haproxy_egress.config.document import Config
from tests.policy_proxy import PolicyProxy, connect_reply, get
from tests.support import free_port


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[PolicyProxy, int, int]]:
    strict, lab = free_port(), free_port()
    routes = [
        ("strict", strict, ["198.51.100.9", "!10.0.0.0/8"]),
        ("lab", lab, ["!10.0.0.0/8", "*"]),
    ]
    doc = {
        "resolvers": {"nameservers": [f"127.0.0.1:{free_port()}"]},
        "routes": [
            {"name": name, "listen": f"127.0.0.1:{port}", "mode": "proxy", "policy": rules}
            for name, port, rules in routes
        ],
    }
    running = PolicyProxy(tmp_path, doc).start()
    try:
        yield running, strict, lab
    finally:
        running.stop()


def _body(reply: bytes) -> str:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403"), reply
    return body.decode()


def _explained(config: Config, route: str, authority: str) -> str:
    verdict = explain(config, authority, addresses=[authority.rsplit(":", 1)[0]])
    (answer,) = [r for r in verdict.routes if r.route == route]
    assert not answer.allowed
    return answer.reason


@pytest.mark.timeout(30)
def test_403_bodies_are_explains_reasons(proxy: tuple[PolicyProxy, int, int]) -> None:
    running, strict, lab = proxy
    assert running.config is not None
    cases = [
        ("strict", strict, "203.0.113.9:81", "no rule of route strict allows 203.0.113.9 port 81"),
        ("strict", strict, "10.1.2.3:81", "rule 2 (!10.0.0.0/8)"),
        ("lab", lab, "127.0.0.5:81", "guard: [default, -loopback]"),
        ("lab", lab, f"127.0.0.1:{lab}", "is the router itself"),
    ]
    for route, port, authority, words in cases:
        expected = _explained(running.config, route, authority)
        assert words in expected, expected
        assert _body(get(port, authority)) == expected, authority
        assert not expected.rstrip().endswith(":"), expected  # never an empty reason
    # The loopback class names the address rule that would let it through, before rule 2.
    assert "place an address rule such as 127.0.0.5 before rule 2" in _explained(
        running.config, "lab", "127.0.0.5:81"
    )
    # CONNECT refusals carry the same reason.
    reply = connect_reply(strict, "203.0.113.9:443")
    assert reply.startswith(b"HTTP/1.1 403"), reply
    assert _explained(running.config, "strict", "203.0.113.9:443").encode() in reply
