"""Loading: every input dialect → one validated `Config`, with all problems reported at once."""

from __future__ import annotations

import gc
import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from itertools import compress
from operator import attrgetter
from typing import Any

from haproxy_egress.config.crossroute import Located, checked_routes
from haproxy_egress.config.document import Config, Resolvers, StatsPage
from haproxy_egress.config.logtargets import Logging
from haproxy_egress.config.parent import basic_credential, from_environment
from haproxy_egress.config.problems import ProblemList, nearest_line, validate
from haproxy_egress.config.route import Route, RouteSettings, replaced
from haproxy_egress.config.scalars import Listen
from haproxy_egress.config.sharing import Sharing
from haproxy_egress.config.sources.cache import LoadCache, Stale
from haproxy_egress.config.sources.configdir import Snapshot, read_secret, read_snapshot
from haproxy_egress.config.sources.http_proxy import read_http_proxy, with_port_hint
from haproxy_egress.config.sources.legacy import read_legacy
from haproxy_egress.config.sources.raw import Fragment, RawRoute
from haproxy_egress.config.sources.seed_env import read_seed_env
from haproxy_egress.config.sources.yamlfile import read_yaml
from haproxy_egress.config.users import ProxyUser, parse_users
from haproxy_egress.errors import ConfigError, Problem
from haproxy_egress.settings import PROXY_USERS_ENV, Settings

__all__ = [
    "LoadCache",
    "Snapshot",
    "gc_paused",
    "load",
    "load_snapshot",
    "read_inputs",
    "read_snapshot",
]

# The process's loads share one cache: the supervisor's start-up compile fills it, so the first
# edit already reuses what did not change (config/sources/cache.py).
SHARED_CACHE = LoadCache()
_ASKS_CREDENTIALS = attrgetter("route.asks_credentials")
_ROUTE = attrgetter("route")
_ORIGIN = attrgetter("origin")


def _fragments(snapshot: Snapshot, env: Mapping[str, str], cache: LoadCache) -> list[Fragment]:
    frags: list[Fragment] = []
    for name, data in snapshot.files:
        if name.endswith((".yaml", ".yml")):
            frags.append(cache.fragment(name, data, read_yaml))
    frags.append(read_seed_env(env))
    # The retired Red Hat dialects, from env vars or from ConfigMap keys of the same name.
    frags.extend(read_legacy(dict(snapshot.files), env))
    frags.extend(read_http_proxy(dict(snapshot.files), env))  # the policy proxy
    frags.extend(Fragment(source=p.source, problems=[p]) for p in snapshot.problems)
    return frags


def _merge_section(frags: Iterable[Fragment], attr: str, problems: list[Problem]) -> dict[str, Any]:
    """Merge one top-level section across keys; the same field set twice differently is an
    error, since which one wins would depend on file names."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for frag in frags:
        section = getattr(frag, attr)
        if not section:
            continue
        for key, value in section.items():
            if key in merged and merged[key] != value:
                problems.append(
                    Problem(
                        frag.source,
                        f"{attr}.{key}",
                        f"also set to a different value in {origin[key]}",
                        frag.lines.get(f"{attr}.{key}"),
                    )
                )
            merged[key] = value
            origin[key] = frag.source
    return merged


def _with_defaults(defaults: Mapping[str, Any], route: Mapping[str, Any]) -> dict[str, Any]:
    """Route fields win over defaults; mapping-valued fields (check) merge one level deep."""
    out = dict(defaults)
    for key, value in route.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _validate_route(raw: RawRoute, defaults: Mapping[str, Any], sharing: Sharing) -> Located:
    try:
        route: Route = validate(Route, _with_defaults(defaults, raw.data), raw.source, raw.path)
    except ProblemList as exc:
        for i, p in enumerate(exc.problems):
            line = nearest_line(raw.lines, p.path) or raw.line
            exc.problems[i] = Problem(p.source, p.path, p.message, line)
        raise
    sharing.route(route)  # kept for as long as the router runs: its equal parts shared
    return Located(route, raw.source, raw.path, raw.line)


def _each_section_valid(
    frags: list[Fragment], name: str, model: type[Any], problems: list[Problem]
) -> bool:
    """Validate each key's `defaults` or `resolvers` section on its own, before they are
    merged, so a bad value is reported with its file and line; False if any was bad."""
    ok = True
    for frag in frags:
        section = getattr(frag, name)
        if not section:
            continue
        lines = frag.defaults_lines if name == "defaults" else frag.lines
        try:
            validate(model, section, frag.source, name)
        except ProblemList as exc:
            problems += [
                Problem(p.source, p.path, p.message, nearest_line(lines, p.path))
                for p in exc.problems
            ]
            ok = False
    return ok


def _logging(frags: list[Fragment], problems: list[Problem]) -> Logging:
    """The `logging` section: each key's checked on its own (for lines), then merged."""
    merged = _merge_section(frags, "logging", problems)
    if not _each_section_valid(frags, "logging", Logging, problems) or not merged:
        return Logging()
    try:
        logging: Logging = validate(Logging, merged, "logging", "logging")
    except ProblemList as exc:
        problems += exc.problems
        return Logging()
    return logging


def _proxy_users(
    users: tuple[str, bytes] | None, located: Iterable[Located], problems: list[Problem]
) -> tuple[ProxyUser, ...]:
    """The users file's entries; a route that asks for credentials needs the file."""
    found: dict[str, ProxyUser] = {}
    if users is not None:
        found, bad = parse_users(users[1], users[0])
        problems += bad
    # Only without a users file is a route that asks for credentials a problem.
    asking = compress(located, map(_ASKS_CREDENTIALS, located)) if users is None else ()
    for item in asking:
        route = item.route
        if (
            users is None
            and route.asks_credentials
            and not any(p.source.startswith(PROXY_USERS_ENV) for p in problems)
        ):
            path = f"{item.path}.proxy_auth" if route.proxy_auth == "required" else item.path
            problems.append(
                Problem(
                    item.source,
                    path,
                    f"route {route.name!r} asks for proxy credentials: set {PROXY_USERS_ENV} "
                    "to the users file (a mounted Secret, docs/policy.md)",
                    item.line,
                )
            )
    return tuple(found[name] for name in sorted(found))


def _parent(item: Located, env: Mapping[str, str], secrets: Mapping[str, bytes]) -> Located:
    """The route with `parent: env` resolved and its parent's credential read; ValueError says
    what is wrong (the caller locates it at `<route>.parent`)."""
    route = item.route
    parent = route.parent
    if parent is None:
        return item
    if parent.from_env:
        parent = from_environment(env, parent)
    credential = None
    if parent.credentials_dir is not None:
        where = parent.credentials_dir
        user, password = secrets.get(f"{where}/username"), secrets.get(f"{where}/password")
        found = (
            (user, password) if user is not None and password is not None else read_secret(where)
        )
        if isinstance(found, str):
            raise ValueError(f"credentials_dir: {found}")
        credential = basic_credential(found[0], found[1], where)
    resolved = replaced(route, parent=parent.with_credential(credential))
    return Located(resolved, item.source, item.path, item.line)


def build_config(
    frags: list[Fragment],
    reserved: Mapping[str, Listen],
    users: tuple[str, bytes] | None = None,
    env: Mapping[str, str] | None = None,
    secrets: Mapping[str, bytes] | None = None,
    *,
    cache: LoadCache | None = None,
) -> Config:
    """Merge fragments into one Config, or raise ConfigError listing every problem."""
    problems = [p for f in frags for p in f.problems]
    defaults = _merge_section(frags, "defaults", problems)
    if not _each_section_valid(frags, "defaults", RouteSettings, problems):
        defaults = {}
    resolvers = Resolvers()
    raw_resolvers = _merge_section(frags, "resolvers", problems)
    resolvers_ok = _each_section_valid(frags, "resolvers", Resolvers, problems)
    if raw_resolvers and resolvers_ok:
        try:
            resolvers = validate(Resolvers, raw_resolvers, "resolvers", "resolvers")
        except ProblemList as exc:
            problems += exc.problems
    logging = _logging(frags, problems)
    stats: StatsPage | None = None
    raw_stats = _merge_section(frags, "stats", problems)
    if raw_stats:
        try:
            stats = validate(StatsPage, raw_stats, "STATS_* env")
        except ProblemList as exc:
            problems += exc.problems
    located: list[Located] = []
    key = repr(defaults)  # what a cached route was validated against
    sharing = Sharing()
    for frag in frags:
        whole = None if cache is None else cache.segment(frag, key)
        if whole is not None:
            located += whole  # an unchanged key under the same defaults: its routes as they were
            continue
        start, final = len(located), True
        for raw in frag.routes:
            try:
                check = partial(_validate_route, raw, defaults, sharing)
                item = check() if cache is None else cache.route(raw, key, check)
            except ProblemList as exc:
                problems += exc.problems
                final = False
                continue
            # A parent is resolved from the environment and Secrets on every load.
            final = final and item.route.parent is None
            try:
                located.append(_parent(item, env or {}, secrets or {}))
            except ValueError as exc:
                problems.append(Problem(item.source, f"{item.path}.parent", str(exc), item.line))
        if final and cache is not None and frag.routes:
            cache.whole(frag, key, located[start:])
        if cache is not None:
            cache.validated(frag)
    all_reserved = dict(reserved)
    if stats is not None:
        all_reserved["stats page (STATS_PORT)"] = Listen(address=stats.address, port=stats.port)
    crossed, index = checked_routes(located, all_reserved, None if cache is None else cache.index)
    problems += [with_port_hint(p) for p in crossed]
    if cache is not None:
        cache.checked(index)
    proxy_users = _proxy_users(users, located, problems)
    if problems:
        raise ConfigError(sorted(set(problems), key=_problem_order))
    return Config(
        # Read by the C library: at 10,000 routes these ran on every edit.
        routes=tuple(map(_ROUTE, located)),
        resolvers=resolvers,
        stats=stats,
        proxy_users=proxy_users,
        logging=logging,
        origins=tuple(map(_ORIGIN, located)),
        reserved=tuple(reserved.values()),
    )


def _problem_order(p: Problem) -> tuple[str, int, str, str]:
    return (p.source, p.line or 0, p.path, p.message)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off the cyclic garbage collector for one load (or one change, which loads).

    Loading 10,000 routes allocates millions of tracked objects (YAML nodes, dicts, models)
    and none is garbage before the load ends, yet the collector kept walking the growing
    heap: a third of the load's CPU time. Cycles made meanwhile (a caught exception and its
    traceback) are only collected later, at the first pass after the load.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def load_snapshot(
    snapshot: Snapshot,
    env: Mapping[str, str],
    reserved: Mapping[str, Listen] | None = None,
    cache: LoadCache = SHARED_CACHE,
) -> Config:
    """Build the Config from a directory snapshot plus the route-bearing env vars, reusing
    from `cache` what the last load parsed and validated from the same input."""
    with gc_paused():
        for reparse in (False, True):
            cache.begin(reparse)
            try:
                config = build_config(
                    _fragments(snapshot, env, cache),
                    reserved or {},
                    snapshot.users,
                    env,
                    dict(snapshot.secrets),
                    cache=cache,
                )
            except Stale:  # the merged defaults changed: parse and validate everything
                continue
            cache.end()
            return config
    raise AssertionError("a load that parses every key uses no kept route")


def reserved_listeners(settings: Settings) -> dict[str, Listen]:
    """Ports the process itself owns, which no route may take."""
    address = settings.metrics_address
    wildcard = address in ("", "0.0.0.0", "::", "*")
    if settings.metrics_port == 0:
        return {}
    return {
        f"metrics endpoint (SCRAPER_TCP_PORT={settings.metrics_port})": Listen(
            address=None if wildcard else str(ipaddress.ip_address(address)),
            port=settings.metrics_port,
        )
    }


def read_inputs(settings: Settings, tls_paths: Iterable[str] = ()) -> Snapshot:
    """Everything a compile reads from files: the config directory, the proxy users and the
    TLS files the running config names (a compile reads those of the new one itself)."""
    return read_snapshot(settings.config_dir, settings.proxy_users_file, tls_paths)


def load(settings: Settings) -> tuple[Snapshot, Config]:
    """Read the config directory once and build the Config from it and the environment."""
    snapshot = read_inputs(settings)
    return snapshot, load_snapshot(snapshot, settings.route_env, reserved_listeners(settings))
