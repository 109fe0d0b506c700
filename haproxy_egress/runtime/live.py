"""Apply a runtime Plan to the running worker through its stats socket, then read it back.

Servers: `add server` with the very options of the cfg line (dynamic servers do not inherit
`default-server`), `enable health` when checked, `enable server`; removed ones go to
maintenance at once (no new connection) and are deleted after the drain time. Pattern files
(ACL/map files under RunDir.maps): `prepare` a new version, `add` every line in one payload,
`commit` it, so no connection ever sees half a list. Any refusal or any difference found when
reading back raises LiveChangeFailed: the caller then reloads, and since the files on disk
already describe the new configuration, the reload lands exactly where this would have.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from haproxy_egress.errors import EgressError, HaproxyError
from haproxy_egress.runtime.changes import Plan, Server

log = logging.getLogger(__name__)

__all__ = ["LiveChangeFailed", "apply", "delete_servers", "pattern_kind"]

Command = Callable[[str], str]  # one stats-socket command → its answer
_VERSION = re.compile(r"New version created: (\d+)")
FMAINT = 0x1  # srv_admin_state bit: forced maintenance (`set server ... state maint`)


class LiveChangeFailed(EgressError):
    """A runtime command was refused or the state read back differs; reload instead."""


def pattern_kind(name: str) -> str:
    """`map` for *.map files, `acl` for the rest (the runtime API keeps them apart)."""
    return "map" if name.endswith(".map") else "acl"


def _expect(
    command: Command, line: str, ok: Iterable[str] = ("",), shown: str | None = None
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
        ok=("New server registered.",),
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
    match = _VERSION.search(answer)
    if not match:
        raise LiveChangeFailed(f"prepare {kind} {path} was refused: {answer}")
    version = match.group(1)  # u32 and wraps: always the one haproxy just gave
    lines = [ln for ln in content.splitlines() if ln.strip()]
    if kind == "map" and lines:
        payload = "\n".join(lines)  # many entries in one command
        shown = f"add map @{version} {path} ({len(lines)} entries)"
        _expect(command, f"add map @{version} {path} <<\n{payload}\n", shown=shown)
    else:  # 2.6 takes no payload for `add acl`: one entry per command
        for entry in lines:
            _expect(command, f"add acl @{version} {path} {entry}")
    _expect(command, f"commit {kind} @{version} {path}")


def apply(command: Command, plan: Plan, maps_dir: Path) -> None:
    """Make the worker run `plan`; raises LiveChangeFailed (the caller then reloads)."""
    # Added before removed: a route whose every destination changes always has one.
    states = {b: _server_states(command, b) for b in sorted({s.backend for s in plan.add})}
    for server in plan.add:
        got = states[server.backend].get(server.name)
        if got is not None and got[2] & FMAINT and (got[0], got[1]) == server.host_port:
            # Removed by an earlier edit and still draining: the same server, back in service.
            _expect(command, f"set server {server.ref} state ready")
            continue
        _add_server(command, server)
    for server in plan.remove:
        _expect(command, f"set server {server.ref} state maint")
    for name, content in plan.files:
        _swap_file(command, maps_dir / name, content)
    verify(command, plan, maps_dir)


def _server_states(command: Command, backend: str) -> dict[str, tuple[str, int, int]]:
    """name → (addr, port, admin_state) from `show servers state <backend>`."""
    try:
        text = command(f"show servers state {backend}")
    except HaproxyError as exc:
        raise LiveChangeFailed(f"show servers state {backend}: {exc}") from exc
    out = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 18 and fields[0].isdigit():
            out[fields[3]] = (fields[4], int(fields[18]), int(fields[6]))
    return out


def _entries(command: Command, kind: str, path: Path) -> list[str]:
    """The current entries of a pattern file, as `show acl|map <file>` lists them."""
    try:
        text = command(f"show {kind} {path}")
    except HaproxyError as exc:
        raise LiveChangeFailed(f"show {kind} {path}: {exc}") from exc
    return [ln.split(" ", 1)[1] for ln in text.splitlines() if ln.startswith("0x") and " " in ln]


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
            if got is None or got[0] != host or got[1] != port or got[2] & FMAINT:
                raise LiveChangeFailed(
                    f"server {server.ref}: read back {got}, wanted {host}:{port}"
                )
        for server in plan.remove:
            got = states.get(server.name)
            if server.backend == backend and got is not None and not got[2] & FMAINT:
                raise LiveChangeFailed(f"server {server.ref} is not in maintenance: {got}")
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
        if answer == "Server deleted." or answer.startswith("No such"):
            continue
        if "still has connections" in answer:
            busy.append(ref)
        else:
            log.warning("could not delete server %s: %s", ref, answer)
    return busy
