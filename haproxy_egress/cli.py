"""`haproxy-egress`: the command line; the only place that prints errors and picks exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from haproxy_egress import __version__, logsetup
from haproxy_egress.commands.explain import explain, rule_locations
from haproxy_egress.commands.migrate import migrate
from haproxy_egress.config import users
from haproxy_egress.config.document import Config, Document
from haproxy_egress.config.sources import load, read_snapshot
from haproxy_egress.config.tlsmaterial import describe, load_material, material_paths_of
from haproxy_egress.errors import ConfigError, EgressError, ExitCode, SetupError
from haproxy_egress.haproxy.program import running_configs, version
from haproxy_egress.metrics.options import ExporterOptions
from haproxy_egress.metrics.websecurity import load_web_security
from haproxy_egress.render.compiler import RenderOptions
from haproxy_egress.render.pipeline import Compiled, compile_current
from haproxy_egress.runtime import changes, memory, preflight
from haproxy_egress.runtime.assembly import assemble
from haproxy_egress.runtime.cpus import default_threads
from haproxy_egress.runtime.reload import check_compiled
from haproxy_egress.runtime.supervisor import Supervisor
from haproxy_egress.settings import LogFormat, LogSink, Settings

log = logging.getLogger("haproxy_egress")


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    if getattr(args, "config_dir", None):
        settings = dataclasses.replace(settings, config_dir=Path(args.config_dir))
    return settings


def render_options(settings: Settings) -> RenderOptions:
    """The process facts that the rendered config embeds."""
    return RenderOptions(
        run_dir=settings.run_dir,
        log_stdout=settings.log_sink.haproxy_writes_stdout,
        # EGRESS_THREADS wins; else the pod's CPU limit, which haproxy itself ignores. The relay
        # sink runs one thread unless told otherwise: when two threads log at once and the one
        # writing is descheduled, haproxy drops the other's line rather than wait
        # (docs/operations.md "Logging"); one thread never collides with itself.
        threads=settings.threads
        or (1 if settings.log_sink is LogSink.RELAY else default_threads()),
        haproxy_version=version(settings.haproxy_bin),
    )


def _compile(settings: Settings) -> tuple[Config, str]:
    """The same compile step `run` and every reload use, so `check` agrees with them."""
    compiled = compile_current(settings, render_options(settings))
    return compiled.config, compiled.text


def cmd_render(args: argparse.Namespace) -> int:
    """Print the haproxy.cfg the inputs compile to."""
    _, text = _compile(_settings(args))
    sys.stdout.write(text)
    return ExitCode.OK


def cmd_check(args: argparse.Namespace) -> int:
    """Compile and run `haproxy -c` on the result; validate every setting `run` reads."""
    settings = _settings(args)
    preflight.check_tools(settings)
    ExporterOptions.from_settings(settings)
    # Everything (candidate, staged Lua hook files) goes to a scratch run dir: `check` must
    # work anywhere, and never touch a running router's files.
    with tempfile.TemporaryDirectory(prefix="haproxy-egress-check.") as tmp:
        settings = dataclasses.replace(settings, run_dir=Path(tmp))
        compiled = compile_current(settings, render_options(settings))
        warnings = check_compiled(settings, compiled)
    # The metrics port's web-config and its certificates, as `run` will load them.
    web = load_web_security(settings.web_config_file) if settings.web_config_file else None
    config = compiled.config
    if warnings and args.verbose:
        print(warnings, file=sys.stderr)
    n = len(config.routes)
    print(f"configuration OK: {n} route{'s' if n != 1 else ''}")
    material = {m.route: m for m in compiled.tls}
    for route in config.routes:
        if route.tls is None:
            continue
        if route.tls.insecure_skip_verify:
            print(
                f"WARNING: route {route.name} does not verify its destination "
                "(insecure_skip_verify: true)",
                file=sys.stderr,
            )
        for d in route.destinations:
            what = describe(route.tls, d.host, material[route.name])
            print(f"route {route.name} -> {d.hostport}: {what}")
    if web is not None:
        print(f"web-config OK: {settings.web_config_file}: {web.describe()}")
    return ExitCode.OK


def cmd_run(args: argparse.Namespace) -> int:
    """The container ENTRYPOINT: compile, check, then supervise haproxy and its log sink as
    PID 1."""
    return _supervisor(args).run()


def _supervisor(args: argparse.Namespace) -> Supervisor:
    """The router, built on the start-up compile. Its own function so that no frame that
    lives as long as the router holds that compile: the supervisor drops it at the first
    edit (at 10,000 routes a 6 MB haproxy.cfg text and the routes the edit replaced)."""
    settings = _settings(args)
    logsetup.configure(settings.log_format, args.debug)
    preflight.check_run(settings)
    memory.map_large_blocks()  # before the start-up compile's big blocks come and go
    options = render_options(settings)
    compiled = compile_current(settings, options)  # the only place a bad config is fatal
    check_compiled(settings, compiled)  # a broken Lua hook is named by key and route
    return assemble(settings, options, compiled)


def _router_run_dir(args: argparse.Namespace, settings: Settings) -> Settings:
    """The run dir of the router `diff` compares with: --run-dir, else EGRESS_RUN_DIR, else the
    one running router this machine shows; SetupError (exit 2) names what was looked at."""
    default = Settings.run_dir  # the class default: EGRESS_RUN_DIR not set
    chosen = args.run_dir or (settings.run_dir if settings.run_dir != default else None)
    if chosen is not None:
        settings = dataclasses.replace(settings, run_dir=Path(chosen))
    if settings.run.config.exists():
        return settings
    running = [p.parent for p in running_configs() if p.exists()]
    if chosen is None and len(running) == 1:
        log.info("using the run dir of the running router: %s", running[0])
        return dataclasses.replace(settings, run_dir=running[0])
    seen = ", ".join(map(str, running)) or "none that this user can see"
    raise SetupError(
        f"no running configuration in run dir {settings.run_dir} (no {settings.run.config.name}):"
        f" pass the router's run dir with --run-dir or EGRESS_RUN_DIR (routers running: {seen})"
    )


def _plan_words(settings: Settings, live: str, new: Compiled) -> str:
    """What the router would do with the edit, in its own reload log's words (the change
    planner's classification), or why that cannot be said."""
    running_settings = dataclasses.replace(settings, config_dir=Settings.from_env().config_dir)
    try:
        running = compile_current(running_settings, render_options(running_settings))
    except ConfigError:
        running = None
    if running is None or running.text != live:
        return (
            f"the running configuration is not what {running_settings.config_dir} compiles to"
            " now (an edit not yet applied, or rejected): the router would reload or apply"
            " what the text above shows"
        )
    plan = changes.plan(running, new, runtime=settings.runtime_changes)
    if plan.kind is changes.Kind.NOOP:
        return f"no-op: {plan.summary()}"
    if plan.kind is changes.Kind.RUNTIME:
        return f"runtime: {plan.summary()}"
    return f"reload: {plan.summary()}"


def cmd_diff(args: argparse.Namespace) -> int:
    """Show what applying a config directory would change in the running haproxy.cfg, and what
    the router would do with it: nothing, a runtime change, or a reload (and why)."""
    settings = _router_run_dir(args, _settings(args))
    live_path = settings.run.config
    live = live_path.read_text(encoding="utf-8")
    compiled = compile_current(settings, render_options(settings))
    delta = list(
        difflib.unified_diff(
            live.splitlines(keepends=True),
            compiled.text.splitlines(keepends=True),
            fromfile=f"running: {live_path}",
            tofile=f"from: {settings.config_dir}",
        )
    )
    sys.stdout.writelines(delta)
    if not delta:
        print("no changes: applying this directory would not change haproxy", file=sys.stderr)
    else:
        print(f"the router would apply it as: {_plan_words(settings, live, compiled)}")
    # Like diff(1): 0 same, 1 different (errors exit 2 through ConfigError / SetupError).
    return ExitCode.OK if not delta else ExitCode.DIFFERS


def cmd_migrate(args: argparse.Namespace) -> int:
    """Print the YAML ConfigMap equivalent to the legacy EGRESS_* settings (env and keys)."""
    settings = _settings(args)
    files = dict(read_snapshot(settings.config_dir).files)
    try:
        result = migrate(
            settings.route_env,
            files,
            configmap=None if args.bare else args.name,
            key=args.key,
            proxy_port=args.proxy_port,
        )
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    sys.stdout.write(result.text)
    for problem in (*result.dropped, *result.invalid):
        print(f"not carried over: {problem}", file=sys.stderr)
    return ExitCode.OK if result.complete else ExitCode.DIFFERS


def cmd_explain(args: argparse.Namespace) -> int:
    """Which route and rule would allow or deny a destination, without sending traffic."""
    # dnspython (about 4 MB of RSS) serves `explain` alone: `run` keeps the router's process
    # for as long as the pod lives and never asks it.
    from haproxy_egress.commands.lookup import ConfiguredResolver  # noqa: PLC0415

    settings = _settings(args)
    snapshot, config = load(settings)
    # The client certificates the routes present, as a compile would load them (a file that
    # does not load is only described as such: explain answers about the policy).
    tls_files = snapshot.with_tls(material_paths_of(config)).tls
    material, _ = load_material(config, tls_files, time.time())
    try:
        verdict = explain(
            config,
            args.destination,
            locations=rule_locations(snapshot, settings.route_env),
            addresses=args.address or None,
            resolve=None if args.no_resolve else ConfiguredResolver(config.resolvers),
            client=args.client,
            user=args.user,
            tls={m.route: m for m in material},
        )
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    for line in verdict.lines():
        print(line)
    return ExitCode.OK if verdict.allowed else ExitCode.DENIED


def cmd_hash_password(args: argparse.Namespace) -> int:
    """A proxy user's line for EGRESS_PROXY_USERS_FILE; a new random password unless one
    comes on stdin (the password goes to stderr, the line to stdout)."""
    if args.stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            print("Error: no password on stdin", file=sys.stderr)
            return ExitCode.CONFIG
    else:
        password = users.new_password()
    try:
        user = users.hash_password(args.name, password)
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    if not args.stdin:
        print(f"password for {args.name}: {password}", file=sys.stderr)
    print(user.line)
    return ExitCode.OK


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of a ConfigMap YAML key, for editors and CI linting."""
    schema = Document.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "haproxy-egress ConfigMap key"
    print(json.dumps(schema, indent=2, sort_keys=True))
    return ExitCode.OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog="haproxy-egress",
        description="An unprivileged, hot-reloading egress router built on HAProxy.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    Handler = Callable[[argparse.Namespace], int]

    def add(name: str, func: Handler, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    for name, func, help_ in (
        ("render", cmd_render, "print the haproxy.cfg that the inputs compile to"),
        ("check", cmd_check, "compile and validate with `haproxy -c`; exit 0 if usable"),
    ):
        p = add(name, func, help_)
        p.add_argument("--config-dir", help="ConfigMap directory (default: $EGRESS_CONFIG_DIR)")
        if name == "check":
            p.add_argument("-v", "--verbose", action="store_true", help="show haproxy warnings")
    add("schema", cmd_schema, "print the JSON Schema of a ConfigMap YAML key")
    p = add(
        "migrate", cmd_migrate, "print the YAML ConfigMap equivalent to legacy EGRESS_* settings"
    )
    p.add_argument("--config-dir", help="ConfigMap directory (default: $EGRESS_CONFIG_DIR)")
    p.add_argument("--name", default="haproxy-egress", help="ConfigMap name in the output")
    p.add_argument("--key", default="routes.yaml", help="ConfigMap key in the output")
    p.add_argument("--bare", action="store_true", help="print only the YAML document")
    p.add_argument(
        "--proxy-port",
        type=int,
        default=8080,
        help="listen port of the route EGRESS_HTTP_PROXY_DESTINATION becomes (default: 8080, "
        "the squid mode's)",
    )
    p = add(
        "explain",
        cmd_explain,
        "which route and rule would allow or deny DEST (exit 0 allowed, 1 denied, 2 error)",
    )
    p.add_argument("destination", metavar="DEST", help="https://host, host:port or an address")
    p.add_argument("--config-dir", help="ConfigMap directory (default: $EGRESS_CONFIG_DIR)")
    p.add_argument(
        "--address",
        action="append",
        metavar="IP",
        help="what DEST resolves to (repeatable), instead of looking the name up",
    )
    p.add_argument(
        "--no-resolve",
        action="store_true",
        help="do not look names up (no DNS query leaves the machine); address and CIDR rules "
        "and the address classes then cannot apply to a name",
    )
    p.add_argument(
        "--from",
        dest="client",
        metavar="IP",
        help="the client's address: picks the client group of a policy route (default: the "
        "route's own list)",
    )
    p.add_argument(
        "--user",
        metavar="NAME",
        help="an authenticated proxy user (Proxy-Authorization): for client groups that name users",
    )
    p = add(
        "hash-password",
        cmd_hash_password,
        "print a proxy user's line for EGRESS_PROXY_USERS_FILE (a new random password on stderr)",
    )
    p.add_argument("name", metavar="NAME", help="the user name (letters, digits, . _ @ -)")
    p.add_argument(
        "--stdin", action="store_true", help="read the password from stdin instead of making one"
    )
    p = add(
        "diff",
        cmd_diff,
        "unified diff: running haproxy.cfg vs what a directory compiles to, and whether the "
        "router would apply it at runtime or reload",
    )
    p.add_argument("--config-dir", help="the edited directory (default: $EGRESS_CONFIG_DIR)")
    p.add_argument(
        "--run-dir",
        help="the running router's run dir (default: $EGRESS_RUN_DIR, else the one router "
        "running on this machine, else /run/haproxy-egress)",
    )
    p = add(
        "run",
        cmd_run,
        "run the router as PID 1: supervise haproxy and its log relay (EGRESS_LOG: relay, "
        "socklog or stdout), apply ConfigMap edits, serve metrics",
    )
    p.add_argument("--config-dir", help="ConfigMap directory (default: $EGRESS_CONFIG_DIR)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, dispatch, and turn errors into one clear message and an exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Every command logs in the router's one line format (`run` switches to JSON when
    # EGRESS_LOG_FORMAT asks), so a legacy-parsing note looks like every other line. As
    # logging.basicConfig did, a host that set logging up already (a test) keeps its own.
    if not logging.getLogger().handlers:
        logsetup.configure(LogFormat.TEXT, args.debug)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"Error: {exc.summary()}", file=sys.stderr)
        return int(exc.exit_code)
    except EgressError as exc:
        if args.debug:
            raise
        print(f"Error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except OSError as exc:
        # A file operation the checks above did not foresee: still one line, never a trace.
        if args.debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"Error: {exc.strerror or exc}{where} (as {preflight.whoami()})", file=sys.stderr)
        return int(ExitCode.CONFIG)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
