"""Model → haproxy.cfg text through the Jinja2 template; plus writing it atomically."""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from haproxy_egress import __version__
from haproxy_egress.config.document import Config
from haproxy_egress.config.route import Route
from haproxy_egress.config.scalars import format_duration
from haproxy_egress.config.vocabulary import VARS, VOCABULARY
from haproxy_egress.render import decision
from haproxy_egress.render.acls import allow_from_files
from haproxy_egress.render.blocks import BlockCache
from haproxy_egress.render.hooks import HookSet, lua_paths, resolve
from haproxy_egress.render.maps import PARENT_CREDENTIAL_KEY, parent_files
from haproxy_egress.render.resources import template_dir
from haproxy_egress.render.syslog import MAX_LINE, rings
from haproxy_egress.render.tls import server_options as tls_server_options
from haproxy_egress.rundir import RunDir

TEMPLATE = "haproxy.cfg.j2"
# The process's renders share one cache of route blocks (render/blocks.py).
SHARED_BLOCKS = BlockCache()


# The exporter (metrics/policy.py) reads the stick tables' names here.
TABLES = decision.TABLES
# Policy routes: TCP-mode frontends, so the log line is built from variables; it names
# the destination, the address it resolved to, the rule and the verdict.
POLICY_LOG_FORMAT = (
    "%ci:%cp [%t] %ft %b/%s %Tw/%Tc/%Tt %B %ts %ac/%fc/%bc/%sc/%rc"
    f" egress route=%[var({VARS.route})] dst=%[var({VARS.dsthost})]:%[var({VARS.dstport})]"
    f" addr=%[var({VARS.dstip})] group=%[var({VARS.group})] rule=%[var({VARS.rule})]"
    f" verdict=%[var({VARS.verdict})]"
)
# The decision as RFC 5424 structured data (rfc5424 syslog targets only; stdout has no SD).
# Every value quoted and escaped (+Q,+E: '"', '\\' and ']'); 32473 is the enterprise number
# RFC 5612 reserves for examples, as no number is registered for this router.
POLICY_LOG_FORMAT_SD = (
    f"%{{+Q,+E}}o [egress@32473 route=%[var({VARS.route})] dst=%[var({VARS.dsthost})]"
    f" port=%[var({VARS.dstport})] addr=%[var({VARS.dstip})] group=%[var({VARS.group})]"
    f" rule=%[var({VARS.rule})] verdict=%[var({VARS.verdict})]]"
)

# The audit hook (docs/lua.md): the route's log line is one JSON object. haproxy builds
# it natively; Lua runs only as two converters (a string in, a string out), because a Lua sample
# fetch builds a Lua TXN object per call and cost 40% of an HTTP route's request rate. Every
# sample sits in quotes: `%{+Q}` writes "" where haproxy would print a bare "-" (no server was
# chosen; or no stream at all, when the HTTP parser logs a bad request or an empty connection
# itself), so every line stays JSON. Texts from the client are cut before escaping (the
# escaped form may be 6x longer) so the line stays within the log's `len 8192`. `date` is read
# once per poll loop, so the two date fetches of one line agree.
AUDIT_HEAD = (
    '{"type":"egress-audit"'
    ',"time":"%[date,utime(%Y-%m-%dT%H:%M:%S)].%[date(0,ms),mod(1000),add(1000),regsub(^1,)]Z"'
    ',"route":"%f","client":{"address":"%ci","port":%cp}'
    ',"destination":{"name":%{+Q}[srv_name,lua.egress_audit_name]'
    ',"address":%{+Q}[bc_dst],"port":%{+Q}[bc_dst_port]}'
    f',"verdict":%{{+Q}}[var({VARS.rule},),lua.egress_audit_verdict]'
    f',"rule":%{{+Q}}[var({VARS.rule}),bytes(0,64),json(utf8s)]'
)
AUDIT_HTTP = (
    ',"method":%{+Q}[method,bytes(0,16),json(utf8s)]'
    f',"host":%{{+Q}}[var({VARS.audit_host}),json(utf8s)]'
)
AUDIT_TAIL = ',"bytes_up":%U,"bytes_down":%B,"duration_ms":%Tt,"termination":"%ts"'


def audit_log_format(mode: str) -> str:
    """The audit hook's log-format for a tcp or http route, escaped for a quoted cfg string."""
    if mode == "http":
        text = AUDIT_HEAD + AUDIT_HTTP + AUDIT_TAIL + ',"status":%ST}'
    else:
        text = AUDIT_HEAD + AUDIT_TAIL + "}"
    return text.replace('"', '\\"')


@dataclass(frozen=True)
class RenderOptions:
    """The process-level facts the config embeds (paths, log sink, threads)."""

    run_dir: Path
    log_stdout: bool = False
    threads: int = 0
    # `haproxy -v`'s version, for what only some versions can do (a syslog failover needs
    # 2.9); "" when not known (then `haproxy -c` has the last word).
    haproxy_version: str = ""

    @property
    def run(self) -> RunDir:
        """The paths the config names (sockets, pid file, state, Lua, maps)."""
        return RunDir(self.run_dir)


class _PathsOnce:
    """A RunDir for the template: each path is built on its first read and then kept, since
    `paths.maps` is read once per route (a Path join each time, for 10,000 routes)."""

    def __init__(self, run: RunDir) -> None:
        self._run = run

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._run, name)
        setattr(self, name, value)  # from now on a plain attribute: __getattr__ is skipped
        return value


def _server_options(route: Route) -> str:
    """The options shared by every server line of a route."""
    opts = []
    if route.check.enabled:
        c = route.check
        opts.append(f"check inter {format_duration(c.interval)} rise {c.rise} fall {c.fall}")
    if route.proxy_protocol == "v2":
        opts.append("send-proxy-v2")
    elif route.proxy_protocol == "v1":
        opts.append("send-proxy")
    return "".join(f" {o}" for o in opts)


def _address(value: object) -> str:
    """An IP for `source`: IPv6 in brackets, so its last group is not read as a port."""
    ip = ipaddress.ip_address(str(value))
    return f"[{ip}]" if ip.version == 6 else str(ip)


@cache
def _environment(directory: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(directory)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # haproxy.cfg, not HTML; every value was validated by the model
    )
    env.filters["duration"] = format_duration
    env.filters["address"] = _address
    env.globals.update(
        server_options=_server_options,
        tls_options=tls_server_options,  # TLS origination (render/tls.py)
        # policy routes: templates/policy.cfg.j2 prints the decision chain render/decision/
        # builds; their lists are in map files (render/maps.py)
        policy_chain=decision.PolicyChain,
        rules=decision.rules,
        parent_maps=parent_files,
        parent_key=PARENT_CREDENTIAL_KEY,
        refusal=decision.refusal,
        # The policy vocabulary (config/vocabulary.py): every variable name and word of a
        # decision.
        V=VOCABULARY,
        policy_log_format=POLICY_LOG_FORMAT,
        tables=TABLES,
        audit_log_format=audit_log_format,
        syslog_max_line=MAX_LINE,
        policy_log_format_sd=POLICY_LOG_FORMAT_SD,
    )
    return env


def render(
    config: Config,
    options: RenderOptions,
    directory: Path | None = None,
    hooks: HookSet | None = None,
    blocks: BlockCache = SHARED_BLOCKS,
) -> str:
    """The haproxy.cfg text for `config`; pure and deterministic.

    `hooks` is `hooks.resolve(config, snapshot.files)`; without it only shipped hooks resolve
    (a route using a ConfigMap `*.lua` key then raises ConfigError: no such key was given).
    A route's block is taken from `blocks` when the last render printed it for the same
    route and inputs.
    """
    directory = directory or template_dir()
    template = _environment(directory).get_template(TEMPLATE)
    if hooks is None:
        hooks = resolve(config)
    # Every Lua file the config loads, each once (lua-load-per-thread), connect.lua included.
    lua_files = lua_paths(hooks, options.run.lua)
    origins = dict(config.origins)
    allow_files = allow_from_files(config)
    # Whatever a block may print besides its route's own inputs: if any of it differs from
    # the last render, no block of that render is reused.
    scope = (directory, options, hooks.files, dataclasses.replace(config, routes=(), origins=()))
    route_blocks = blocks.begin(scope, origins, hooks, allow_files)
    rendered = template.render(
        config=config,
        origins=origins,
        version=__version__,
        paths=_PathsOnce(options.run),
        log_stdout=options.log_stdout,
        # With explicit nameservers the libc resolver (other servers, other answers) is not
        # consulted at start-up either.
        init_addr="last,none" if config.resolvers.nameservers else "last,libc,none",
        threads=options.threads,
        hooks=hooks,
        lua_files=lua_files,
        allow_from_files=allow_files,
        route_blocks=route_blocks.blocks,
        syslog_rings=rings(config.logging, options.run.syslog_certs),
        syslog_sd=any(t.format == "rfc5424" for t in config.logging.syslog),
    )
    return route_blocks.splice(rendered)


def write_atomic(path: Path, text: str, mode: int = 0o640) -> None:
    """Replace `path` with `text` so readers see the old or the new file, never a torn one."""
    ReservedWrite(path, text, mode).commit()


class ReservedWrite:
    """`write_atomic` in two steps: the space for `text` is taken on the disk now (a full
    disk fails here), the file is written and replaces `path` at `commit`.

    A runtime edit at 10,000 routes reserves its 7 MB haproxy.cfg before haproxy takes any
    of the edit, and writes it right after: the write is off the path the user waits on.
    Where the filesystem cannot reserve space, the text is written at once instead.
    """

    def __init__(self, path: Path, text: str, mode: int = 0o640) -> None:
        self._path, self._mode = path, mode
        self._text: str | None = text
        # The size in bytes without encoding 7 MB on the way (str.isascii is a flag).
        size = len(text) if text.isascii() else len(text.encode())
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        self._file = os.fdopen(fd, "wb")
        try:
            try:
                if size:
                    os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                self._write()  # no reservation here: write it all now
        except BaseException:
            self.abandon()
            raise

    def _write(self) -> None:
        if self._text is not None:
            self._file.write(self._text.encode())
            self._text = None

    def commit(self) -> None:
        """Write the text (unless written already) and make it `path`, atomically."""
        try:
            self._write()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.chmod(self._tmp, self._mode)
            os.replace(self._tmp, self._path)
        except BaseException:
            self.abandon()
            raise

    def abandon(self) -> None:
        """Leave `path` as it was."""
        self._file.close()
        Path(self._tmp).unlink(missing_ok=True)
