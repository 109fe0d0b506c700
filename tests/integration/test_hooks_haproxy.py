"""Lua hooks through real haproxy: `haproxy -c`'s verdict on hook files, and each hook serving.

The pure parts (resolution, staging, recorded alerts) are in tests/unit/render/test_hooks.py.
Everything runs on the production path (`pipeline.compile_snapshot`, `reload.check_compiled`):
the ConfigMap directory is read, hooks resolved, the Lua files staged content-addressed in the
run dir, and haproxy itself loads them. The audit hook's stdout and the reload guarantees are
in test_hooks_router.py (a supervised router).
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from haproxy_egress.errors import ConfigError
from haproxy_egress.render.pipeline import Compiled
from haproxy_egress.runtime.reload import check_compiled
from tests.support import (
    EchoOrigin,
    HaproxyProcess,
    free_port,
    port_open,
    wait_for,
)
from tests.unit.render.test_hooks import STAMP_ACTIONS, compile_keys, route

HELLO_SERVICE = b"""
core.register_service("hello", "http", function(applet)
    local body = (applet:get_var("txn.arg.hello.greeting") or "hello") .. " from "
        .. applet.f:fe_name()
    applet:set_status(200)
    applet:add_header("content-length", tostring(#body))
    applet:start_response()
    applet:send(body)
end)
"""
TAG_RESPONSE = b"""
core.register_action("tag", {"http-res"}, function(txn)
    txn.http:res_set_header("X-Tag", txn:get_var("txn.arg.tag.name") or "none")
end, 0)
"""
TCP_BANNER = b"""
core.register_service("banner", "tcp", function(applet)
    applet:send("banner " .. (applet:get_var("txn.arg.banner.text") or "?") .. "\\n")
end)
"""


# --- peers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: str


def get(port: int, headers: Mapping[str, str] | None = None, timeout: float = 5.0) -> Response:
    """One HTTP/1.0 GET on a new connection, with the status, headers and body."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET / HTTP/1.0\r\nHost: app.test\r\n{extra}\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return Response(
        int(lines[0].split()[1]), {k.lower(): v for k, v in fields.items()}, body.decode()
    )


# --- compiling the way the router does -------------------------------------------------------


def problems_of(tmp_path: Path, keys: Mapping[str, object]) -> list[str]:
    try:
        settings, compiled = compile_keys(tmp_path, keys)
        check_compiled(settings, compiled)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    raise AssertionError("the configuration was accepted")


@contextlib.contextmanager
def serving(tmp_path: Path, keys: Mapping[str, object], ports: list[int]) -> Iterator[Compiled]:
    """Compile, check and run haproxy on the result until every listed port listens."""
    settings, compiled = compile_keys(tmp_path, keys)
    check_compiled(settings, compiled)
    settings.run.config.write_text(compiled.text)
    proc = HaproxyProcess(settings.run.config).start()
    try:
        wait_for(lambda: all(port_open(p) for p in ports), timeout=10)
        yield compiled
    finally:
        proc.stop()


# --- resolution checked by haproxy -----------------------------------------------------------


def test_only_used_hooks_are_loaded_each_once_shipped_first(tmp_path: Path) -> None:
    keys = {
        "routes.yaml": {
            "routes": [
                route("a", 18001, 1, hooks=["audit", {"use": "stamp", "at": "http-request"}]),
                route("b", 18002, 1, hooks=["audit"]),
                route("c", 18003, 1),
            ]
        },
        "stamp.lua": STAMP_ACTIONS,
        "unused.lua": b"this is not Lua at all (",  # never loaded, so never an error
    }
    settings, compiled = compile_keys(tmp_path, keys)
    # The generated policy vocabulary first (config/vocabulary.py), so every hook can read it.
    assert [f.key for f in compiled.hooks.files] == ["vocabulary.lua", "audit.lua", "stamp.lua"]
    loads = [ln.split()[1] for ln in compiled.text.splitlines() if "lua-load" in ln]
    assert loads == [str(settings.run_dir / "lua" / f.file_name) for f in compiled.hooks.files]
    assert not settings.run.lua.exists()  # compiling writes nothing; the check stages
    check_compiled(settings, compiled)
    for path in loads:  # staged, content-addressed
        assert Path(path).read_bytes() == next(
            f.content for f in compiled.hooks.files if path.endswith(f.file_name)
        )
    check_compiled(settings, compiled)
    c = compiled.text.split("frontend c\n")[1].split("backend c")[0]
    assert "lua." not in c
    assert "option httplog" in c


# --- haproxy's verdict on a hook file, named by key and route --------------------------------


def test_lua_syntax_error_names_the_key_line_and_route(tmp_path: Path) -> None:
    keys = {
        "routes.yaml": {
            "routes": [route("a", 18001, 1, hooks=[{"use": "hello", "at": "service"}])]
        },
        "hello.lua": b"-- hello\nlocal = 1\n",
    }
    (problem,) = problems_of(tmp_path, keys)
    assert problem.startswith("hello.lua:2: Lua error: <name> expected near '='"), problem
    assert "used by route 'a' (routes.yaml: routes[0].hooks[0])" in problem
    assert "/lua/" not in problem  # the run dir's content-addressed name means nothing to users


def test_runtime_error_while_loading_is_reported_too(tmp_path: Path) -> None:
    keys = {
        "routes.yaml": {"routes": [route("a", 18001, 1, hooks=[{"use": "x", "at": "service"}])]},
        "x.lua": b'error("boom")\n',
    }
    (problem,) = problems_of(tmp_path, keys)
    assert problem.startswith("x.lua:1: Lua error:"), problem
    assert "boom" in problem


def test_file_that_registers_no_such_action(tmp_path: Path) -> None:
    keys = {
        "routes.yaml": {
            "routes": [route("a", 18001, 1, hooks=[{"use": "stamp", "at": "http-response"}])]
        },
        "stamp.lua": STAMP_ACTIONS,  # registers stamp for http-req only
    }
    (problem,) = problems_of(tmp_path, keys)
    assert problem.startswith("stamp.lua: does not register the action 'stamp' for http-response")
    assert "route 'a'" in problem


def test_file_that_registers_no_such_service(tmp_path: Path) -> None:
    keys = {
        "routes.yaml": {
            "routes": [route("a", 18001, 1, hooks=[{"use": "stamp", "at": "service"}])]
        },
        "stamp.lua": STAMP_ACTIONS,
    }
    (problem,) = problems_of(tmp_path, keys)
    assert problem.startswith("stamp.lua: does not register the service 'stamp'"), problem
    assert "route 'a'" in problem


# --- each hook through real haproxy ----------------------------------------------------------


def test_user_hooks_run_with_their_arguments(tmp_path: Path, echo: EchoOrigin) -> None:
    a, b, c = free_port(), free_port(), free_port()
    keys = {
        "routes.yaml": {
            "routes": [
                route(
                    "a",
                    a,
                    echo.port,
                    hooks=[
                        {"use": "stamp", "at": "http-request", "args": {"value": "v-1"}},
                        {"use": "tag", "at": "http-response", "args": {"name": "t.2"}},
                    ],
                ),
                route("b", b, echo.port, hooks=[{"use": "hello", "at": "service"}]),
                route(
                    "c",
                    c,
                    echo.port,
                    mode="tcp",
                    hooks=[{"use": "banner", "at": "service", "args": {"text": "hi"}}],
                ),
            ]
        },
        "stamp.lua": STAMP_ACTIONS,
        "tag.lua": TAG_RESPONSE,
        "hello.lua": HELLO_SERVICE,
        "banner.lua": TCP_BANNER,
    }
    with serving(tmp_path, keys, [a, b, c]):
        r = get(a)
        assert r.status == 200
        assert json.loads(r.body)["x-stamp"] == "v-1"
        assert r.headers["x-tag"] == "t.2"
        assert get(b).body == "hello from b"
        with socket.create_connection(("127.0.0.1", c), timeout=5) as s:
            assert s.makefile("rb").readline() == b"banner hi\n"


def test_deny_page_names_route_rule_and_contact(tmp_path: Path, echo: EchoOrigin) -> None:
    denied, allowed = free_port(), free_port()
    page = {"use": "deny_page", "args": {"contact": "egress-team@corp.test"}}
    keys = {
        "routes.yaml": {
            "routes": [
                route("partners", denied, echo.port, allow_from=["10.0.0.0/8"], hooks=[page]),
                route("open", allowed, echo.port, allow_from=["127.0.0.0/8"], hooks=[page]),
            ]
        }
    }
    with serving(tmp_path, keys, [denied, allowed]):
        r = get(denied)
        assert r.status == 403
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        assert "route: partners" in r.body
        assert "rule:  allow_from" in r.body
        assert "why:   your address is not in this route's allow_from list" in r.body
        assert "contact egress-team@corp.test" in r.body
        assert "127.0.0.1" not in r.body
        assert str(echo.port) not in r.body
        assert get(allowed).status == 200


def test_proxy_auth_sets_the_header_from_the_secret(tmp_path: Path, echo: EchoOrigin) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "username").write_text("alice\n")
    (secret / "password").write_text("s3:cr3t")
    with_secret, without = free_port(), free_port()
    keys = {
        "routes.yaml": {
            "routes": [
                route(
                    "parent",
                    with_secret,
                    echo.port,
                    hooks=[{"use": "proxy_auth", "args": {"secret_dir": str(secret)}}],
                ),
                route(
                    "broken",
                    without,
                    echo.port,
                    hooks=[{"use": "proxy_auth", "args": {"secret_dir": str(tmp_path / "none")}}],
                ),
            ]
        }
    }
    expected = "Basic " + base64.b64encode(b"alice:s3:cr3t").decode()
    with serving(tmp_path, keys, [with_secret, without]) as compiled:
        assert "s3:cr3t" not in compiled.text
        assert "alice" not in compiled.text
        seen = json.loads(get(with_secret, {"Proxy-Authorization": "Basic Y2xpZW50"}).body)
        assert seen["proxy-authorization"] == expected  # the client's own value is replaced
        seen = json.loads(get(without, {"Proxy-Authorization": "Basic Y2xpZW50"}).body)
        assert "proxy-authorization" not in seen  # never the client's credentials upstream
