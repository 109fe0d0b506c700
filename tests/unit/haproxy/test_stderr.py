"""haproxy's stderr lines as the router relays them: level, route, haproxy's words."""

from __future__ import annotations

import pytest

from haproxy_egress.haproxy.stderr import parse_stderr

ROUTES = frozenset({"web-proxy", "named"})


@pytest.mark.parametrize(
    ("line", "level", "route", "text"),
    [
        (
            "[NOTICE]   (41) : haproxy version is 2.6.12-1+deb12u4",
            "debug",
            None,
            "haproxy version is 2.6.12-1+deb12u4",
        ),
        (
            "[WARNING]  (43) : Proxy web-proxy-tunnel stopped (cumulated conns: FE: 0, BE: 0).",
            "debug",
            "web-proxy",
            "Proxy web-proxy-tunnel stopped (cumulated conns: FE: 0, BE: 0).",
        ),
        (
            "[WARNING]  (43) : named/api.test_443-1 changed its IP from (none) to 10.0.0.1 by"
            " dns/ns1.",
            "info",
            "named",
            "named/api.test_443-1 changed its IP from (none) to 10.0.0.1 by dns/ns1.",
        ),
        (  # haproxy 3.0's words for the same news
            "[WARNING]  (43) : named/origin.test_43911-1: IP changed from '(none)' to"
            " '127.0.0.1' by 'dns/ns1'.",
            "info",
            "named",
            "named/origin.test_43911-1: IP changed from '(none)' to '127.0.0.1' by 'dns/ns1'.",
        ),
        (
            "[WARNING]  (43) : Server named/10.0.0.1_443 is DOWN, reason: Layer4 timeout.",
            "warning",
            "named",
            "Server named/10.0.0.1_443 is DOWN, reason: Layer4 timeout.",
        ),
        (
            "[ALERT]    (41) : config : parsing [haproxy.cfg:9] : unknown keyword 'x' in"
            " 'frontend web-proxy'.",
            "error",
            None,
            "config : parsing [haproxy.cfg:9] : unknown keyword 'x' in 'frontend web-proxy'.",
        ),
        ("[WARNING]  (41) : Former worker (43) exited with code 0 (Exit)", "debug", None, None),
        ("something a Lua hook printed", "warning", None, "something a Lua hook printed"),
    ],
)
def test_levels_and_routes(line: str, level: str, route: str | None, text: str | None) -> None:
    parsed = parse_stderr(line + "\n")
    assert parsed.level == level
    assert parsed.route(ROUTES) == route
    if text is not None:
        assert parsed.text == text
