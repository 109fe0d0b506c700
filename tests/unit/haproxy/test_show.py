"""Parser cases the recordings do not show: IPv6 clients, the master CLI's `sockpair`
session, an answer without its header line."""

from __future__ import annotations

from haproxy_egress.haproxy.show import (
    Session,
    parse_servers_state,
    parse_sessions,
    servers_state_without,
)


def test_parse_sessions() -> None:
    text = (
        "0x55b244ffee50: proto=tcpv4 src=127.0.0.1:37892 fe=db be=db srv=10.0.0.1_5432 ts=00 "
        "epoch=0 age=18s calls=3 rate=0 cpu=0 lat=0 rq[f=848000h,i=0,an=00h,rx=59m,wx=,ax=]\n"
        "0x55b244ff0000: proto=tcpv6 src=::1:4000 fe=web be=web srv=<none> ts=00 age=1s\n"
        "0x55b2450e1a80: proto=sockpair src=unix:2 fe=GLOBAL be=<NONE> srv=<none> ts=00\n"
    )
    assert parse_sessions(text) == [
        Session("0x55b244ffee50", "db", "10.0.0.1_5432", "127.0.0.1"),
        Session("0x55b244ff0000", "web", "<none>", "::1"),
    ]


# Columns in another order than haproxy prints them: read by name, not by position.
SHUFFLED = """1
# be_name be_id srv_port srv_id srv_name srv_addr srv_op_state srv_admin_state
web 3 8080 1 web-1 10.0.0.1 2 1
web 3 8081 2 web-2 10.0.0.2 2 0
"""


def test_servers_state_is_read_by_column_name() -> None:
    states = parse_servers_state(SHUFFLED)
    assert [(s.backend, s.name, s.address, s.port, s.maintenance) for s in states] == [
        ("web", "web-1", "10.0.0.1", 8080, True),
        ("web", "web-2", "10.0.0.2", 8081, False),
    ]
    assert servers_state_without(SHUFFLED, lambda s: s.maintenance).splitlines() == [
        "1",
        "# be_name be_id srv_port srv_id srv_name srv_addr srv_op_state srv_admin_state",
        "web 3 8081 2 web-2 10.0.0.2 2 0",
    ]


def test_servers_state_without_a_header_uses_the_documented_columns() -> None:
    line = "4 be 1 s1 127.0.0.1 2 1 1 1 0 1 0 2 0 0 0 0 - 45849 - 0 0 - - 0"
    (state,) = parse_servers_state(line)
    assert (state.backend, state.name, state.port, state.maintenance) == ("be", "s1", 45849, True)


def test_a_dns_slot_without_an_address_is_an_unfilled_slot() -> None:
    text = (
        "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_port"
        " srv_fqdn\n"
        "4 api 1 api-1 10.0.0.7 2 0 443 api.test\n"
        "4 api 2 api-2 - 0 0 443 api.test\n"
        "5 db 1 db-1 10.0.0.9 2 0 5432 -\n"
    )
    assert [s.unfilled_slot for s in parse_servers_state(text)] == [False, True, False]
