"""The checks of every parser on one recording (tools/record_haproxy.py), shared by the unit
tests on tests/data/haproxy/<version>/ and the integration test that records afresh."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from haproxy_egress.errors import HaproxyCheckError
from haproxy_egress.haproxy import replies
from haproxy_egress.haproxy.check import check_output, parse_alerts
from haproxy_egress.haproxy.program import parse_version, pid_file_pids
from haproxy_egress.haproxy.show import (
    parse_info,
    parse_old_workers,
    parse_pattern_entries,
    parse_prepared_version,
    parse_proc_table,
    parse_servers_state,
    parse_sessions,
    parse_show_proc,
    parse_table,
    servers_state_without,
)
from haproxy_egress.haproxy.stat import (
    SSL_FAILED_HANDSHAKE,
    STATUS_FIELD,
    backend_counters,
    parse_stat,
    split_info_stat,
)

DATA = Path(__file__).resolve().parent.parent.parent / "data" / "haproxy"
VERSIONS = sorted(p.name for p in DATA.iterdir() if (p / "facts.json").exists())


def facts(directory: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((directory / "facts.json").read_text())
    return loaded


def check_version(d: Path) -> None:
    assert parse_version((d / "version.txt").read_text()) == facts(d)["version"]
    assert d.name == ".".join(facts(d)["version"].split(".")[:2])


def check_proc(d: Path) -> None:
    f = facts(d)
    text = (d / "show_proc.txt").read_text()
    current = parse_show_proc(text)
    assert [(p.kind, p.pid) for p in current] == [
        ("master", f["master_pid"]),
        ("worker", f["worker_pid"]),
    ]
    assert current[0].reloads == 1
    assert current[0].failed_reloads == 0
    assert [(p.pid, p.old) for p in parse_old_workers(text)] == [(f["old_worker_pid"], True)]
    assert len(parse_proc_table(text)) == 3


def check_sessions(d: Path) -> None:
    f = facts(d)
    sessions = parse_sessions((d / "show_sess.txt").read_text())
    # The CLI's own session (unix_stream or sockpair) is not a client session.
    assert len(sessions) == 1
    (s,) = sessions
    assert (s.frontend, s.server, s.client) == (f["frontend"], f["session_server"], "127.0.0.1")
    assert s.ptr.startswith("0x")


def check_info(d: Path) -> None:
    f = facts(d)
    info = parse_info((d / "show_info.txt").read_text())
    assert info.pid == f["old_worker_pid"]  # recorded before the reload
    assert info.dropped_logs == 0
    assert f["version"].startswith(info.fields["Version"])
    assert info.current_connections == 0  # the held session came after this answer
    old = parse_info((d / "show_proc_old_worker_info.txt").read_text())
    assert old.current_connections == 1  # the held session, still on the old worker
    assert old.pid == f["old_worker_pid"]
    assert old.dropped_logs is not None


def check_servers_state(d: Path) -> None:
    f = facts(d)
    for name in ("show_servers_state.txt", "show_servers_state_be.txt"):
        text = (d / name).read_text()
        states = {s.name: s for s in parse_servers_state(text)}
        assert set(states) == set(f["servers"])
        for server, (address, port, maintenance) in f["servers"].items():
            got = states[server]
            assert (got.backend, got.address, got.port) == (f["backend"], address, port)
            assert got.maintenance is maintenance
        # The state file keeps every non-server line (version, header) and the servers kept.
        kept = servers_state_without(text, lambda s: s.maintenance)
        assert [s.name for s in parse_servers_state(kept)] == ["s1"]
        assert kept.splitlines()[:2] == text.splitlines()[:2]


def check_table(d: Path) -> None:
    f = facts(d)
    (entry,) = parse_table((d / "show_table.txt").read_text())
    assert entry.key == f["table_key"]
    assert entry.data["gpc0"] == str(f["table_gpc0"])


def check_patterns(d: Path) -> None:
    f = facts(d)
    assert parse_pattern_entries((d / "show_acl.txt").read_text()) == f["acl_entries"]
    version = parse_prepared_version((d / "prepare_acl.txt").read_text())
    assert version is not None
    assert version.isdigit()
    assert parse_prepared_version("Unknown ACL identifier.\n") is None


def check_stat(d: Path) -> None:
    f = facts(d)
    table = parse_stat((d / "show_stat.csv").read_text())
    assert table.failures == 0
    assert [r[0] for r in table.frontends] == [f["frontend"]]
    assert f["backend"] in [r[0] for r in table.backends]
    servers = {r[1]: r for r in table.servers if r[0] == f["backend"]}
    assert servers["s2"][STATUS_FIELD] == "MAINT"
    assert servers["s1"][STATUS_FIELD] in ("UP", "no check")
    split = split_info_stat((d / "show_info_stat.txt").read_text())
    assert split is not None
    info, csv = split
    assert info.pid == f["old_worker_pid"]
    assert parse_stat(csv).frontends[0][0] == f["frontend"]


def check_backend_counters(d: Path) -> None:
    f = facts(d)
    text = (d / "show_stat.csv").read_text()
    # The SSL statistics module reports on every backend, TLS or not; no handshake failed.
    failed = backend_counters(text, SSL_FAILED_HANDSHAKE)
    assert failed is not None
    assert failed[f["backend"]] == 0
    assert f["frontend"] not in failed  # backend rows only
    # Found by name (its position differs between versions): a count written into that
    # column of the backend's row is the count read back.
    header, *rows = text.splitlines()
    column = header[2:].split(",").index(SSL_FAILED_HANDSHAKE)
    marked = [header]
    for row in rows:
        cells = row.split(",")
        if cells[:2] == [f["backend"], "BACKEND"]:
            cells[column] = "7"
        marked.append(",".join(cells))
    assert backend_counters("\n".join(marked), SSL_FAILED_HANDSHAKE) == {**failed, f["backend"]: 7}
    assert backend_counters(text, "no_such_column") is None
    # The same column in the answer a scrape reads (`show info;show stat`).
    split = split_info_stat((d / "show_info_stat.txt").read_text())
    assert split is not None
    assert backend_counters(split[1], SSL_FAILED_HANDSHAKE) is not None


def check_replies(d: Path) -> None:
    assert (d / "add_server.txt").read_text().strip() == replies.SERVER_ADDED
    assert replies.server_deleted((d / "del_server.txt").read_text())
    assert replies.server_deleted((d / "del_server_unknown.txt").read_text())
    assert not replies.server_busy((d / "del_server.txt").read_text())


def check_pid_file(d: Path) -> None:
    assert pid_file_pids(d / "pid_file.txt") == facts(d)["pid_file_pids"]
    assert facts(d)["master_pid"] in pid_file_pids(d / "pid_file.txt")


def check_alerts(d: Path) -> None:
    text = (d / "check_lua_error.txt").read_text()
    assert (d / "check_lua_error.rc").read_text().strip() != "0"
    with pytest.raises(HaproxyCheckError) as err:
        check_output(1, text)
    assert "[NOTICE]" not in err.value.output
    alerts = parse_alerts(text)
    assert all("[ALERT]" in a.text for a in alerts)
    assert str(err.value).count("[ALERT]") == len(alerts)
    loads = [a.lua_load_error for a in alerts if a.lua_load_error is not None]
    ats = [a.lua_at for a in alerts if a.lua_at is not None]
    broken = b"core.register_action('hello', {'http-req'}, function(txn)\n  this is not lua\nend)\n"
    digest = hashlib.sha256(broken).hexdigest()
    assert [x.digest for x in loads] == [digest]
    assert len(ats) == 1
    assert digest.endswith(ats[0].digest)
    assert ats[0].line == 2
    text = (d / "check_unregistered.txt").read_text()
    names = [a.not_registered for a in parse_alerts(text) if a.not_registered is not None]
    assert [(n.keyword, n.name) for n in names] == [("http-request", "nothere")]
    assert (d / "check_unregistered_tcp.rc").read_text().strip() != "0"
    text = (d / "check_unregistered_tcp.txt").read_text()
    names = [a.not_registered for a in parse_alerts(text) if a.not_registered is not None]
    assert [(n.keyword, n.name) for n in names] == [("tcp-request", "nothere")]


CHECKS = (
    check_version,
    check_proc,
    check_sessions,
    check_info,
    check_servers_state,
    check_table,
    check_patterns,
    check_stat,
    check_backend_counters,
    check_replies,
    check_pid_file,
    check_alerts,
)
