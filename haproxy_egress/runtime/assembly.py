"""Builds the supervisor's collaborators for a set of settings and hands them to it.

The supervisor runs its loop on what it is given: its children (haproxy, and socklog or the log
relay), the config watcher, the metrics endpoint, the log-loss watch and the old-worker
bookkeeping. Which of them exist and how they are wired (sockets, the log sink, the clock) is
decided here, once, so the loop can be driven in a unit test with fake children and a fake
clock through `child_factory` and `clock`.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from pathlib import Path

from haproxy_egress.errors import EgressError
from haproxy_egress.haproxy.cli import CliSocket
from haproxy_egress.haproxy.program import master_argv
from haproxy_egress.haproxy.show import parse_info
from haproxy_egress.metrics.http import MetricsServer
from haproxy_egress.metrics.options import ExporterOptions
from haproxy_egress.render.compiler import RenderOptions
from haproxy_egress.render.pipeline import Compiled
from haproxy_egress.runtime.children import Child, Clock, child_of
from haproxy_egress.runtime.haproxylog import StderrRelay
from haproxy_egress.runtime.latecheck import LateCheck
from haproxy_egress.runtime.logloss import LogLossWatch
from haproxy_egress.runtime.logrelay import LogPipe, relay_child
from haproxy_egress.runtime.supervisor import Event, Parts, Running, Supervisor
from haproxy_egress.runtime.watcher import Watcher
from haproxy_egress.runtime.workers import Bounds, Workers
from haproxy_egress.settings import LogSink, Settings


def assemble(
    settings: Settings,
    options: RenderOptions,
    compiled: Compiled,
    clock: Clock = time.monotonic,
    child_factory: Callable[..., Child] = Child,  # tests hand in children without a process
) -> Supervisor:
    """A supervisor for `settings`, starting from `compiled`, with every collaborator built."""
    run = settings.run
    inbox: queue.SimpleQueue[Event] = queue.SimpleQueue()
    running = Running(compiled)
    # The log path (docs/operations.md "Logging"): haproxy's stdout is the relay's FIFO,
    # which this process holds open so that no relay restart loses what it buffers.
    log_pipe: LogPipe | None = None
    logrelay: Child | None = None
    if settings.log_sink is LogSink.RELAY:
        log_pipe = LogPipe(run.log_pipe, settings.log_pipe_bytes)
        logrelay = relay_child(
            log_pipe, run.log_relay_state, settings.log_buffer_bytes, settings.log_format
        )
    log_loss = LogLossWatch(
        run.master_socket,
        run.log_relay_state if logrelay else None,
        settings.log_warn_interval,
        sink_labels=running.syslog_sinks,
        stats_socket=run.stats_socket,
    )
    # haproxy's own notices and warnings: relayed in the router's format, route named.
    haproxy_stderr = StderrRelay(running.route_names)
    haproxy = child_factory(
        "haproxy",
        master_argv(settings.haproxy_bin, run.config, run.master_socket),
        # Filled in below, once the child exists: the probe asks for a worker of *its* master.
        probe=lambda: False,
        before_start=log_pipe.ensure if log_pipe else None,
        stdout=run.log_pipe if log_pipe else None,
        stderr=haproxy_stderr.write_fd,
    )
    haproxy.probe = lambda: haproxy_answers(run.stats_socket, haproxy.pid)
    socklog: Child | None = None
    if settings.log_sink is LogSink.SOCKLOG:
        socklog = child_factory(
            "socklog",
            [settings.socklog_bin, "unix", str(run.log_socket)],
            probe=run.log_socket.exists,
            # A socket left by the previous socklog would pass the probe at once.
            before_start=lambda: run.log_socket.unlink(missing_ok=True),
        )
    workers = Workers(
        CliSocket(run.master_socket, timeout=5.0, master=True).command,
        settings.drain_seconds,
        Bounds(settings.max_old_workers, settings.old_worker_max_age, settings.old_worker_max_rss),
    )
    log_child = socklog or logrelay
    for child in (log_child, haproxy):
        if child is not None:
            child.clock = clock
            child.backoff.stable_after = settings.restart_stable_seconds
    watcher = Watcher(
        settings.config_dir,
        inbox.put_nowait,
        compiled.inputs_digest,
        debounce=settings.reload_debounce,
        poll=settings.poll_seconds,
        users_file=settings.proxy_users_file,
        tls_paths=running.tls_paths,
    )
    exporter_options = ExporterOptions.from_settings(settings)
    stats = CliSocket(run.stats_socket, timeout=exporter_options.scrape_timeout)
    metrics = MetricsServer(
        settings.metrics_address,
        settings.metrics_port,
        stats.command,
        running.status,
        exporter_options,
        web_config=settings.web_config_file,  # re-read on change by the server itself
        reload_interval=settings.reload_debounce,
        stream=stats.stream,  # `show stat` rendered while haproxy writes it
    )
    parts = Parts(
        running=running,
        inbox=inbox,
        haproxy=haproxy,
        log_child=log_child,
        log_pipe=log_pipe,
        haproxy_stderr=haproxy_stderr,
        log_loss=log_loss,
        workers=workers,
        watcher=watcher,
        metrics=metrics,
        late_check=LateCheck(run, settings.haproxy_bin),
    )
    return Supervisor(settings, options, parts, clock=clock)


def haproxy_answers(stats_socket: Path, master_pid: int | None) -> bool:
    """A worker of the master `master_pid` answers on the stats socket: it runs the config,
    listeners bound. Whose worker matters: after the master is killed, its orphaned worker
    answers on the old socket until it notices and exits, while the new master has bound
    nothing yet; taking that answer would claim ready with no listener behind it."""
    try:
        stats = CliSocket(stats_socket, timeout=1.0)
        info = parse_info(stats.command("show info"))
    except EgressError:
        return False
    return info.pid is not None and child_of(info.pid, master_pid)


__all__ = ["assemble", "haproxy_answers"]
