"""Lua hooks without a process: resolution and its located errors, the rule lines a route
gets, staging in the run dir, and haproxy's alerts (recorded, tests/data/haproxy/) turned into
problems naming the key and the route. Through real haproxy: tests/integration/
test_hooks_haproxy.py (and test_hooks_router.py for a supervised router).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from haproxy_egress.config.sources import read_snapshot
from haproxy_egress.errors import ConfigError
from haproxy_egress.render import hooks
from haproxy_egress.render.compiler import RenderOptions
from haproxy_egress.rundir import RunDir
from haproxy_egress.runtime import staging
from haproxy_egress.runtime.reload import Compiled, compile_snapshot
from haproxy_egress.settings import Settings
from tests.support import loopback_route, write_configmap
from tests.unit.haproxy.recorded import DATA, VERSIONS

STAMP_ACTIONS = b"""
core.register_action("stamp", {"http-req"}, function(txn)
    txn.http:req_set_header("X-Stamp", txn:get_var("txn.arg.stamp.value") or "none")
end, 0)
"""


def route(name: str, port: int, dest_port: int, **extra: Any) -> dict[str, Any]:
    """A route to 127.0.0.1:`dest_port` without health checks (most get no traffic at all)."""
    return loopback_route(name, port, dest_port, check=False, **extra)


def compile_keys(tmp_path: Path, keys: Mapping[str, object]) -> tuple[Settings, Compiled]:
    """ConfigMap keys → Compiled via the reload transaction's own compile step."""
    cm = tmp_path / "configmap"
    write_configmap(cm, keys)
    run_dir = tmp_path / "run"
    settings = Settings(config_dir=cm, run_dir=run_dir, metrics_port=0)
    options = RenderOptions(run_dir=run_dir, log_stdout=True)
    return settings, compile_snapshot(settings, options, read_snapshot(cm))


def problems_of(tmp_path: Path, keys: Mapping[str, object]) -> list[str]:
    """The problems the compile step (hook resolution) finds; haproxy is not asked."""
    try:
        compile_keys(tmp_path, keys)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    raise AssertionError("the configuration was accepted")


# --- resolution -----------------------------------------------------------------------------


def test_no_hooks_no_lua(tmp_path: Path) -> None:
    _, compiled = compile_keys(tmp_path, {"routes.yaml": {"routes": [route("a", 18001, 1)]}})
    assert "lua-load" not in compiled.text
    assert "lua." not in compiled.text
    assert compiled.hooks.files == ()
    assert not (tmp_path / "run" / "lua").exists()


def test_arguments_become_set_var_of_validated_tokens(tmp_path: Path) -> None:
    hook = {"use": "stamp", "at": "http-request", "args": {"value": "a.b/c:d@e+f=g-1", "n": 5}}
    keys = {"routes.yaml": {"routes": [route("a", 18001, 1, hooks=[hook])]}, "stamp.lua": b""}
    _, compiled = compile_keys(tmp_path, keys)
    lines = [ln.strip() for ln in compiled.text.splitlines() if "stamp" in ln]
    assert lines == [
        "http-request set-var(txn.arg.stamp.n) str(5)",
        "http-request set-var(txn.arg.stamp.value) str(a.b/c:d@e+f=g-1)",
        "http-request lua.stamp",
    ]


def test_shipped_hooks_bind_as_their_table_says(tmp_path: Path) -> None:
    """deny_page's page comes before every other request hook, and only where allow_from
    refuses someone; audit is no rule at all; proxy_auth is a rule at its phase."""
    auth = {"use": "proxy_auth", "args": {"secret_dir": "/etc/parent"}}
    with_allow = route("a", 18001, 1, hooks=[auth, "deny_page", "audit"], mode="http")
    with_allow["allow_from"] = ["127.0.0.1/32"]
    without = route("b", 18002, 1, hooks=["deny_page"], mode="http")
    keys = {"routes.yaml": {"routes": [with_allow, without]}}
    _, compiled = compile_keys(tmp_path, keys)
    a, b = compiled.hooks.for_route("a"), compiled.hooks.for_route("b")
    assert [(x.directive, x.action, x.condition) for x in a.attachments] == [
        ("http-request", "use-service lua.deny_page", " unless client_allowed"),
        ("http-request", "lua.proxy_auth", ""),
    ]
    assert a.attachments[0].variables == (("txn.egress_rule", "allow_from"),)
    assert (a.audit, a.deny_page) == (True, True)
    assert (b.attachments, b.audit, b.deny_page) == ((), False, True)


@pytest.mark.parametrize(
    ("hook", "mode", "expected"),
    [
        ("helo", "http", "routes[0].hooks[0].use: unknown hook 'helo': no ConfigMap key helo.lua"),
        ({"use": "stamp"}, "http", "routes[0].hooks[0].at: say where the hook runs"),
        (
            {"use": "stamp", "at": "http-request"},
            "tcp",
            "routes[0].hooks[0].at: http-request hooks need mode: http",
        ),
        ("deny_page", "tcp", "routes[0].hooks[0].use: hook 'deny_page' needs mode: http"),
        ("proxy_auth", "http", "hooks[0].args: hook 'proxy_auth' needs the argument 'secret_dir'"),
        (
            {"use": "proxy_auth", "args": {"secret_dir": "/a/../etc"}},
            "http",
            "hooks[0].args: argument secret_dir: invalid value '/a/../etc'",
        ),
        (
            {"use": "audit", "args": {"x": "1"}},
            "http",
            "hooks[0].args: hook 'audit' has no argument 'x'",
        ),
        ({"use": "audit", "at": "http-request"}, "http", "hooks[0].at: hook 'audit' runs at"),
        ({"use": "stamp", "at": "http-request", "args": {"v": "a b"}}, "http", "invalid value"),
        ({"use": "stamp", "at": "later"}, "http", "routes[0].hooks[0].at"),
        ({"use": "Stamp!"}, "http", "routes[0].hooks[0].use: invalid value 'Stamp!'"),
    ],
)
def test_problems_name_the_route_and_the_hook(
    tmp_path: Path, hook: object, mode: str, expected: str
) -> None:
    keys = {
        "routes.yaml": {"routes": [route("a", 18001, 1, mode=mode, hooks=[hook])]},
        "stamp.lua": STAMP_ACTIONS,
    }
    problems = problems_of(tmp_path, keys)
    assert len(problems) == 1, problems
    assert problems[0].startswith("routes.yaml"), problems
    assert expected in problems[0], problems


def test_shipped_name_as_configmap_key_and_duplicates_are_refused(tmp_path: Path) -> None:
    keys = {
        "routes.yaml": {"routes": [route("a", 18001, 1, hooks=["audit", "audit"])]},
        "audit.lua": b"-- mine",
    }
    problems = problems_of(tmp_path, keys)
    assert problems == [
        "routes.yaml: routes[0].hooks[0].use: 'audit' is a shipped hook and a ConfigMap key "
        "audit.lua: rename it",
        "routes.yaml: routes[0].hooks[1].use: hook 'audit' is attached twice",
    ]


def test_hooks_in_defaults_apply_to_every_route(tmp_path: Path) -> None:
    keys = {
        "routes.yaml": {
            "defaults": {"hooks": ["audit"]},
            "routes": [route("a", 18001, 1), route("b", 18002, 1, mode="tcp")],
        }
    }
    _, compiled = compile_keys(tmp_path, keys)
    assert compiled.text.count("log-format") == 2
    assert "option httplog" not in compiled.text
    assert "option tcplog" not in compiled.text


# --- haproxy's alerts, recorded, named by key and route --------------------------------------

# The Lua file of tools/record_haproxy.py's check_lua_error recording.
RECORDED_BROKEN = (
    b"core.register_action('hello', {'http-req'}, function(txn)\n  this is not lua\nend)\n"
)


@pytest.mark.parametrize("version", VERSIONS)
def test_recorded_lua_error_names_the_key_line_and_route(version: str) -> None:
    lua = hooks.LuaFile("hello.lua", RECORDED_BROKEN, shipped=False)
    hook_set = hooks.HookSet(
        files=(lua,), users=(("hello.lua", ("route 'a' (routes.yaml: routes[0].hooks[0])",)),)
    )
    output = (DATA / version / "check_lua_error.txt").read_text()
    (problem,) = [str(p) for p in hooks.explain_check(output, hook_set)]
    assert problem.startswith("hello.lua:2: Lua error: syntax error near 'is'"), problem
    assert problem.endswith("used by route 'a' (routes.yaml: routes[0].hooks[0])")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("recording", "phase"),
    # haproxy words an http-request refusal `but got 'lua.x'` and a tcp-request one
    # `(got 'lua.x')`: either way the key is named.
    [("check_unregistered", "http-request"), ("check_unregistered_tcp", "tcp-request")],
)
def test_recorded_unregistered_action_names_the_file(
    version: str, recording: str, phase: str
) -> None:
    lua = hooks.LuaFile("nothere.lua", b"-- registers hello only", shipped=False)
    output = (DATA / version / f"{recording}.txt").read_text()
    (problem,) = [str(p) for p in hooks.explain_check(output, hooks.HookSet(files=(lua,)))]
    assert problem == (
        f"nothere.lua: does not register the action 'nothere' for {phase} "
        "(core.register_action('nothere', ...)); used by no route"
    )


def test_alerts_about_other_things_leave_haproxy_s_text_standing() -> None:
    lua = hooks.LuaFile("hello.lua", RECORDED_BROKEN, shipped=False)
    output = "[ALERT]    (1) : config : parsing [x.cfg:3] : unknown keyword 'bogus'\n"
    assert hooks.explain_check(output, hooks.HookSet(files=(lua,))) == []


# --- staging in the run dir ------------------------------------------------------------------


def test_stage_never_rewrites_and_prune_keeps_what_configs_load(tmp_path: Path) -> None:
    run = tmp_path / "run"
    old = hooks.HookSet(files=(hooks.LuaFile("h.lua", b"-- v1", shipped=False),))
    new = hooks.HookSet(files=(hooks.LuaFile("h.lua", b"-- v2", shipped=False),))
    staging.stage(old, RunDir(run).lua)
    old_path = run / "lua" / old.files[0].file_name
    inode = old_path.stat().st_ino
    staging.stage(old, RunDir(run).lua)  # the live file is left alone, not rewritten
    staging.stage(new, RunDir(run).lua)
    assert old_path.stat().st_ino == inode
    assert old_path.read_bytes() == b"-- v1"
    (run / "lua" / "notes.txt").write_text("not ours")
    live = "\n".join(f"    lua-load-per-thread {p}" for p in hooks.lua_paths(new, RunDir(run).lua))
    staging.prune(RunDir(run).lua, [live])
    assert sorted(p.name for p in (run / "lua").iterdir()) == sorted(
        [new.files[0].file_name, "notes.txt"]
    )
