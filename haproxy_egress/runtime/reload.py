"""The change transaction: compile (render/pipeline.py) → diff → install → apply.

Apply is the runtime API on the running worker when the diff allows it (runtime/changes.py,
runtime/live.py), and the full `haproxy -c` of the file follows off the edit's path
(runtime/latecheck.py); else — or when a runtime command fails — `haproxy -c` of the
candidate, then a reload via the master, confirmed in `show proc`. Any failure leaves the
running router untouched (or brought back) and the live haproxy.cfg equal to the last good
one. Only the supervisor calls this, from its single event loop, so there is never more than
one transaction at a time.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from haproxy_egress.config.sources import read_inputs
from haproxy_egress.config.tlsmaterial import material_paths_of
from haproxy_egress.errors import ConfigError, EgressError, HaproxyCheckError, HaproxyError, Problem
from haproxy_egress.haproxy import replies, show
from haproxy_egress.haproxy.check import check
from haproxy_egress.haproxy.cli import CliSocket
from haproxy_egress.render import hooks, syslog
from haproxy_egress.render.compiler import RenderOptions, ReservedWrite, write_atomic
from haproxy_egress.render.pipeline import Compiled, compile_snapshot
from haproxy_egress.render.stages import Stages
from haproxy_egress.runtime import changes, live, staging
from haproxy_egress.settings import Settings

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT = 30.0  # the new worker parses, binds and answers well within this


class ReloadFailed(EgressError):
    """A reload did not take; the old configuration keeps serving."""


def check_candidate(
    settings: Settings, text: str, meanwhile: Callable[[], object] | None = None
) -> str:
    """Write the candidate next to the live file and let haproxy validate it; its warnings.
    `meanwhile` runs while haproxy checks."""
    candidate = settings.run.candidate
    write_atomic(candidate, text, mode=0o600)
    state = settings.run.server_state
    if not state.exists():
        # No state yet (first start): a valid file without servers. An empty one makes haproxy
        # warn "Can't get version of the global server state file" at every first start.
        state.write_text(show.EMPTY_SERVER_STATE)
    try:
        return check(candidate, settings.haproxy_bin, meanwhile)
    finally:
        candidate.unlink(missing_ok=True)


def check_compiled(
    settings: Settings, compiled: Compiled, meanwhile: Callable[[], object] | None = None
) -> str:
    """`check_candidate`, with haproxy's complaints about hook files (a Lua syntax error, an
    action the file does not register) turned into a ConfigError naming the key and routes.
    `meanwhile` runs while haproxy checks."""
    # Lua files are content-addressed, so staging them cannot change a file the live config
    # loads; `haproxy -c` and then the live config find the very same files.
    staging.stage(compiled.hooks, settings.run.lua)
    # `haproxy -c` opens every pattern file and TLS file the candidate names.
    staging.write_new_maps(settings.run.maps, compiled.maps)
    staging.write_new_maps(settings.run.tls, compiled.tls_files)
    # Ring servers load their client certificate when the config is parsed, `-c` included.
    staging.stage_client_certs(
        syslog.client_certs(compiled.config.logging, settings.run.syslog_certs)
    )
    try:
        return check_candidate(settings, compiled.text, meanwhile)
    except HaproxyCheckError as exc:
        problems = hooks.explain_check(exc.output, compiled.hooks)
        if problems:
            raise ConfigError(problems) from exc
        raise


def install(
    settings: Settings,
    text: str,
    maps: Mapping[str, str] | None = None,
    tls: Mapping[str, str] | None = None,
) -> None:
    """Make `text` (and its pattern and TLS files) the live config, keeping the previous one
    as last-good; from here on the files on disk describe what haproxy is to run."""
    Install(settings, text, maps, tls).commit()


class Install:
    """`install` in two steps: the pattern and TLS files are written and the new haproxy.cfg's
    space is taken at once (a full disk fails here, before haproxy takes any of a change);
    `commit` writes haproxy.cfg and keeps the previous one as last-good.

    A runtime change commits right after haproxy took it: at 10,000 routes the 7 MB file is
    then written off the path the user waits on, and before anything else can happen (the
    supervisor restarts haproxy from the files only after the change returns)."""

    def __init__(
        self,
        settings: Settings,
        text: str,
        maps: Mapping[str, str] | None = None,
        tls: Mapping[str, str] | None = None,
        *,
        live_text: str | None = None,
    ) -> None:
        self._settings, self._text, self._live_text = settings, text, live_text
        if maps is not None:
            staging.write_maps(settings.run.maps, maps)
        if tls is not None:
            staging.write_maps(settings.run.tls, tls)
        self._config = ReservedWrite(settings.run.config, text, mode=0o600)

    def commit(self) -> None:
        """Make the text the live haproxy.cfg, the previous one last-good."""
        run = self._settings.run
        if run.config.exists():
            _link_or_copy(run.config, run.last_good)
        self._config.commit()
        if run.lua.is_dir():
            # Staged Lua files that neither the live nor the last-good config loads are
            # garbage now.
            last = self._live_text
            if last is None and run.last_good.exists():
                last = run.last_good.read_text(encoding="utf-8")
            staging.prune(run.lua, [self._text] + ([last] if last is not None else []))

    def abandon(self) -> None:
        """Leave haproxy.cfg as it was (the pattern and TLS files are written already)."""
        self._config.abandon()


def _link_or_copy(source: Path, target: Path) -> None:
    """`target` becomes what `source` holds now, atomically: a second name for the same file
    (haproxy.cfg is only ever replaced, never written in place), or a copy where the
    filesystem has no hard links."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def restore_last_good(
    settings: Settings, maps: Mapping[str, str] | None = None, tls: Mapping[str, str] | None = None
) -> None:
    """Put the last good config (and its pattern and TLS files) back after a reload that did
    not take."""
    last_good = settings.run.last_good
    if maps is not None:
        staging.write_maps(settings.run.maps, maps)
    if tls is not None:
        staging.write_maps(settings.run.tls, tls)
    if last_good.exists():
        write_atomic(settings.run.config, last_good.read_text(encoding="utf-8"), mode=0o600)


def save_server_state(settings: Settings, text: str) -> None:
    """Write `show servers state` where the template's server-state-file points.

    Best effort: without it the new worker merely starts every destination as up.
    """
    try:
        state = CliSocket(settings.run.stats_socket, timeout=5.0).command("show servers state")
        write_atomic(settings.run.server_state, state_for(state, text), mode=0o600)
    except (HaproxyError, OSError) as exc:
        log.warning("could not save server state before the reload: %s", exc)


def state_for(state: str, text: str) -> str:
    """The lines of `show servers state` the new config `text` may start from.

    A fixed-address server (a `server` line) keeps its health only if the new config has it
    at the same address and it is not in maintenance: a destination a runtime edit removed
    (maintenance, deleted after the drain) or a decoy added by hand must not come back in
    that state, or at that address, when an edit lists the name again. Resolved servers
    (server-template slots) keep everything, that is what the file is for, except slots
    without an address: the new worker starts those empty, as at a first start (a saved
    "no address" state is reported DOWN after every reload, one line per slot).
    """
    fixed = changes.server_addresses(text)

    def stale(got: show.ServerState) -> bool:
        if got.unfilled_slot:
            return True
        address = fixed.get(f"{got.backend}/{got.name}")
        return address is not None and (
            got.maintenance or (got.address, got.port) != changes.host_port(address)
        )

    return show.servers_state_without(state, stale)


def master_reload(
    settings: Settings, timeout: float = CONFIRM_TIMEOUT, *, state_saved: bool = False
) -> int:
    """Ask the master to reload and wait until a new worker serves; returns its pid.
    `state_saved`: the caller saved the server state for the new config already.

    HAProxy 2.6 answers `reload` before doing it and reports failure only in `show proc`
    ([failed: N] on the master line); 2.7+ answers `Success=`. Both are read the same way:
    success is a worker pid that was not there before.
    """
    if not state_saved:
        save_server_state(settings, settings.run.config.read_text(encoding="utf-8"))
    master = CliSocket(settings.run.master_socket, timeout=5.0, master=True)
    before = show.parse_show_proc(master.command("show proc"))
    old_workers = {p.pid for p in before if p.kind == "worker"}
    old_master = next((p for p in before if p.kind == "master"), None)
    try:
        answer = master.command("reload")
    except HaproxyError:
        answer = ""  # 2.6 drops the connection as it re-executes; that is normal
    if replies.reload_refused(answer):
        raise ReloadFailed("haproxy refused the new configuration (see its log above)")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            procs = show.parse_show_proc(master.command("show proc"))
        except HaproxyError:
            continue  # master still re-executing
        new_master = next((p for p in procs if p.kind == "master"), None)
        fresh = [p.pid for p in procs if p.kind == "worker" and p.pid not in old_workers]
        if fresh:
            return fresh[0]
        if (
            new_master is not None
            and old_master is not None
            and new_master.reloads > old_master.reloads
            and new_master.failed_reloads > 0
        ):
            raise ReloadFailed(
                "the new configuration failed to load (for example a port already in use); "
                "see haproxy's log above"
            )
    raise ReloadFailed(f"no new haproxy worker within {timeout:.0f}s")


@dataclass(frozen=True)
class ChangeOutcome:
    """What a change attempt did."""

    changed: bool  # False: nothing to do (same digest or same rendered text)
    compiled: Compiled
    worker_pid: int | None = None  # the new worker, when it reloaded
    plan: changes.Plan | None = None
    fallback: str = ""  # why a runtime change fell back to a reload
    # False: in effect without `haproxy -c` of the whole file; the caller runs it late.
    checked: bool = True
    stages: Stages = field(default_factory=Stages, compare=False)

    @property
    def kind(self) -> changes.Kind:
        """How the change reached haproxy (a runtime change that fell back is a reload)."""
        if not self.changed or self.plan is None:
            return changes.Kind.NOOP
        return changes.Kind.RELOAD if self.worker_pid is not None else self.plan.kind


def change_transaction(
    settings: Settings, options: RenderOptions, current: Compiled, force: bool = False
) -> ChangeOutcome:
    """One change transaction: noop, runtime API, or reload. Raises ConfigError /
    HaproxyCheckError / ReloadFailed with the live router untouched; returns
    ChangeOutcome(changed=False) when there is nothing to do."""
    stages = Stages()
    snapshot = read_inputs(settings, material_paths_of(current.config))
    stages.lap("read")
    if snapshot.digest == current.inputs_digest and not force:
        return ChangeOutcome(False, current)
    if not snapshot.exists:
        # A mount that vanished must not turn into "no routes": keep serving what we have.
        raise ConfigError([Problem(str(settings.config_dir), "", "directory disappeared")])
    compiled = compile_snapshot(settings, options, snapshot, stages)
    if (
        compiled.text == current.text
        and compiled.maps == current.maps
        and compiled.tls_files == current.tls_files
    ):
        return ChangeOutcome(False, compiled)  # e.g. a comment-only edit: nothing for haproxy
    plan = changes.plan(current, compiled, runtime=settings.runtime_changes)
    stages.lap("diff")
    if plan.kind is changes.Kind.RELOAD:
        # A reload never loads an unchecked file. The running worker's server state, for
        # the new config, is saved while haproxy checks it (a few hundred ms at 10,000
        # routes that the added route would otherwise wait for).
        check_compiled(settings, compiled, partial(save_server_state, settings, compiled.text))
        stages.lap("check")
        install(settings, compiled.text, compiled.maps, compiled.tls_files)
        stages.lap("files")
        return _reload(settings, current, compiled, plan, "", stages=stages, state_saved=True)
    # Runtime (or nothing for haproxy to do): validated by the compiler (TLS material by
    # config/tlsmaterial.py), then by haproxy as it applies each command, and read back. The
    # pattern and TLS files and the space of haproxy.cfg go first: a disk that is full fails
    # the change before haproxy has taken any of it. haproxy.cfg is written right after the
    # apply (before this returns, so whatever dies later, haproxy or this process, comes
    # back to it). The full `haproxy -c` of the file runs after this returns
    # (runtime/latecheck.py), off the path the user waits on.
    installing = Install(
        settings, compiled.text, compiled.maps, compiled.tls_files, live_text=current.text
    )
    stages.lap("files")
    if plan.kind is changes.Kind.NOOP:
        installing.commit()
        stages.lap("write")
        return ChangeOutcome(True, compiled, None, plan, checked=False, stages=stages)
    fallback = ""
    try:
        stats = CliSocket(settings.run.stats_socket, timeout=5.0)
        live.apply(stats.command, plan, settings.run.maps, settings.run.tls)
        stages.lap("apply")
    except live.LiveChangeFailed as exc:
        # The files on disk hold the new configuration once committed: a reload lands on
        # it, once it is checked like any reload's.
        fallback = str(exc)
        log.warning("runtime change failed, reloading instead: %s", fallback)
    finally:
        # haproxy may hold any part of the change now: the files describe all of it.
        installing.commit()
    if not fallback:
        stages.lap("write")
        return ChangeOutcome(True, compiled, None, plan, checked=False, stages=stages)
    try:
        check_compiled(settings, compiled)
    except (ConfigError, HaproxyCheckError):
        # The worker may hold part of the edit: back to the last good config, files and all.
        restore_last_good(settings, current.maps, current.tls_files)
        try:
            master_reload(settings)
        except (ReloadFailed, HaproxyError) as exc:
            log.error("could not reload back to the last good config: %s", exc)
        raise
    stages.lap("check")
    return _reload(settings, current, compiled, plan, fallback, stages=stages)


def _reload(
    settings: Settings,
    current: Compiled,
    compiled: Compiled,
    plan: changes.Plan,
    fallback: str,
    *,
    stages: Stages,
    state_saved: bool = False,
) -> ChangeOutcome:
    """Reload onto the installed (and checked) `compiled`; the last good one back on failure."""
    try:
        pid = master_reload(settings, state_saved=state_saved)
    except (ReloadFailed, HaproxyError):
        restore_last_good(settings, current.maps, current.tls_files)
        raise
    stages.lap("reload")
    return ChangeOutcome(True, compiled, pid, plan, fallback, stages=stages)
