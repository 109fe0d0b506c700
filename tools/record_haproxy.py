"""Record real haproxy answers for the parser tests: `python -m tools.record_haproxy [BIN]`.

Starts BIN (default `haproxy`) in master-worker mode with a small configuration on loopback,
puts it in a known state (a held TCP session, a server in maintenance, a stick-table entry,
an ACL file, a reload that leaves an old worker behind), and writes each answer the router
parses to tests/data/haproxy/<major.minor>/, with `facts.json`: what the recorder knows
independently of the answers (pids, ports, names), for the tests to compare the parsed
values with. `haproxy -c` is recorded on two broken configurations (a Lua syntax error, a
rule naming an action no file registers).

Re-record after a haproxy upgrade, or for a new version:
`python -m tools.record_haproxy /usr/local/bin/haproxy30`. Everything runs on 127.0.0.1 in a
temporary directory and is stopped before the script returns.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from haproxy_egress.errors import HaproxyError
from haproxy_egress.haproxy.cli import CliSocket
from haproxy_egress.haproxy.program import master_argv, parse_version

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "haproxy"
TABLE_KEY = "web/default/1/allow"  # shaped like the policy table's keys (metrics/decisions.py)
TABLE_COUNT = 5
T = TypeVar("T")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: Callable[[], T | None], what: str, timeout: float = 15.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(HaproxyError, OSError):
            found = predicate()
            if found:
                return found
        time.sleep(0.05)
    raise SystemExit(f"record_haproxy: {what} did not happen within {timeout:.0f}s")


@contextlib.contextmanager
def _holding_origin() -> Iterator[int]:
    """A TCP origin on 127.0.0.1 that accepts connections and holds them open."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                conn, _ = server.accept()
                held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


@dataclass(frozen=True)
class Paths:
    """The files of one recording run, in a temporary directory."""

    root: Path
    config: Path
    stats: Path
    master: Path
    pid_file: Path
    acl: Path

    @classmethod
    def under(cls, root: Path) -> Paths:
        names = ("haproxy.cfg", "stats.sock", "master.sock", "haproxy.pid", "clients.acl")
        return cls(root, *(root / name for name in names))


def _config(paths: Paths, front: int, origin: int, spare: int) -> str:
    return f"""global
    pidfile {paths.pid_file}
    stats socket {paths.stats} mode 600 level admin
defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
backend policy_table
    stick-table type string len 128 size 1k store gpc0
frontend front
    bind 127.0.0.1:{front}
    tcp-request connection reject if !{{ src -f {paths.acl} }}
    default_backend be
backend be
    balance first
    server s1 127.0.0.1:{origin}
    server s2 127.0.0.1:{spare}
"""


def _record_check(binary: str, out: Path, root: Path) -> None:
    """`haproxy -c` on a Lua syntax error and on an action no file registers (an http-request
    and a tcp-request rule: haproxy words the two refusals differently)."""
    broken = b"core.register_action('hello', {'http-req'}, function(txn)\n  this is not lua\nend)\n"
    good = b"core.register_action('hello', {'http-req'}, function(txn) end)\n"
    for name, lua, rule in (
        ("check_lua_error", broken, "http-request lua.hello"),
        ("check_unregistered", good, "http-request lua.nothere"),
        ("check_unregistered_tcp", good, "tcp-request content lua.nothere"),
    ):
        lua_path = root / f"{hashlib.sha256(lua).hexdigest()}.lua"
        lua_path.write_bytes(lua)
        cfg = root / f"{name}.cfg"
        cfg.write_text(
            f"global\n    lua-load-per-thread {lua_path}\n"
            "defaults\n    mode http\n    timeout connect 1s\n    timeout client 1s\n"
            "    timeout server 1s\n"
            f"frontend f\n    bind 127.0.0.1:{_free_port()}\n    {rule}\n"
            "    default_backend b\nbackend b\n    server s 127.0.0.1:1\n"
        )
        proc = subprocess.run(
            [binary, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60, check=False
        )
        text = (proc.stdout + proc.stderr).replace(str(root), "/run/haproxy-egress")
        (out / f"{name}.txt").write_text(text)
        (out / f"{name}.rc").write_text(f"{proc.returncode}\n")


def record(binary: str, data: Path = DATA) -> Path:
    """Record every answer of `binary` under `data`/<major.minor>/; returns that directory."""
    version_text = subprocess.run(
        [binary, "-v"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    version = parse_version(version_text)
    out = data / ".".join(version.split(".")[:2])
    out.mkdir(parents=True, exist_ok=True)
    (out / "version.txt").write_text(version_text)
    with tempfile.TemporaryDirectory(prefix="record-haproxy-") as tmp, _holding_origin() as origin:
        paths = Paths.under(Path(tmp))
        _record_check(binary, out, paths.root)
        paths.acl.write_text("127.0.0.1\n10.0.0.0/8\n")
        front = _free_port()
        spare = _free_port()
        paths.config.write_text(_config(paths, front, origin, spare))
        argv = master_argv(binary, paths.config, paths.master)
        with (paths.root / "haproxy.log").open("w") as log:
            master = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        try:
            _record_running(paths, out, master.pid, front, origin=origin, spare=spare)
        finally:
            master.send_signal(signal.SIGTERM)
            try:
                master.wait(timeout=10)
            except subprocess.TimeoutExpired:
                master.kill()
                master.wait()
    return out


def _record_running(
    paths: Paths, out: Path, master_pid: int, front: int, *, origin: int, spare: int
) -> None:
    stats = CliSocket(paths.stats, timeout=5.0)
    master = CliSocket(paths.master, timeout=5.0, master=True)
    info = _wait(lambda: stats.command("show info"), "the stats socket")
    (out / "show_info.txt").write_text(info)
    (worker,) = _children(master_pid)
    with socket.create_connection(("127.0.0.1", front)) as client:
        client_port = int(client.getsockname()[1])
        sess = _wait(_containing(stats, "show sess", f":{client_port} "), "the held session")
        (out / "show_sess.txt").write_text(sess)
        assert stats.command("set server be/s2 state maint").strip() == ""
        (out / "show_servers_state.txt").write_text(stats.command("show servers state"))
        (out / "show_servers_state_be.txt").write_text(stats.command("show servers state be"))
        stats.command(f"set table policy_table key {TABLE_KEY} data.gpc0 {TABLE_COUNT}")
        (out / "show_table.txt").write_text(stats.command("show table policy_table"))
        (out / "show_acl.txt").write_text(stats.command(f"show acl {paths.acl}"))
        prepared = stats.command(f"prepare acl {paths.acl}")
        (out / "prepare_acl.txt").write_text(prepared)
        extra = _free_port()
        replies = {
            "add_server": stats.command(f"add server be/s3 127.0.0.1:{extra}"),
            "del_server": stats.command("del server be/s3"),
            "del_server_unknown": stats.command("del server be/nothere"),
        }
        for name, answer in replies.items():
            (out / f"{name}.txt").write_text(answer)
        (out / "show_stat.csv").write_text(stats.command("show stat"))
        (out / "show_info_stat.txt").write_text(stats.command("show info;show stat"))
        pids = paths.pid_file.read_text()
        (out / "pid_file.txt").write_text(pids)
        # A reload while the session is held leaves the first worker behind as an old one.
        with contextlib.suppress(HaproxyError):
            master.command("reload")
        new_worker = _wait(lambda: set(_children(master_pid)) - {worker}, "the new worker").pop()
        proc = _wait(_containing(master, "show proc", str(new_worker)), "the new worker's line")
        (out / "show_proc.txt").write_text(proc)
        (out / "show_proc_old_worker_info.txt").write_text(master.command(f"@!{worker} show info"))
        facts = {
            "version": parse_version((out / "version.txt").read_text()),
            "master_pid": master_pid,
            "old_worker_pid": worker,
            "worker_pid": new_worker,
            "pid_file_pids": [int(p) for p in pids.split()],
            "frontend": "front",
            "backend": "be",
            "client_port": client_port,
            "servers": {"s1": ["127.0.0.1", origin, False], "s2": ["127.0.0.1", spare, True]},
            "session_server": "s1",
            "table_key": TABLE_KEY,
            "table_gpc0": TABLE_COUNT,
            "acl_entries": ["127.0.0.1", "10.0.0.0/8"],
        }
        (out / "facts.json").write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")


def _containing(cli: CliSocket, command: str, needle: str) -> Callable[[], str | None]:
    def answer() -> str | None:
        text = cli.command(command)
        return text if needle in text else None

    return answer


def _children(pid: int) -> list[int]:
    """A process's children, from /proc (not from haproxy: these are what the answers must
    say)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def main() -> None:
    binary = sys.argv[1] if len(sys.argv) > 1 else "haproxy"
    print(record(binary))


if __name__ == "__main__":
    main()
