"""Lua hooks in a supervised router: the audit trail on its stdout, and hook reloads that are
validated like every other change (a broken hello.lua never replaces the running config)."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kubelet import ConfigMapVolume
from tests.router import Router
from tests.router import http_route as _route
from tests.support import (
    HELLO_LUA,
    DnsServer,
    HttpOrigin,
    TcpOrigin,
    free_port,
    http_get,
    wait_for,
    write_configmap,
)

PREFIX = "local0.info: "  # socklog's facility.level in front of every haproxy log line


def audit_lines(router: Router) -> list[dict[str, Any]]:
    """The audit objects on the router's stdout: with the log relay (the default) each line
    is the bare JSON object; socklog prints `local0.info: ` and the rfc3164 header
    (`Nov 26 10:00:00 localhost haproxy[41]: `) before it."""
    out = []
    for line in router.stdout().splitlines():
        if line.startswith('{"type":"egress-audit"'):
            out.append(json.loads(line))
            continue
        head, sep, doc = line.partition(": {")
        if line.startswith(PREFIX) and sep and doc.startswith('"type":"egress-audit"'):
            assert head.split(": ", 1)[1].split()[-1].startswith("haproxy["), line
            out.append(json.loads("{" + doc))
    return out


def wait_for_audit(
    router: Router, enough: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """The audit lines on the router's stdout once `enough` holds for them (within 10 s):
    haproxy logs a connection when it closes, a moment after the client saw it end."""
    lines: list[dict[str, Any]] = []

    def arrived() -> bool:
        lines[:] = audit_lines(router)
        return enough(lines)

    wait_for(arrived, timeout=10)
    return lines


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Router]:
    r = Router(tmp_path / "router", config_dir=tmp_path / "configmap", drain_seconds=2)
    yield r
    r.stop()


def test_audit_lines_reach_the_router_stdout(router: Router, origin: HttpOrigin) -> None:
    http_port, tcp_port, denied_port = free_port(), free_port(), free_port()
    assert router.config_dir is not None
    write_configmap(
        router.config_dir,
        {
            "routes.yaml": {
                "defaults": {"hooks": ["audit"]},
                "routes": [
                    _route("api", http_port, origin),
                    _route("raw", tcp_port, origin, mode="tcp"),
                    _route(
                        "partners",
                        denied_port,
                        origin,
                        allow_from=["10.0.0.0/8"],
                        hooks=["audit", {"use": "deny_page"}],
                    ),
                ],
            }
        },
    )
    router.start()
    assert http_get(http_port) == "origin-a"
    assert http_get(tcp_port) == "origin-a"
    with socket.create_connection(("127.0.0.1", denied_port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: blocked.test\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.0 403 Forbidden")
    lines = wait_for_audit(router, lambda lines: len(lines) >= 3)
    by_route = {line["route"]: line for line in lines}
    api, raw, partners = by_route["api"], by_route["raw"], by_route["partners"]
    for line in (api, raw, partners):
        assert line["client"]["address"] == "127.0.0.1"
        assert isinstance(line["client"]["port"], int)
        assert line["time"].endswith("Z")
        assert line["bytes_up"] > 0
        assert line["bytes_down"] > 0
        assert line["duration_ms"] >= 0
    for line in (api, raw):
        assert line["destination"] == {
            "name": "127.0.0.1",
            "address": "127.0.0.1",
            "port": str(origin.port),
        }
        assert line["verdict"] == "allowed"
        assert line["rule"] == ""
        assert line["termination"] == "--"
    assert api["status"] == 200
    assert api["method"] == "GET"
    assert api["host"] == "test"  # http_get's Host header
    assert "status" not in raw
    assert "method" not in raw
    assert partners["verdict"] == "denied"
    assert partners["rule"] == "allow_from"
    assert partners["status"] == 403
    assert partners["host"] == "blocked.test"
    # No server was chosen: haproxy has no destination, the fields are empty strings.
    assert partners["destination"] == {"name": "", "address": "", "port": ""}


class V6Origin(TcpOrigin):
    """A TCP listener on [::1] that answers every connection with `v6` and closes it."""

    def __init__(self) -> None:
        super().__init__("::1")

    def handle(self, conn: socket.socket) -> None:
        conn.sendall(b"v6")


def test_audit_names_dns_ipv6_and_failed_destinations(
    router: Router, origin: HttpOrigin, dns: DnsServer
) -> None:
    dns.records["origin.test"] = ["127.0.0.1"]
    listener = V6Origin()
    v6_port = listener.port
    named, v6, refused, nowhere = free_port(), free_port(), free_port(), free_port()
    closed = free_port()  # nothing listens there
    assert router.config_dir is not None
    write_configmap(
        router.config_dir,
        {
            "routes.yaml": {
                "resolvers": {"nameservers": [f"127.0.0.1:{dns.port}"]},
                "defaults": {"hooks": ["audit"], "check": False},
                "routes": [
                    _route("named", named, origin, destinations=[f"origin.test:{origin.port}"]),
                    _route("v6", v6, origin, mode="tcp", destinations=[f"[::1]:{v6_port}"]),
                    _route(
                        "refused", refused, origin, mode="tcp", destinations=[f"127.0.0.1:{closed}"]
                    ),
                    _route("nowhere", nowhere, origin, destinations=["missing.test:80"]),
                ],
            }
        },
    )
    try:
        router.start()
        wait_for(lambda: http_get(named, timeout=1) == "origin-a", timeout=10)
        # A Host header with a quote, a backslash and UTF-8 must still give one JSON line.
        with socket.create_connection(("127.0.0.1", named), timeout=5) as s:
            s.sendall('GET / HTTP/1.1\r\nHost: a"b\\c\u00e9\r\nConnection: close\r\n\r\n'.encode())
            assert s.recv(100).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", v6), timeout=5) as s:
            assert s.recv(10) == b"v6"
        with socket.create_connection(("127.0.0.1", refused), timeout=5) as s:
            assert s.recv(10) == b""  # the connect failed: haproxy closes
        with socket.create_connection(("127.0.0.1", nowhere), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 503")

        def all_routes(lines: list[dict[str, Any]]) -> bool:
            return {"v6", "refused", "nowhere"} <= {ln["route"] for ln in lines} and sum(
                ln["route"] == "named" for ln in lines
            ) >= 2

        lines = wait_for_audit(router, all_routes)
    finally:
        listener.stop()
    hosts = {ln["host"]: ln for ln in lines if ln["route"] == "named"}
    odd = hosts['a"b\\c\u00e9']
    assert odd["destination"] == {
        "name": "origin.test",  # the configured name, not the server-template slot
        "address": "127.0.0.1",
        "port": str(origin.port),
    }
    (v6_line,) = (ln for ln in lines if ln["route"] == "v6")
    assert v6_line["destination"] == {"name": "::1", "address": "::1", "port": str(v6_port)}
    assert v6_line["termination"] == "--"
    (refused_line,) = (ln for ln in lines if ln["route"] == "refused")
    assert refused_line["destination"]["port"] == str(closed)
    assert refused_line["termination"][0] == "S"  # the server side failed
    (nowhere_line,) = (ln for ln in lines if ln["route"] == "nowhere")
    assert nowhere_line["destination"] == {"name": "", "address": "", "port": ""}
    assert nowhere_line["status"] == 503
    assert nowhere_line["verdict"] == "allowed"  # no rule refused it: nothing was up


def test_audit_records_allow_from_refusals_on_tcp_routes(
    router: Router, origin: HttpOrigin
) -> None:
    """On a tcp route the refused client still just sees the connection close, but the refusal
    is in the audit trail (a `tcp-request connection reject` is not logged at all). An http
    route keeps refusing at accept time: its content rules would first wait for a whole
    request, which lets refused clients hold connections; deny_page is its audited refusal."""
    tcp, http = free_port(), free_port()
    assert router.config_dir is not None
    outside = {"allow_from": ["10.0.0.0/8"], "hooks": ["audit"]}
    write_configmap(
        router.config_dir,
        {
            "routes.yaml": {
                "routes": [
                    _route("tcp-partners", tcp, origin, mode="tcp", **outside),
                    _route("http-partners", http, origin, **outside),
                ]
            }
        },
    )
    router.start()
    with socket.create_connection(("127.0.0.1", tcp), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        assert s.recv(100) == b""  # closed, nothing sent
    # Closed at accept, before any request was read: the client may even see the reset
    # while connecting.
    with (
        contextlib.suppress(ConnectionResetError),
        socket.create_connection(("127.0.0.1", http), timeout=5) as s,
    ):
        assert s.recv(100) == b""
    assert origin.peers == []
    (line,) = wait_for_audit(router, lambda lines: len(lines) >= 1)
    assert line["route"] == "tcp-partners"
    assert (line["verdict"], line["rule"]) == ("denied", "allow_from")
    assert line["destination"] == {"name": "", "address": "", "port": ""}


def test_audit_lines_stay_json_for_whatever_a_client_sends(
    router: Router, origin: HttpOrigin
) -> None:
    """haproxy's HTTP parser logs bad requests and empty connections itself, without a
    stream (no variables, no Lua); long or hostile texts must not break or cut the line."""
    port = free_port()
    assert router.config_dir is not None
    write_configmap(
        router.config_dir,
        {"routes.yaml": {"routes": [_route("api", port, origin, hooks=["audit"])]}},
    )
    router.start()
    sends = [
        b"\x00\x01\xff garbage\r\n\r\n",  # not HTTP: 400 from the parser
        b"",  # connect and close
        b"GET" * 3000 + b" / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",  # 9 kB method
        b"GET / HTTP/1.1\r\nHost: "
        + 'é\u2028"\\'.encode() * 60
        + b"\x7f\r\nConnection: close\r\n\r\n",  # a long, hostile Host header
        b"GET / HTTP/1.1\r\nHost: evil.test, good.test\r\nConnection: close\r\n\r\n",
    ]
    for data in sends:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            if not data:
                continue  # close without a byte
            s.sendall(data)
            with contextlib.suppress(ConnectionResetError):
                while s.recv(65536):
                    pass
    # audit_lines json.loads every line: a broken or cut one fails here.
    lines = wait_for_audit(router, lambda lines: len(lines) >= len(sends))
    assert {ln["verdict"] for ln in lines} <= {"allowed", ""}
    hosts = {ln["host"] for ln in lines}
    assert any(h.startswith('é\u2028"\\') for h in hosts), hosts
    assert "evil.test, good.test" in hosts  # the whole header, not its last element
    assert max(len(ln["method"]) for ln in lines) <= 16


def test_hello_lua_reloads_and_a_broken_one_keeps_the_old_config(
    tmp_path: Path, origin: HttpOrigin
) -> None:
    volume = ConfigMapVolume(tmp_path / "configmap")
    a = free_port()
    plain = {"routes.yaml": {"routes": [_route("a", a, origin)]}}
    hooked = {
        "routes.yaml": {
            "routes": [
                _route(
                    "a", a, origin, hooks=[{"use": "hello", "at": "service", "args": {"who": "a"}}]
                )
            ]
        },
    }
    volume.write(plain)
    router = Router(tmp_path / "router", config_dir=volume.directory, drain_seconds=2)
    try:
        router.start()
        assert http_get(a) == "origin-a"
        # The user adds hello.lua and attaches it: it runs after the reload.
        volume.write({**hooked, "hello.lua": HELLO_LUA % "hello"})
        wait_for(lambda: http_get(a, timeout=1) == "hello, a", timeout=10)
        worker = router.worker_pid()
        live = (router.run_dir / "haproxy.cfg").read_text()
        # The generated policy vocabulary (config/vocabulary.py) first, then hello.lua.
        vocabulary, *loaded = [ln.split()[1] for ln in live.splitlines() if "lua-load" in ln]
        assert Path(vocabulary).read_text().startswith("-- Generated by haproxy_egress")
        assert len(loaded) == 1
        # A broken hello.lua: rejected by `haproxy -c`, named by key, line and route.
        volume.write({**hooked, "hello.lua": "core.register_service(\n"})
        wait_for(lambda: router.metric("haproxy_egress_reload_failures_total") == 1.0, 10)
        assert router.metric("haproxy_egress_config_last_reload_successful") == 0.0
        rejected = [ln for ln in router.stderr().splitlines() if "reload rejected" in ln]
        assert len(rejected) == 1
        assert "hello.lua:2: Lua error:" in rejected[0]
        assert "used by route 'a' (routes.yaml: routes[0].hooks[0])" in rejected[0]
        # ...and the old config keeps serving, from the very same files.
        assert http_get(a) == "hello, a"
        assert router.worker_pid() == worker
        assert (router.run_dir / "haproxy.cfg").read_text() == live
        assert Path(loaded[0]).read_text() == HELLO_LUA % "hello"
        # The fix is picked up; the replaced file is pruned once nothing loads it.
        volume.write({**hooked, "hello.lua": HELLO_LUA % "hi"})
        wait_for(lambda: http_get(a, timeout=1) == "hi, a", timeout=10)
        volume.write({**hooked, "hello.lua": HELLO_LUA % "hey"})
        wait_for(lambda: http_get(a, timeout=1) == "hey, a", timeout=10)
        assert not Path(loaded[0]).exists()  # neither live nor last-good loads it now
    finally:
        router.stop()
