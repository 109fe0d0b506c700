"""Shortcuts taken for speed must agree with the general code they skip."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haproxy_egress.config.addresses import ip_or_none, parse_endpoint
from haproxy_egress.config.problems import ProblemList, validate
from haproxy_egress.config.route import Route
from haproxy_egress.config.scalars import _duration_ms, format_duration

# Dotted quads and near misses: leading zeros, short forms, blanks, big octets, IPv6.
_ADDRESS = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.text(alphabet="0123456789.: x", max_size=16),
)


def _general(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@given(_ADDRESS)
def test_ip_or_none_is_ipaddress(text: str) -> None:
    assert ip_or_none(text) == _general(text)


@given(st.one_of(st.integers(-1, 70000).map(str), st.text(alphabet="0123456789٤²", max_size=7)))
def test_ipv4_destination_ports_follow_parse_port(port: str) -> None:
    text = f"198.51.100.7:{port}"
    data = {"name": "r", "listen": 8000, "destinations": [text]}
    try:
        expected: object = parse_endpoint(text, default_port=None)[1]
    except ValueError as exc:
        expected = str(exc)
    try:
        got: object = validate(Route, data, "r.yaml").destinations[0].port
    except ProblemList as exc:
        got = exc.problems[0].message
    assert got == expected


@pytest.mark.parametrize("ms", [1, 999, 1000, 1500, 60_000, 90_000, 3_600_000, 86_400_000])
def test_format_duration_round_trips(ms: int) -> None:
    assert _duration_ms(format_duration(ms)) == ms
    assert format_duration(ms) == format_duration(ms)  # cached: the same answer again
