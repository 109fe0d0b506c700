"""Lua hooks: which Lua files a configuration loads and how each route attaches its hooks.

Hooks come from two places: the shipped, reviewed hooks in the package's `lua/` directory, and
`<name>.lua` keys of the ConfigMap (user hooks). `resolve()` checks every route's `hooks:`
against both, and returns what the template needs: the files to `lua-load-per-thread` (each
once, only when some route uses it) and, per route, the rule lines that run them. A hook's
arguments never become Lua or haproxy.cfg code: each is a `set-var(txn.arg.<hook>.<key>)` of a
value the model validated against a strict pattern, read by the hook with `txn:get_var()`.

Lua files are content-addressed (`<sha256>.lua` in the run dir's `lua/`): a candidate config
being checked never overwrites a file the live config loads, and the live config and its
last-good copy keep finding theirs. Pure: `runtime/staging.py` writes the files.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from itertools import compress
from operator import attrgetter
from pathlib import Path

from haproxy_egress.config.document import Config
from haproxy_egress.config.hookuse import HookPhase, HookUse
from haproxy_egress.config.policy import REFUSALS
from haproxy_egress.config.route import Route
from haproxy_egress.config.vocabulary import VARS, RuleId, lua_module
from haproxy_egress.errors import ConfigError, Problem
from haproxy_egress.haproxy.check import parse_alerts
from haproxy_egress.render.resources import lua_dir

LUA_FILE = re.compile(r"^[0-9a-f]{64}\.lua$")
_HOOKS = attrgetter("hooks")


@dataclass(frozen=True)
class Binding:
    """How a shipped hook that is not a rule at its own phase attaches to a route."""

    phase: HookPhase  # the rule it becomes (`service`: a use-service)
    variables: tuple[tuple[str, str], ...] = ()  # set before the hook's own arguments
    condition: str = ""  # template-made text such as " unless client_allowed", never input
    when: str = ""  # a Route field that must be set for the rule to exist ("" = always)


@dataclass(frozen=True)
class ShippedHook:
    """A reviewed hook from the image's `lua/` directory and the rules for attaching it."""

    name: str
    summary: str
    phase: HookPhase | None  # where a route's `at` may place it; None: it has its own place
    modes: tuple[str, ...]
    args: Mapping[str, tuple[bool, str]] = field(default_factory=dict)  # key → (required, re)
    flag: str = ""  # the RouteHooks field it turns on (the template's part of the hook)
    binding: Binding | None = None  # its rule, when not a plain rule at `phase`


SHIPPED: dict[str, ShippedHook] = {
    h.name: h
    for h in (
        ShippedHook(
            "audit",
            "one JSON line per connection (tcp) or request (http) on the log path",
            None,
            ("tcp", "http"),
            flag="audit",  # no rule: its log-format writes the line
        ),
        ShippedHook(
            "deny_page",
            "a readable 403 page naming the route and the rule, for requests the route refuses",
            None,
            ("http",),
            {"contact": (False, r"^[A-Za-z0-9._:/@+=-]{1,128}$")},
            flag="deny_page",
            # The page answers the requests allow_from refuses, before any other request hook.
            binding=Binding(
                "service",
                ((VARS.rule, RuleId.ALLOW_FROM),),
                " unless client_allowed",
                when="allow_from",  # the Route field
            ),
        ),
        ShippedHook(
            "proxy_auth",
            "Proxy-Authorization towards a parent proxy, from a mounted basic-auth Secret",
            "http-request",
            ("http",),
            {"secret_dir": (True, r"^(/[A-Za-z0-9_][A-Za-z0-9._-]{0,63}){1,8}$")},
        ),
    )
}
# Which route modes each phase needs; `service` and `tcp-request` work in both.
_PHASE_MODES: dict[str, tuple[str, ...]] = {
    "tcp-request": ("tcp", "http"),
    "http-request": ("http",),
    "http-response": ("http",),
    "service": ("tcp", "http"),
}
_PHASE_ORDER = {"tcp-request": 0, "http-request": 1, "service": 1, "http-response": 2}


@dataclass(frozen=True)
class LuaFile:
    """One Lua file a configuration loads: where it came from and its content."""

    key: str  # "hello.lua" (ConfigMap key) or "audit.lua"
    content: bytes
    shipped: bool

    @property
    def digest(self) -> str:
        """sha256 of the content: the file's name in the run dir."""
        return hashlib.sha256(self.content).hexdigest()

    @property
    def file_name(self) -> str:
        """The content-addressed name under `<run_dir>/lua/`."""
        return f"{self.digest}.lua"

    @property
    def label(self) -> str:
        """How messages name the file."""
        return f"{self.key} (shipped)" if self.shipped else self.key


# The policy vocabulary for Lua (config/vocabulary.py): generated, and loaded before every other
# Lua file so that each finds the global table `egress` (variable names, verdicts, rule ids).
VOCABULARY_LUA = LuaFile("vocabulary.lua", lua_module(REFUSALS).encode(), shipped=True)


@dataclass(frozen=True)
class Attachment:
    """One hook rule of a route: the rule keyword, the action, and the args to set first."""

    directive: str  # "tcp-request content" | "http-request" | "http-response"
    action: str  # "lua.<name>" | "use-service lua.<name>"
    variables: tuple[tuple[str, str], ...] = ()  # (txn variable, validated value)
    condition: str = ""  # template-made text such as " unless client_allowed", never input


@dataclass(frozen=True)
class RouteHooks:
    """What one route's frontend gets from its hooks."""

    attachments: tuple[Attachment, ...] = ()
    audit: bool = False  # the JSON audit log-format replaces option httplog/tcplog
    deny_page: bool = False  # allow_from refusals get the 403 page, not a TCP reject


@dataclass(frozen=True)
class HookSet:
    """The resolved hooks of a whole configuration."""

    files: tuple[LuaFile, ...] = ()  # in load order, each once
    routes: tuple[tuple[str, RouteHooks], ...] = ()
    # Which routes use which file (file key → "route 'a' (routes.yaml: routes[0].hooks[1])"),
    # so that haproxy's complaints about a file can name the routes.
    users: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def for_route(self, name: str) -> RouteHooks:
        """The hooks of one route (none when it has none)."""
        return dict(self.routes).get(name, RouteHooks())

    def including(self, *files: LuaFile) -> HookSet:
        """This set plus more files to load (e.g. the policy proxy's connect.lua), each once;
        the vocabulary first whenever any file is loaded."""
        have = {f.digest for f in self.files}
        extra = []
        for f in files:
            if f.digest not in have:
                extra.append(f)
                have.add(f.digest)
        loaded = (*self.files, *extra)
        if loaded and VOCABULARY_LUA.digest not in have:
            loaded = (VOCABULARY_LUA, *loaded)
        return replace(self, files=loaded)

    def users_of(self, key: str) -> tuple[str, ...]:
        """Descriptions of the routes that use the file `key`."""
        return dict(self.users).get(key, ())


EMPTY = HookSet()


@cache
def _shipped_content(name: str, directory: Path) -> bytes:
    return (directory / f"{name}.lua").read_bytes()


def shipped_lua(name: str) -> LuaFile:
    """A file of the image's `lua/` directory (any, e.g. connect.lua) as a LuaFile."""
    return LuaFile(f"{name}.lua", _shipped_content(name, lua_dir()), shipped=True)


def _split_origin(origin: str) -> tuple[str, str]:
    """'routes.yaml: routes[2]' → ('routes.yaml', 'routes[2]')."""
    source, _, path = origin.partition(": ")
    return source, path


def _arg_variables(hook: str, args: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((f"txn.arg.{hook}.{key}", value) for key, value in args)


def _rule(phase: str, mode: str, hook: HookUse) -> Attachment:
    name = hook.use
    variables = _arg_variables(name, hook.args)
    if phase == "service":
        directive = "http-request" if mode == "http" else "tcp-request content"
        return Attachment(directive, f"use-service lua.{name}", variables)
    directive = "tcp-request content" if phase == "tcp-request" else phase
    return Attachment(directive, f"lua.{name}", variables)


def _bound(binding: Binding, route: Route, hook: HookUse) -> tuple[int, int, Attachment] | None:
    """A shipped hook's own rule (with its sort key), or None when the route has no need."""
    if binding.when and not getattr(route, binding.when):
        return None
    rule = _rule(binding.phase, route.mode, hook)
    rule = replace(
        rule, variables=(*binding.variables, *rule.variables), condition=binding.condition
    )
    return _PHASE_ORDER[binding.phase], -1, rule  # before every other rule of its phase


def _check_shipped(spec: ShippedHook, hook: HookUse, route: Route, problem: _Report) -> bool:
    ok = True
    if hook.at is not None and hook.at != spec.phase:
        where = spec.phase or "its own place (it is not a rule)"
        problem("at", f"hook {spec.name!r} runs at {where}; leave `at` out")
        ok = False
    if route.mode not in spec.modes:
        problem("use", f"hook {spec.name!r} needs mode: {' or '.join(spec.modes)}")
        ok = False
    given = dict(hook.args)
    for key in given:
        if key not in spec.args:
            known = ", ".join(sorted(spec.args)) or "none"
            problem("args", f"hook {spec.name!r} has no argument {key!r} (arguments: {known})")
            ok = False
    for key, (required, pattern) in spec.args.items():
        if key not in given:
            if required:
                problem("args", f"hook {spec.name!r} needs the argument {key!r}")
                ok = False
        elif not re.fullmatch(pattern, given[key]) or ".." in given[key].split("/"):
            problem("args", f"argument {key}: invalid value {given[key]!r}: must match {pattern}")
            ok = False
    return ok


class _Report:
    """Collects problems located at one hook of one route."""

    def __init__(self, problems: list[Problem], source: str, path: str) -> None:
        self.problems, self.source, self.path = problems, source, path

    def __call__(self, attr: str, message: str) -> None:
        self.problems.append(Problem(self.source, f"{self.path}.{attr}", message))


def _route_hooks(
    route: Route,
    origin: str,
    *,
    user_files: Mapping[str, bytes],
    files: dict[str, LuaFile],
    users: dict[str, list[str]],
    problems: list[Problem],
) -> RouteHooks:
    source, route_path = _split_origin(origin)
    attachments: list[tuple[int, int, Attachment]] = []
    flags: set[str] = set()
    seen: set[str] = set()
    for i, hook in enumerate(route.hooks):
        path = f"{route_path}.hooks[{i}]" if route_path else f"hooks[{i}]"
        report = _Report(problems, source, path)
        if hook.use in seen:
            report("use", f"hook {hook.use!r} is attached twice")
            continue
        seen.add(hook.use)
        key = f"{hook.use}.lua"
        spec = SHIPPED.get(hook.use)
        if spec is not None and key in user_files:
            report("use", f"{hook.use!r} is a shipped hook and a ConfigMap key {key}: rename it")
            continue
        if spec is not None:
            if not _check_shipped(spec, hook, route, report):
                continue
            lua = shipped_lua(hook.use)
            if spec.flag:
                flags.add(spec.flag)
            if spec.binding is not None:
                bound = _bound(spec.binding, route, hook)
                if bound is not None:
                    attachments.append(bound)
            elif spec.phase is not None:
                rule = _rule(spec.phase, route.mode, hook)
                attachments.append((_PHASE_ORDER[spec.phase], i, rule))
        else:
            content = user_files.get(key)
            if content is None:
                shipped = ", ".join(sorted(SHIPPED))
                report(
                    "use",
                    f"unknown hook {hook.use!r}: no ConfigMap key {key} and no shipped hook of "
                    f"that name (shipped: {shipped})",
                )
                continue
            if hook.at is None:
                report("at", f"say where the hook runs: {', '.join(_PHASE_MODES)}")
                continue
            if route.mode not in _PHASE_MODES[hook.at]:
                report("at", f"{hook.at} hooks need mode: http (this route is {route.mode})")
                continue
            lua = LuaFile(key, content, shipped=False)
            attachments.append((_PHASE_ORDER[hook.at], i, _rule(hook.at, route.mode, hook)))
        files.setdefault(lua.key, lua)
        users.setdefault(lua.key, []).append(f"route {route.name!r} ({source}: {path})")
    ordered = tuple(a for _, _, a in sorted(attachments, key=lambda t: (t[0], t[1])))
    return RouteHooks(ordered, audit="audit" in flags, deny_page="deny_page" in flags)


def resolve(config: Config, config_files: Iterable[tuple[str, bytes]] = ()) -> HookSet:
    """Check every route's hooks against the shipped hooks and the ConfigMap's `*.lua` keys.

    Raises ConfigError naming the route and file of every problem: unknown hook, a user hook
    without `at`, a phase the route's mode cannot run, arguments a shipped hook does not take.
    """
    user_files = {name: data for name, data in config_files if name.endswith(".lua")}
    files: dict[str, LuaFile] = {}
    users: dict[str, list[str]] = {}
    problems: list[Problem] = []
    routes = []
    # Routes with hooks found by the C library: an edit at 10,000 routes asks every time.
    for route in compress(config.routes, map(_HOOKS, config.routes)):
        if route.hooks:
            origin = config.origin_of(route.name)
            hooks = _route_hooks(
                route, origin, user_files=user_files, files=files, users=users, problems=problems
            )
            routes.append((route.name, hooks))
    if problems:
        raise ConfigError(problems)
    # Shipped hooks first (sorted), then user hooks (sorted): a stable, readable load order.
    ordered = sorted(files.values(), key=lambda f: (not f.shipped, f.key))
    hook_set = HookSet(
        tuple(ordered), tuple(routes), tuple((k, tuple(v)) for k, v in sorted(users.items()))
    )
    if any(r.mode == "proxy" for r in config.policy_routes):
        # The policy proxy's CONNECT handler: resolved here, with every other Lua file, so it
        # is staged in the run dir and loaded once like the rest.
        hook_set = hook_set.including(shipped_lua("connect"))
    return hook_set.including()


def lua_paths(hooks: HookSet, lua_dir: Path) -> list[str]:
    """The `lua-load-per-thread` paths of a hook set, in load order."""
    return [str(lua_dir / f.file_name) for f in hooks.files]


# --- explaining `haproxy -c` in terms of ConfigMap keys and routes --------------------------


def explain_check(output: str, hooks: HookSet) -> list[Problem]:
    """haproxy -c alerts about hook files, as problems naming the file's key and its routes.

    Returns an empty list when the alerts are not about hooks (then haproxy's text stands).
    A file that failed to load also registers nothing; only its Lua error is reported.
    """
    by_digest = {f.digest: f for f in hooks.files}
    by_name = {f.key.removesuffix(".lua"): f for f in hooks.files}

    def _by_tail(tail: str) -> LuaFile | None:
        found = [f for f in hooks.files if f.digest.endswith(tail)]
        return found[0] if len(found) == 1 else None

    errors: dict[str, tuple[str, int | None]] = {}  # key → (message, line)
    missing: dict[str, str] = {}
    for alert in parse_alerts(output):
        at, load = alert.lua_at, alert.lua_load_error
        action, service = alert.not_registered, alert.unknown_service
        if at is not None and (lua := _by_tail(at.digest)) is not None:
            errors.setdefault(lua.key, (f"Lua error: {at.message}", at.line))
        elif load is not None and load.digest in by_digest:
            lua = by_digest[load.digest]
            errors.setdefault(lua.key, (f"Lua error: {load.message}", None))
        elif action is not None and action.name in by_name:
            name = action.name
            what = f"action {name!r} for {action.keyword} (core.register_action({name!r}, ...))"
            missing.setdefault(by_name[name].key, f"does not register the {what}")
        elif service is not None and service in by_name:
            name = service
            what = (
                f"service {name!r} for this route's mode "
                f"(core.register_service({name!r}, 'http' or 'tcp', ...))"
            )
            missing.setdefault(by_name[name].key, f"does not register the {what}")
    problems = []
    labels = {f.key: f.label for f in hooks.files}
    for key, (message, line_no) in errors.items():
        problems.append(Problem(labels[key], "", _used_by(message, hooks, key), line_no))
    for key, message in missing.items():
        if key not in errors:
            problems.append(Problem(labels[key], "", _used_by(message, hooks, key)))
    return problems


def _used_by(message: str, hooks: HookSet, key: str) -> str:
    return f"{message}; used by {'; '.join(hooks.users_of(key)) or 'no route'}"


# --- the files in the run dir ----------------------------------------------------------------
