"""Old-worker bookkeeping against a recorded master CLI: which sessions are ended, and when.

The master CLI here replays answers in haproxy 2.6's formats (tests/integration/test_old_workers.py
runs the same against a real haproxy); it records every command it is sent.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from haproxy_egress.runtime.changes import Deny, Kind, Plan
from haproxy_egress.runtime.workers import Bounds, Workers

PROC = """#<PID>          <type>          <reloads>       <uptime>        <version>
100             master          3 [failed: 0]   0d00h00m10s     2.6.12-1+deb12u4
# workers
400             worker          0               0d00h00m02s     2.6.12-1+deb12u4
# old workers
101             worker          3               0d00h00m10s     2.6.12-1+deb12u4
200             worker          2               0d00h00m08s     2.6.12-1+deb12u4
300             worker          1               0d00h00m05s     2.6.12-1+deb12u4
# programs
"""


def sess(*rows: tuple[str, str, str, str]) -> str:
    lines = [
        f"{ptr}: proto=tcpv4 src={src}:40000 fe={fe} be={fe} srv={srv} ts=00 age=1s calls=2"
        for ptr, src, fe, srv in rows
    ]
    lines.append("0xcli: proto=sockpair src=unix:2 fe=GLOBAL be=<NONE> srv=<none> ts=00")
    return "\n".join(lines) + "\n"


@dataclass
class Master:
    sessions: dict[int, str] = field(default_factory=dict)
    sent: list[str] = field(default_factory=list)

    def __call__(self, line: str) -> str:
        self.sent.append(line)
        if line == "show proc":
            return PROC
        pid, _, command = line.partition(" ")
        if command == "show sess":
            return self.sessions.get(int(pid[2:]), "")
        if command == "show info":
            return "Pid: 1\nCurrConns: 2\n"
        return ""


def test_count_bound_ends_the_oldest_and_only_its_sessions() -> None:
    master = Master({101: sess(("0xa", "127.0.0.1", "db", "s1"), ("0xb", "127.0.0.1", "db", "s1"))})
    workers = Workers(master, drain_seconds=5, bounds=Bounds(count=2))
    workers.refresh(now=0.0)
    assert "@!101 shutdown session 0xa" in master.sent
    assert "@!101 shutdown session 0xb" in master.sent
    assert not any(c.startswith(("@!200 shutdown", "@!300 shutdown")) for c in master.sent)
    assert workers.workers_ended == {"count": 1}
    assert workers.connections_ended == {"count": 2}
    assert workers.snapshot.count == 3
    assert workers.snapshot.connections == 6


def test_denied_sessions_end_after_the_drain_and_nothing_else() -> None:
    master = Master(
        {
            300: sess(
                ("0x1", "127.0.0.1", "db", "10.0.0.1_5432"), ("0x2", "127.0.0.1", "db", "keep")
            ),
            400: sess(
                ("0x3", "127.0.0.1", "db", "10.0.0.1_5432"), ("0x4", "127.0.0.1", "web", "x")
            ),
        }
    )
    workers = Workers(master, drain_seconds=5)
    deny = Deny("db", "destination removed", servers=frozenset({"10.0.0.1_5432"}))
    plan = Plan(Kind.RUNTIME, denies=(deny,))
    workers.after_runtime(10.0, plan)
    workers.tick(14.0)
    assert not any("shutdown session" in c for c in master.sent)  # the drain is not over
    workers.tick(15.0)
    ended = sorted(c for c in master.sent if "shutdown session" in c)
    assert ended == ["@!300 shutdown session 0x1", "@!400 shutdown session 0x3"]
    assert workers.connections_ended == {"denied": 2}


def test_a_destination_listed_again_is_not_ended() -> None:
    master = Master({400: sess(("0x3", "127.0.0.1", "db", "10.0.0.1_5432"))})
    workers = Workers(master, drain_seconds=5)
    deny = Deny("db", "destination removed", servers=frozenset({"10.0.0.1_5432"}))
    workers.after_runtime(0.0, Plan(Kind.RUNTIME, denies=(deny,)))
    workers.keep(frozenset({"db/10.0.0.1_5432"}), {"db": ()})
    workers.tick(10.0)
    assert not any("shutdown session" in c for c in master.sent)


def test_a_client_admitted_again_by_a_newer_edit_is_not_ended() -> None:
    master = Master({400: sess(("0x1", "127.0.0.1", "db", "s"), ("0x2", "127.0.0.2", "db", "s"))})
    workers = Workers(master, drain_seconds=5)
    narrowed = ipaddress.ip_network("10.0.0.0/8")
    deny = Deny("db", "client no longer in allow_from", allowed=(narrowed,))
    workers.after_runtime(0.0, Plan(Kind.RUNTIME, denies=(deny,)))
    # A newer edit lets 127.0.0.1 in again (but not 127.0.0.2).
    workers.keep(frozenset(), {"db": (narrowed, ipaddress.ip_network("127.0.0.1/32"))})
    workers.tick(10.0)
    assert [c for c in master.sent if "shutdown session" in c] == ["@!400 shutdown session 0x2"]
