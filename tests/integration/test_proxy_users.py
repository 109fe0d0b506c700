"""Proxy users at the real proxy: `Proxy-Authorization: Basic` checked by haproxy against the
salted SHA-256 entries of the users file, for plain HTTP and for CONNECT; groups that name
users; 407 with a challenge for a wrong (or, with `proxy_auth: required`, a missing)
credential, logged and counted; `explain --user` agrees with the proxy on every case.

Origins and DNS are on loopback; clients use loopback source addresses (127.0.0.2 for a
group by address and user)."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from haproxy_egress.commands.explain import explain
from haproxy_egress.config.users import hash_password
from tests.netns_policy import CountingOrigin
from tests.policy_proxy import PolicyProxy, exchange
from tests.support import EchoOrigin, free_port, wait_for

PASSWORDS = {"alice": "wonderland", "bob": "b:with:colons", "carol": "c-4Xq9"}


def _users_file() -> bytes:
    lines = ["# proxy users", ""] + [hash_password(n, p).line for n, p in PASSWORDS.items()]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tmp = tmp_path_factory.mktemp("users")
    origin = CountingOrigin("origin", "127.0.0.1", free_port()).start()
    echo = EchoOrigin().start()
    ports: dict[str, int] = {}
    while len(set(ports.values())) < 2:
        ports = {n: free_port() for n in ("optional", "required")}
    base = {"mode": "proxy", "source": "127.0.0.1"}
    doc = {
        "resolvers": {"nameservers": [f"127.0.0.1:{free_port()}"], "timeout": "200ms"},
        "routes": [
            {
                **base,
                "name": "optional",
                "listen": f"127.0.0.1:{ports['optional']}",
                "clients": [
                    {"name": "ops", "users": ["alice"], "policy": ["127.0.0.1"]},
                    {
                        "name": "lab",
                        "from": ["127.0.0.2/32"],
                        "users": ["bob"],
                        "policy": ["127.0.0.1"],
                    },
                ],
                "policy": ["!127.0.0.0/8"],
            },
            {
                **base,
                "name": "required",
                "listen": f"127.0.0.1:{ports['required']}",
                "proxy_auth": "required",
                "clients": [{"name": "ops", "users": ["alice"], "policy": ["!127.0.0.1"]}],
                "policy": ["127.0.0.1"],
            },
        ],
    }
    running = PolicyProxy(tmp, doc, users=_users_file())
    try:
        running.start()
        yield {"proxy": running, "ports": ports, "origin": origin, "echo": echo}
    finally:
        running.stop()
        echo.stop()
        origin.stop()


def _credential(user: str, password: str | None = None) -> str:
    secret = f"{user}:{PASSWORDS[user] if password is None else password}"
    return "Basic " + base64.b64encode(secret.encode()).decode()


def _ask(
    port: int, target: str, *, connect: bool, credential: str | None, source: str = "127.0.0.1"
) -> bytes:
    """One GET (absolute URI) or CONNECT through the proxy; the whole reply."""
    auth = f"Proxy-Authorization: {credential}\r\n" if credential else ""
    if connect:
        head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n"
        reply = b""
        # A tunnel stays open: read the head only.
        with socket.create_connection(
            ("127.0.0.1", port), timeout=5, source_address=(source, 0)
        ) as s:
            s.sendall(head.encode())
            while b"\r\n\r\n" not in reply:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return reply
    head = f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n{auth}Connection: close\r\n\r\n"
    return exchange(port, head.encode(), source)


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.") else 0


# (route, source, credential as (user, password or None for the right one) or None,
#  expected status, group, rule)
CASES = [
    ("optional", "127.0.0.1", None, 403, "default", "1"),
    ("optional", "127.0.0.1", ("alice", None), 200, "ops", "1"),
    ("optional", "127.0.0.1", ("alice", "wrong"), 407, "none", "proxy-auth"),
    ("optional", "127.0.0.1", ("bob", None), 403, "default", "1"),  # lab is 127.0.0.2 only
    ("optional", "127.0.0.2", ("bob", None), 200, "lab", "1"),
    ("optional", "127.0.0.2", ("bob", "b"), 407, "none", "proxy-auth"),  # cut at a colon
    ("optional", "127.0.0.1", ("carol", None), 403, "default", "1"),  # a user of no group
    ("required", "127.0.0.1", None, 407, "none", "proxy-auth"),
    ("required", "127.0.0.1", ("carol", None), 200, "default", "1"),
    ("required", "127.0.0.1", ("alice", None), 403, "ops", "1"),
    ("required", "127.0.0.1", ("carol", "C"), 407, "none", "proxy-auth"),
]


@pytest.mark.parametrize("connect", [False, True], ids=["http", "connect"])
@pytest.mark.parametrize(("route", "source", "cred", "status", "group", "rule"), CASES)
def test_credentials_choose_the_group_or_get_407(
    proxy: dict[str, object],
    *,
    connect: bool,
    route: str,
    source: str,
    cred: tuple[str, str | None] | None,
    status: int,
    group: str,
    rule: str,
) -> None:
    running, ports, origin = proxy["proxy"], proxy["ports"], proxy["origin"]
    assert isinstance(running, PolicyProxy)
    assert isinstance(ports, dict)
    assert isinstance(origin, CountingOrigin)
    target = f"127.0.0.1:{origin.port}"
    credential = _credential(*cred) if cred else None
    before = running.counters().get((route, group, rule, "allow" if status == 200 else "deny"), 0)
    reply = _ask(ports[route], target, connect=connect, credential=credential, source=source)
    assert _status(reply) == status, reply
    if status == 407:
        # haproxy writes header names in lower case (HTTP/1 names are case-insensitive).
        assert f'proxy-authenticate: basic realm="{route}"'.encode() in reply.lower()
        why = b"wrong proxy credentials" if credential else b"proxy authentication required"
        assert why in reply
    verdict = "allow" if status == 200 else "deny"
    key = (route, group, rule, verdict)
    wait_for(lambda: running.counters().get(key, 0) == before + 1, 5)
    user = cred[0] if cred and status != 407 else "-"
    wanted = (route, group, rule, verdict, user)
    fields = ("route", "group", "rule", "verdict", "user")
    wait_for(lambda: wanted in {tuple(d.get(f) for f in fields) for d in running.decisions()}, 5)
    # explain, told who authenticated (a wrong password is an unknown user to it), agrees.
    assert running.config is not None
    asked = None if cred is None else (cred[0] if cred[1] is None else "nobody")
    found = [
        r
        for r in explain(running.config, target, client=source, user=asked).routes
        if r.route == route
    ]
    assert [(r.allowed, r.verdict, r.rule_id) for r in found] == [(status == 200, verdict, rule)]
    if status != 407:
        assert found[0].group == group


def test_credentials_never_reach_the_origin(proxy: dict[str, object]) -> None:
    ports, echo = proxy["ports"], proxy["echo"]
    assert isinstance(ports, dict)
    assert isinstance(echo, EchoOrigin)
    reply = _ask(
        ports["required"],
        f"127.0.0.1:{echo.port}",
        connect=False,
        credential=_credential("carol"),
    )
    assert _status(reply) == 200
    headers = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert "proxy-authorization" not in headers
    assert headers["host"] == f"127.0.0.1:{echo.port}"


def test_a_malformed_credential_is_a_wrong_one(proxy: dict[str, object]) -> None:
    ports, origin = proxy["ports"], proxy["origin"]
    assert isinstance(ports, dict)
    assert isinstance(origin, CountingOrigin)
    target = f"127.0.0.1:{origin.port}"
    for credential in ("Basic !!!notbase64", "Bearer abc", "Basic " + "YWxpY2U=", "basic"):
        for connect in (False, True):
            reply = _ask(ports["optional"], target, connect=connect, credential=credential)
            assert _status(reply) == 407, (credential, connect, reply)


def test_the_users_file_is_a_map_and_holds_no_password(proxy: dict[str, object]) -> None:
    running = proxy["proxy"]
    assert isinstance(running, PolicyProxy)
    text = (running.run.maps / "optional.users.map").read_text()
    assert sorted(line.split()[0] for line in text.splitlines()) == sorted(PASSWORDS)
    config = Path(running.run.config).read_text()
    for password in PASSWORDS.values():
        assert password not in text
        assert password not in config
    assert config.count("sha2(256)") == 4  # 2 routes x (HTTP, CONNECT)
