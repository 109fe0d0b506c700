"""Address notations: ports, hosts, endpoints and listen specs, and the messages users see."""

from __future__ import annotations

import pytest

from haproxy_egress.config.addresses import (
    normalize_host,
    parse_endpoint,
    parse_listen,
    parse_network,
    parse_port,
)


@pytest.mark.parametrize(
    ("text", "port"), [("1", 1), ("443", 443), (" 8443 ", 8443), ("65535", 65535), (80, 80)]
)
def test_parse_port_accepts(text: str | int, port: int) -> None:
    assert parse_port(text) == port


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "out of range 1..65535"),
        ("70000", "70000 out of range 1..65535"),
        (0, "out of range"),
        ("-1", "must be a number"),
        ("44 3", "must be a number"),
        ("0x50", "must be a number"),
        ("", "must be a number"),
        ("١٢", "must be a number"),  # Arabic-Indic digits are digits to str.isdigit, not to us
        (True, "must be a number"),
    ],
)
def test_parse_port_refuses(text: str | int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_port(text)


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("API.GitHub.test.", "api.github.test"),
        ("a-b.c", "a-b.c"),
        ("198.51.100.7", "198.51.100.7"),
        ("[2001:DB8::0001]", "2001:db8::1"),
        ("2001:db8:0::1", "2001:db8::1"),
        ("xn--bcher-kva.test", "xn--bcher-kva.test"),
    ],
)
def test_normalize_host(text: str, host: str) -> None:
    assert normalize_host(text) == host


@pytest.mark.parametrize(
    "text",
    [
        "300.1.1.1",  # looks like IPv4: reported as a bad IP, not accepted as a name
        "-a.test",
        "a-.test",
        "a_b.test",
        "a b",
        "a\nb",
        "a#b",
        "[::g]",
        "[fe80::1%eth0]",
        "fe80::1%eth0\nserver x",
        "x" * 64 + ".test",
        ".".join(["abcdefghi"] * 26),  # 259 characters
        "",
    ],
)
def test_normalize_host_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a valid|zone"):
        normalize_host(text)


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("a.test:443", None, ("a.test", 443)),
        ("a.test", 443, ("a.test", 443)),
        ("[2001:db8::1]:8443", None, ("2001:db8::1", 8443)),
        ("[2001:db8::1]", 53, ("2001:db8::1", 53)),
        ("2001:db8::1", 53, ("2001:db8::1", 53)),
        ("10.0.0.1:5353", 53, ("10.0.0.1", 5353)),
    ],
)
def test_parse_endpoint(text: str, default: int | None, expected: tuple[str, int]) -> None:
    assert parse_endpoint(text, default) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a.test", "missing port"),
        (":443", "missing host"),
        ("[2001:db8::1", "missing ']'"),
        ("[2001:db8::1]x", "unexpected text after"),
        ("a.test:99999", "out of range"),
        ("a.test:http", "must be a number"),
        ("2001:db8::1:443", "missing port"),  # ambiguous without brackets: no port is read
    ],
)
def test_parse_endpoint_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_endpoint(text, None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (8443, (None, 8443)),
        ("8443", (None, 8443)),
        (":8443", (None, 8443)),
        ("*:8443", (None, 8443)),
        ("127.0.0.1:8443", ("127.0.0.1", 8443)),
        ("[::]:8443", ("::", 8443)),
        ("[::1]:80", ("::1", 80)),
    ],
)
def test_parse_listen(value: str | int, expected: tuple[str | None, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("localhost:80", "not a valid IP address"),
        ("127.0.0.1", "missing port"),
        ("[::1]", "missing port"),
        ("[::1%lo]:80", "zone"),
        (70000, "out of range"),
        (True, "must be a port"),
        (1.5, "must be a port"),
    ],
)
def test_parse_listen_refuses(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_listen(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["0.0.0.0/\n", "10.0.0.0/\t8", "::/\r"])
def test_a_bad_prefix_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(ValueError, match="out of range") as refused:
        parse_network(text)
    assert "\n" not in str(refused.value)
    assert "\r" not in str(refused.value)
