"""Apply a runtime Plan to the running worker through its stats socket, then read it back.

Servers: `add server` with the very options of the cfg line (dynamic servers do not inherit
`default-server`), `enable health` when checked, `enable server`; removed ones go to
maintenance at once (no new connection) and are deleted after the drain time. Pattern files
(ACL/map files under RunDir.maps): `prepare` a new version, `add` every line in one payload,
`commit` it, so no connection ever sees half a list. TLS files (a rotated client certificate,
CA or CRL): `set ssl … <<` and `commit ssl …` (runtime/tlslive.py). Any refusal or any
difference found when reading back raises LiveChangeFailed: the caller then reloads, and
since the files on disk already describe the new configuration, the reload lands exactly
where this would have.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from haproxy_egress.errors import EgressError, HaproxyError
from haproxy_egress.haproxy import replies
from haproxy_egress.haproxy.show import (
    ServerState,
    parse_pattern_entries,
    parse_prepared_version,
    parse_servers_state,
)
from haproxy_egress.runtime import tlslive
from haproxy_egress.runtime.changes import Plan, Server

log = logging.getLogger(__name__)

__all__ = ["LiveChangeFailed", "apply", "delete_servers", "pattern_kind"]

Command = Callable[[str], str]  # one stats-socket command → its answer


class LiveChangeFailed(EgressError):
    """A runtime command was refused or the state read back differs; reload instead."""


def pattern_kind(name: str) -> str:
    """`map` for *.map files, `acl` for the rest (the runtime API keeps them apart)."""
    return "map" if name.endswith(".map") else "acl"


def _expect(
    command: Command, line: str, ok: Iterable[str] = (replies.DONE,), shown: str | None = None
) -> str:
    """Send `line`; LiveChangeFailed unless haproxy answers one of `ok`. Messages quote
    `shown` when given (a map payload may hold a parent credential: never in a log line)."""
    what = shown if shown is not None else repr(line)
    try:
        answer = command(line).strip()
    except HaproxyError as exc:
        raise LiveChangeFailed(f"{what}: {exc}") from exc
    if answer not in ok:
        raise LiveChangeFailed(f"{what} was refused: {answer}")
    return answer


def _add_server(command: Command, server: Server) -> None:
    _expect(
        command,
        f"add server {server.ref} {server.address}{server.options}",
        ok=(replies.SERVER_ADDED,),
    )
    if " check" in f" {server.options}":
        _expect(command, f"enable health {server.ref}")
        # A dynamic server with checks starts down until `rise` checks pass; one from the
        # cfg starts up. Start it up as a reload would: its checks take it down if it fails.
        _expect(command, f"set server {server.ref} health up")
    _expect(command, f"enable server {server.ref}")


def _swap_file(command: Command, path: Path, content: str) -> None:
    kind = pattern_kind(path.name)
    try:
        answer = command(f"prepare {kind} {path}").strip()
    except HaproxyError as exc:
        raise LiveChangeFailed(f"prepare {kind} {path}: {exc}") from exc
    version = parse_prepared_version(answer)  # u32 and wraps: always the one haproxy gave
    if version is None:
        raise LiveChangeFailed(f"prepare {kind} {path} was refused: {answer}")
    lines = [ln for ln in content.splitlines() if ln.strip()]
    if kind == "map" and lines:
        payload = "\n".join(lines)  # many entries in one command
        shown = f"add map @{version} {path} ({len(lines)} entries)"
        _expect(command, f"add map @{version} {path} <<\n{payload}\n", shown=shown)
    else:  # 2.6 takes no payload for `add acl`: one entry per command
        for entry in lines:
            _expect(command, f"add acl @{version} {path} {entry}")
    _expect(command, f"commit {kind} @{version} {path}")


def apply(command: Command, plan: Plan, maps_dir: Path, tls_dir: Path | None = None) -> None:
    """Make the worker run `plan`; raises LiveChangeFailed (the caller then reloads)."""
    # Added before removed: a route whose every destination changes always has one.
    states = {b: _server_states(command, b) for b in sorted({s.backend for s in plan.add})}
    for server in plan.add:
        got = states[server.backend].get(server.name)
        if got is not None and got.maintenance and (got.address, got.port) == server.host_port:
            # Removed by an earlier edit and still draining: the same server, back in service.
            _expect(command, f"set server {server.ref} state ready")
            continue
        _add_server(command, server)
    for server in plan.remove:
        _expect(command, f"set server {server.ref} state maint")
    for name, content in plan.files:
        _swap_file(command, maps_dir / name, content)
    if plan.ssl:
        if tls_dir is None:
            raise LiveChangeFailed("TLS files changed but no TLS directory was given")
        try:
            tlslive.apply(command, plan.ssl, tls_dir)
        except tlslive.SslChangeFailed as exc:
            raise LiveChangeFailed(str(exc)) from exc
    verify(command, plan, maps_dir)


def _server_states(command: Command, backend: str) -> dict[str, ServerState]:
    """name → its state, from `show servers state <backend>`."""
    try:
        text = command(f"show servers state {backend}")
    except HaproxyError as exc:
        raise LiveChangeFailed(f"show servers state {backend}: {exc}") from exc
    return {s.name: s for s in parse_servers_state(text)}


def _entries(command: Command, kind: str, path: Path) -> list[str]:
    """The current entries of a pattern file, as `show acl|map <file>` lists them."""
    try:
        text = command(f"show {kind} {path}")
    except HaproxyError as exc:
        raise LiveChangeFailed(f"show {kind} {path}: {exc}") from exc
    return parse_pattern_entries(text)


def verify(command: Command, plan: Plan, maps_dir: Path) -> None:
    """Read the worker's state back and compare it with the plan; LiveChangeFailed if not."""
    backends = {s.backend for s in (*plan.add, *plan.remove)}
    for backend in sorted(backends):
        states = _server_states(command, backend)
        for server in plan.add:
            if server.backend != backend:
                continue
            got = states.get(server.name)
            host, port = server.host_port
            if got is None or got.address != host or got.port != port or got.maintenance:
                seen = None if got is None else (got.address, got.port, got.admin_state)
                raise LiveChangeFailed(
                    f"server {server.ref}: read back {seen}, wanted {host}:{port}"
                )
        for server in plan.remove:
            got = states.get(server.name)
            if server.backend == backend and got is not None and not got.maintenance:
                raise LiveChangeFailed(
                    f"server {server.ref} is not in maintenance: {got.address}:{got.port}"
                )
    for name, content in plan.files:
        path = maps_dir / name
        want = [ln.strip() for ln in content.splitlines() if ln.strip()]
        entries = [e.strip() for e in _entries(command, pattern_kind(name), path)]
        if sorted(entries) != sorted(want):
            raise LiveChangeFailed(f"{path}: read back {len(entries)} entries, wanted {len(want)}")


def delete_servers(command: Command, servers: Iterable[str]) -> list[str]:
    """End the sessions of servers in maintenance and delete them; returns those still busy."""
    busy = []
    for ref in servers:
        try:
            command(f"shutdown sessions server {ref}")
            answer = command(f"del server {ref}").strip()
        except HaproxyError as exc:
            log.warning("could not delete server %s: %s", ref, exc)
            busy.append(ref)
            continue
        if replies.server_deleted(answer):
            continue
        if replies.server_busy(answer):
            busy.append(ref)
        else:
            log.warning("could not delete server %s: %s", ref, answer)
    return busy
