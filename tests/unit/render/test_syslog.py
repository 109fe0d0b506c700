"""Remote syslog targets → haproxy: one ring per target, or a log backend (haproxy 2.9+) for a
target with a failover receiver; which versions can do that; the rings' names and labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from haproxy_egress.config.logtargets import Logging, SyslogTarget
from haproxy_egress.render.syslog import failover_problems, rings, sink_labels, version_tuple

TCP = SyslogTarget(address="10.0.0.9", transport="tcp")
PAIR = SyslogTarget(
    address="siem-1.example:6514",
    failover="siem-2.example",
    ca_file="/etc/egress/ca.crt",
    client_cert_dir="/etc/egress/client",
)


def test_a_target_with_failover_has_two_servers_each_verified_by_name() -> None:
    (_, ring) = rings(Logging(syslog=(TCP, PAIR)), Path("/run/certs"))
    assert ring.failover
    assert [(s.name, s.label) for s in ring.servers] == [
        ("primary", "siem-1.example:6514"),
        ("failover", "siem-2.example:6514"),
    ]
    assert ring.servers[1].line == (
        "siem-2.example:6514 log-proto octet-count ssl verify required ca-file "
        "/etc/egress/ca.crt crt /run/certs/egress_syslog_2.pem verifyhost siem-2.example"
    )


def test_sinks_are_named_as_show_events_lists_them() -> None:
    assert sink_labels(Logging(syslog=(TCP, PAIR))) == {
        "egress_syslog_1": "10.0.0.9:514",
        "egress_syslog_2/primary": "siem-1.example:6514",
        "egress_syslog_2/failover": "siem-2.example:6514",
    }


@pytest.mark.parametrize(
    ("version", "refused"),
    [("2.6.12-1+deb12u4", True), ("2.8.5", True), ("2.9.0", False), ("3.0.11-1", False)],
)
def test_failover_needs_a_log_backend(version: str, refused: bool) -> None:
    found = failover_problems(Logging(syslog=(TCP, PAIR)), version)
    assert bool(found) is refused
    if refused:
        ((path, message),) = found
        assert path == "logging.syslog[1].failover"
        assert f"needs haproxy 2.9 or later (a log backend); this haproxy is {version}" in message


def test_an_unknown_version_is_left_to_haproxy_check() -> None:
    assert version_tuple("unknown") is None
    assert failover_problems(Logging(syslog=(PAIR,)), "unknown") == []
    assert failover_problems(Logging(syslog=(TCP,)), "2.6.12") == []
