"""The `logging` section: remote syslog targets, their defaults and their located errors."""

from __future__ import annotations

import pytest

from haproxy_egress.config.document import Config
from haproxy_egress.config.sources import load_snapshot
from tests.unit.config.test_sources import errors, snap

ROUTE = """\
    routes:
      - {name: db, listen: 15432, mode: tcp, destinations: ["10.0.0.1:5432"]}
"""


def _load(logging: str) -> Config:
    return load_snapshot(snap(routes_yaml=ROUTE + logging), {})


def test_the_issue_example_loads_with_its_names() -> None:
    config = _load(
        """\
    logging:
      syslog:
        - address: siem.corp.example:6514
          transport: tls                  # tcp | tls
          ca_file: /etc/egress/siem-ca/ca.crt
          client_cert_dir: /etc/egress/siem-client
          format: rfc5424                 # rfc5424 (default) | json
    """
    )
    (target,) = config.logging.syslog
    assert (target.receiver.host, target.receiver.port, target.transport, target.format) == (
        "siem.corp.example",
        6514,
        "tls",
        "rfc5424",
    )
    assert target.client_cert_dir == "/etc/egress/siem-client"
    assert target.receiver.host_is_name


def test_defaults_port_by_transport_and_brackets_ipv6() -> None:
    config = _load(
        """\
    logging:
      syslog:
        - {address: "10.1.2.3", transport: tcp}
        - {address: "[2001:db8::1]", ca_file: /ca.crt}
    """
    )
    assert [t.label for t in config.logging.syslog] == ["10.1.2.3:514", "[2001:db8::1]:6514"]
    assert config.logging.syslog[1].transport == "tls"  # the default: an audit trail is private


def test_no_logging_section_means_stdout_only() -> None:
    assert load_snapshot(snap(routes_yaml=ROUTE), {}).logging.syslog == ()


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("{address: siem:6514}", "transport tls needs ca_file"),
        ("{address: siem, transport: tcp, ca_file: /ca.crt}", "need transport: tls"),
        ("{address: siem, transport: udp}", "Input should be 'tcp' or 'tls'"),
        ("{address: siem, ca_file: ca.crt}", "must be an absolute path"),
        ("{address: siem, ca_file: '/ca.crt\\n  x'}", "must be an absolute path"),
        ("{address: 'siem:99999', transport: tcp}", "1..65535"),
        ("{address: siem, transport: tcp, format: cef}", "'rfc5424' or 'json'"),
        ("{address: siem, transport: tcp, buffer_size: 1024}", "greater than or equal to 65536"),
        ("{address: siem, transport: tcp, adress: x}", "unknown field"),
        ("{address: 'siem:514', transport: tcp, failover: siem}", "the target's own address"),
        ("{address: siem, transport: tcp, failover: 'siem2:0'}", "1..65535"),
    ],
)
def test_bad_target_is_a_located_problem(entry: str, problem: str) -> None:
    text = ROUTE + f"    logging:\n      syslog:\n        - {entry}\n"
    (found,) = errors(snap(routes_yaml=text))
    assert found.startswith("routes.yaml:5: logging.syslog[0]"), found
    assert problem in found, found


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("address: '10.0.0.9'", "address: '10.0.0.9:514'"),
        ("{address: '10.0.0.8', failover: '10.0.0.9'", "address: '10.0.0.9'"),  # a failover too
    ],
)
def test_a_receiver_listed_twice_is_refused(first: str, second: str) -> None:
    entries = "".join(f"        - {{{e.strip('{')}, transport: tcp}}\n" for e in (first, second))
    text = ROUTE + f"    logging:\n      syslog:\n{entries}"
    found = errors(snap(routes_yaml=text))
    assert any("10.0.0.9:514 is listed twice" in f for f in found), found


def test_two_keys_setting_logging_differently_is_an_error() -> None:
    one = "logging:\n  syslog: [{address: '10.0.0.9', transport: tcp}]\n"
    two = "logging:\n  syslog: [{address: '10.0.0.8', transport: tcp}]\n"
    found = errors(snap(routes_yaml=ROUTE, a_yaml=one, b_yaml=two))
    assert any("logging.syslog: also set to a different value in a.yaml" in f for f in found)


def test_a_failover_receiver_takes_the_target_settings_and_its_own_label() -> None:
    config = _load(
        "    logging:\n      syslog:\n"
        "        - {address: 'siem-1.corp.example', failover: '[2001:db8::2]', transport: tcp}\n"
    )
    (target,) = config.logging.syslog
    assert [r.label for r in target.receivers] == ["siem-1.corp.example:514", "[2001:db8::2]:514"]
