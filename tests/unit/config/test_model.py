"""The frozen model: field rules, normalisation, messages, cross-route checks, JSON Schema."""

from __future__ import annotations

import dataclasses
from typing import Any

import pydantic
import pytest

from haproxy_egress.config.addresses import parse_endpoint
from haproxy_egress.config.crossroute import Located, cross_route_problems
from haproxy_egress.config.document import Document, Resolvers, StatsPage
from haproxy_egress.config.problems import ProblemList, format_loc, validate
from haproxy_egress.config.route import Route
from haproxy_egress.config.scalars import Endpoint, Listen, format_duration
from haproxy_egress.errors import Problem
from tests.routes import route_from


def route(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "r", "listen": 8443, "destinations": ["192.0.2.1:443"]}
    return {**base, **fields}


def problems(data: dict[str, Any], model: type[Any] = Route) -> list[str]:
    with pytest.raises(ProblemList) as info:
        validate(model, data, "routes.yaml", "routes[0]")
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(
    ("text", "ms"),
    [("5s", 5000), ("500ms", 500), ("1h", 3_600_000), ("2m", 120_000), ("1d", 86_400_000)],
)
def test_duration(text: str, ms: int) -> None:
    assert route_from(route(connect_timeout=text)).connect_timeout == ms


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5", "needs a unit: 5s, 5ms"),
        (5, "needs a unit"),
        ("5 s", "must be a duration"),
        ("5sec", "must be a duration"),
        ("25d", "out of range 1ms..24d"),
        ("0s", "out of range"),
        ("1500us", "whole number of milliseconds"),
        (True, "must be a duration"),
    ],
)
def test_duration_refused(text: object, message: str) -> None:
    (line,) = problems(route(idle_timeout=text))
    assert line.startswith("routes.yaml: routes[0].idle_timeout: ")
    assert message in line


@pytest.mark.parametrize(("ms", "text"), [(1, "1ms"), (1500, "1500ms"), (60_000, "1m"), (0, "0d")])
def test_format_duration(ms: int, text: str) -> None:
    assert format_duration(ms) == text


def test_route_normalises_and_defaults() -> None:
    r = route_from(
        route(
            name="github-api",
            listen="[::]:8443",
            destinations=[
                "API.Github.test:443",
                "[2001:db8::7]:443",
                {"host": "x.test", "port": "80"},
            ],
            allow_from=["10.128.0.0/14", "2001:db8::/32"],
            source="192.0.2.11",
        )
    )
    assert [d.hostport for d in r.destinations] == [
        "api.github.test:443",
        "[2001:db8::7]:443",
        "x.test:80",
    ]
    assert [d.host for d in r.named_destinations] == ["api.github.test", "x.test"]
    assert r.destinations[1].server_name == "2001-db8--7_443"
    assert r.listen.bind == "[::]:8443"
    assert r.listen.is_v6
    assert (r.mode, r.balance, r.connect_timeout, r.idle_timeout) == (
        "tcp",
        "roundrobin",
        5000,
        3_600_000,
    )
    assert r.check.enabled
    assert r.check.interval == 2000
    assert str(r.source) == "192.0.2.11"
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.name = "other"  # type: ignore[misc]


def test_check_shorthand_and_http_path() -> None:
    assert not route_from(route(check=False)).check.enabled
    r = route_from(route(mode="http", check={"http_path": "/healthz?x=1"}))
    assert r.check.http_path == "/healthz?x=1"
    (line,) = problems(route(check={"http_path": "/healthz"}))
    assert line == "routes.yaml: routes[0]: check.http_path needs mode: http"


@pytest.mark.parametrize(
    "text",
    [
        "192.0.2.1:443",
        "10.0.0.1:1",
        "255.255.255.255:65535",
        "192.0.2.1:0",
        "192.0.2.1:65536",
        "192.0.2.1:0443",
        "192.0.2.01:443",
        "192.0.2.1 :443",
        " 192.0.2.1:443",
        "192.0.2:443",
        "1.2.3.4.5:443",
        "192.0.2.1%eth0:443",
        "192.0.2.1:",
        "192.0.2.1",
        "[::1]:443",
        "host.test:443",
    ],
)
def test_endpoint_fast_path_agrees_with_the_parser(text: str) -> None:
    """The IPv4 shortcut of `Endpoint` gives what parse_endpoint gives, or the same error."""
    try:
        host, port = parse_endpoint(text, default_port=None)
        expected: object = Endpoint(host=host, port=port)
    except ValueError as exc:
        expected = str(exc)
    try:
        got: object = validate(Route, route(destinations=[text]), "r.yaml").destinations[0]
    except ProblemList as exc:
        got = exc.problems[0].message
    assert got == expected


def test_datapath_knobs_belong_to_tcp_and_http_routes() -> None:
    r = route_from(route(splice="both", log=False))
    assert (r.splice, r.log) == ("both", False)
    assert (route_from(route()).splice, route_from(route()).log) == (
        "response",
        True,
    )
    proxy = {"name": "p", "listen": 3128, "mode": "proxy", "policy": ["*"]}
    (line,) = problems({**proxy, "log": False})
    assert line.endswith("splice and log: false apply to tcp and http routes, not proxy")
    (line,) = problems(route(log=False, hooks=["audit"]))
    assert line.endswith("log: false would drop the audit hook's lines")
    (line,) = problems(route(splice="request"))
    assert "routes[0].splice" in line


@pytest.mark.parametrize(
    ("fields", "where", "message"),
    [
        ({"name": "Bad Name"}, "routes[0].name", "invalid value 'Bad Name': must match"),
        ({"name": "a" * 64}, "routes[0].name", "must match"),
        ({"listen": 70000}, "routes[0].listen", "port 70000 out of range 1..65535"),
        ({"listen": True}, "routes[0].listen", "must be a port or 'ADDRESS:PORT'"),
        ({"listen": [1]}, "routes[0].listen", "must be a port or 'ADDRESS:PORT'"),
        ({"mode": "udp"}, "routes[0].mode", "'tcp', 'http', 'proxy' or 'tls'"),
        ({"balance": "random"}, "routes[0].balance", "'roundrobin', 'first', 'leastconn'"),
        ({"destinations": []}, "routes[0].destinations", "must not be empty"),
        ({"destinations": ["a.test"]}, "routes[0].destinations[0]", "missing port in 'a.test'"),
        ({"destinations": [443]}, "routes[0].destinations[0]", "must be 'HOST:PORT'"),
        (
            {"destinations": ["a.test:1", "A.test:1"]},
            "routes[0].destinations",
            "destination a.test:1 is listed twice",
        ),
        ({"source": "192.0.2.300"}, "routes[0].source", "valid IPv4 or IPv6 address"),
        ({"source": "fe80::1%eth0"}, "routes[0].source", "zone ids"),
        ({"allow_from": ["10.0.0.1/8"]}, "routes[0].allow_from[0]", "network"),
        ({"allow_from": ["::/0%x"]}, "routes[0].allow_from[0]", "zone ids"),
        ({"maxconn": 0}, "routes[0].maxconn", "greater than or equal to 1"),
        ({"dns_slots": 65}, "routes[0].dns_slots", "less than or equal to 64"),
        ({"proxy_protocol": "v3"}, "routes[0].proxy_protocol", "'v1' or 'v2'"),
        ({"check": {"rise": 0}}, "routes[0].check.rise", "greater than or equal to 1"),
        ({"colour": "red"}, "routes[0].colour", "unknown field"),
    ],
)
def test_route_field_problems(fields: dict[str, Any], where: str, message: str) -> None:
    lines = problems(route(**fields))
    assert any(line.startswith(f"routes.yaml: {where}: ") and message in line for line in lines), (
        lines
    )


def test_every_problem_reported_at_once() -> None:
    lines = problems(route(name="X", listen=0, mode="udp", destinations=["a.test"]))
    assert len(lines) == 4
    assert {line.split(": ")[1] for line in lines} == {
        "routes[0].name",
        "routes[0].listen",
        "routes[0].mode",
        "routes[0].destinations[0]",
    }


def test_listen_overlaps() -> None:
    def listen(spec: str | int) -> Listen:
        return route_from(route(listen=spec)).listen

    assert listen(80).overlaps(listen("127.0.0.1:80"))
    assert listen("0.0.0.0:80").overlaps(listen("127.0.0.1:80"))
    assert listen("[::]:80").overlaps(listen("127.0.0.2:80"))
    assert listen("127.0.0.1:80").overlaps(listen("127.0.0.1:80"))
    assert not listen("127.0.0.1:80").overlaps(listen("127.0.0.2:80"))
    assert not listen(80).overlaps(listen(81))
    assert str(listen(80)) == "80"
    assert str(listen("127.0.0.1:80")) == "127.0.0.1:80"


def test_cross_route_problems() -> None:
    def located(name: str, listen: str | int, i: int) -> Located:
        return Located(route_from(route(name=name, listen=listen)), "a.yaml", f"routes[{i}]", i + 3)

    items = [located("a", 80, 0), located("a", 81, 1), located("c", "127.0.0.1:80", 2)]
    found = cross_route_problems(items, {"metrics endpoint": Listen(port=81)})
    assert [str(p) for p in found] == [
        "a.yaml:4: routes[1].name: route name 'a' is already used by a.yaml: routes[0]",
        "a.yaml:4: routes[1].listen: listen 81 collides with the metrics endpoint",
        "a.yaml:5: routes[2].listen: listen 127.0.0.1:80 is already used by route 'a' "
        "(a.yaml: routes[0])",
    ]


def test_resolvers() -> None:
    r = Resolvers.model_validate({"nameservers": ["10.0.0.10", "[2001:db8::53]", "127.0.0.1:5353"]})
    assert [n.hostport for n in r.nameservers] == [
        "10.0.0.10:53",
        "[2001:db8::53]:53",
        "127.0.0.1:5353",
    ]
    assert (r.hold_valid, r.hold_obsolete, r.timeout, r.retries) == (10_000, 30_000, 1000, 3)
    with pytest.raises(ProblemList, match="nameserver must be an IP address"):
        validate(Resolvers, {"nameservers": ["dns.test"]}, "a.yaml", "resolvers")


def test_stats_page_auth_pair_and_safe_password() -> None:
    assert (
        StatsPage.model_validate({"port": 1936, "user": "admin", "password": "s3cr3t!"}).user
        == "admin"
    )
    with pytest.raises(pydantic.ValidationError, match="needs STATS_USER and STATS_PASSWORD"):
        StatsPage.model_validate({"port": 1936, "user": "admin"})
    with pytest.raises(pydantic.ValidationError, match="needs STATS_USER and STATS_PASSWORD"):
        StatsPage.model_validate({"port": 1936})
    for bad in ("with space", "quote'", 'dq"', "hash#", "back\\slash", "$HOME", "new\nline"):
        with pytest.raises(pydantic.ValidationError):
            StatsPage.model_validate({"port": 1936, "user": "admin", "password": bad})


def test_endpoint_properties() -> None:
    v6 = Endpoint(host="2001:db8::1", port=443)
    name = Endpoint(host="a.test", port=80)
    assert (v6.hostport, str(v6.ip), v6.server_name) == (
        "[2001:db8::1]:443",
        "2001:db8::1",
        "2001-db8--1_443",
    )
    assert (name.hostport, name.ip, name.server_name) == ("a.test:80", None, "a.test_80")


def test_format_loc() -> None:
    assert format_loc(("routes", 1, "listen")) == "routes[1].listen"
    assert format_loc(("routes", 0, "destinations", 2, "function-before[_endpoint()]")) == (
        "routes[0].destinations[2]"
    )
    assert format_loc(()) == ""


def test_problem_format() -> None:
    assert (
        str(Problem("routes.yaml", "routes[1].listen", "bad", 7))
        == "routes.yaml:7: routes[1].listen: bad"
    )
    assert str(Problem("SERVICE_DEST", "item 2", "bad")) == "SERVICE_DEST: item 2: bad"
    assert str(Problem("SERVICE_TCP_PORT", "", "bad")) == "SERVICE_TCP_PORT: bad"


def test_json_schema_covers_the_public_shape() -> None:
    schema = Document.model_json_schema()
    assert set(schema["properties"]) == {"version", "defaults", "resolvers", "logging", "routes"}
    assert set(schema["$defs"]["SyslogTarget"]["properties"]) >= {
        "address",
        "transport",
        "ca_file",
        "client_cert_dir",
        "format",
    }
    route_props = schema["$defs"]["Route"]["properties"]
    for field in (
        "name",
        "listen",
        "mode",
        "destinations",
        "balance",
        "allow_from",
        "source",
        "connect_timeout",
        "idle_timeout",
        "maxconn",
        "check",
        "proxy_protocol",
    ):
        assert field in route_props
    assert schema["$defs"]["Route"]["additionalProperties"] is False
