"""Proxy users: the credentials file, its located problems, the routes that need it, and the
group lookup maps that must choose exactly what `policy.select_group` chooses."""

from __future__ import annotations

import io
import ipaddress
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haproxy_egress import cli
from haproxy_egress.config import policy
from haproxy_egress.config.addresses import parse_ip
from haproxy_egress.config.sources import load_snapshot, read_snapshot
from haproxy_egress.config.sources.configdir import Snapshot
from haproxy_egress.config.users import SCHEME, hash_password, parse_users
from haproxy_egress.errors import ConfigError
from haproxy_egress.render.maps import NONE, _member_entries
from haproxy_egress.settings import PROXY_USERS_ENV

SOURCE = f"{PROXY_USERS_ENV} (/secret/users)"
ROUTE = """\
    routes:
      - name: pxy
        listen: 127.0.0.1:3128
        mode: proxy
        clients:
          - {name: ops, users: [alice], policy: ['*']}
        policy: ['example.com']
    """


def _snapshot(routes: str, users: bytes | None) -> Snapshot:
    files = (("routes.yaml", textwrap.dedent(routes).encode()),)
    return Snapshot(Path("/cfg"), files, users=(SOURCE, users) if users is not None else None)


def _problems(routes: str, users: bytes | None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_snapshot(_snapshot(routes, users), {})
    return [str(p) for p in info.value.problems]


def test_a_hash_verifies_its_password_only() -> None:
    user = hash_password("alice", "s3cret:with:colons")
    assert user.verify("s3cret:with:colons")
    assert not user.verify("s3cret")
    assert user.line.startswith(f"alice:{SCHEME}")
    assert parse_users(user.line.encode(), SOURCE) == ({"alice": user}, [])
    assert hash_password("alice", "x").salt != hash_password("alice", "x").salt  # fresh salts


def test_every_bad_line_is_reported_with_its_line() -> None:
    good = hash_password("bob", "pw").line
    data = "\n".join(
        [
            "# comment",
            good,
            "alice",
            "alice:$apr1$abc$def",
            "bad name:" + good.split(":", 1)[1],
            good,
            f"carol:{SCHEME}XYZ$" + "0" * 64,
            "",
        ]
    ).encode()
    users, problems = parse_users(data, SOURCE)
    assert list(users) == ["bob"]
    assert [str(p) for p in problems] == [
        f"{SOURCE}:3: expected NAME:$egress-sha256$SALT$DIGEST",
        f"{SOURCE}:4: user 'alice': unsupported hash (expected {SCHEME}SALT$DIGEST; make one "
        "with `haproxy-egress hash-password`)",
        f"{SOURCE}:5: user name 'bad name' must match ^[A-Za-z0-9._@-]{{1,64}}$",
        f"{SOURCE}:6: user 'bob' is listed twice",
        f"{SOURCE}:7: user 'carol': the salt must be 16-64 lower-case hex digits and the "
        "digest 64 (SHA-256)",
    ]
    assert [str(p) for p in parse_users(b"\xff", SOURCE)[1]] == [f"{SOURCE}: not UTF-8 text"]


def test_a_route_that_asks_for_credentials_needs_the_users_file() -> None:
    assert _problems(ROUTE, None) == [
        "routes.yaml:2: routes[0]: route 'pxy' asks for proxy credentials: set "
        f"{PROXY_USERS_ENV} to the users file (a mounted Secret, docs/policy.md)"
    ]
    required = ROUTE.rstrip(" ") + "        proxy_auth: required\n"
    assert any("routes[0].proxy_auth: route 'pxy' asks" in p for p in _problems(required, None))
    config = load_snapshot(_snapshot(ROUTE, hash_password("alice", "pw").line.encode()), {})
    assert [u.name for u in config.proxy_users] == ["alice"]
    # A bad users file fails the whole config, with the file's own problem only.
    assert _problems(ROUTE, b"alice\n") == [f"{SOURCE}:1: expected NAME:$egress-sha256$SALT$DIGEST"]


def test_users_and_proxy_auth_are_for_proxy_routes_and_a_group_needs_someone() -> None:
    tls = """\
        routes:
          - {name: t, listen: 8443, mode: tls, proxy_auth: required, policy: ['*']}
        """
    assert any("proxy_auth needs mode: proxy" in p for p in _problems(tls, b""))
    nobody = ROUTE.replace("users: [alice], ", "")
    assert any("a client group needs `from`" in p for p in _problems(nobody, b""))


def test_an_unreadable_users_file_is_a_located_problem(tmp_path: Path) -> None:
    (tmp_path / "routes.yaml").write_text(textwrap.dedent(ROUTE))
    snapshot = read_snapshot(tmp_path, tmp_path / "missing")
    assert [str(p) for p in snapshot.problems] == [
        f"{PROXY_USERS_ENV} ({tmp_path / 'missing'}): cannot be read: No such file or directory"
    ]
    users = tmp_path / "users"
    users.write_text(hash_password("alice", "a").line + "\n")
    first = read_snapshot(tmp_path, users).digest
    users.write_text(hash_password("alice", "b").line + "\n")
    assert read_snapshot(tmp_path, users).digest != first  # a rotation is a change


def test_hash_password_prints_a_line_and_keeps_the_password_off_stdout(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(["hash-password", "alice"]) == 0
    out, err = capsys.readouterr()
    password = err.split(": ", 1)[1].strip()
    (user,) = parse_users(out.encode(), "stdout")[0].values()
    assert user.verify(password)
    assert password not in out
    monkeypatch.setattr("sys.stdin", io.StringIO("given\n"))
    assert cli.main(["hash-password", "bob", "--stdin"]) == 0
    out, err = capsys.readouterr()
    assert parse_users(out.encode(), "stdout")[0]["bob"].verify("given")
    assert err == ""
    assert cli.main(["hash-password", "no spaces"]) == 2


NETS = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "192.0.2.0/24", "::/0", "2001:db8::/32"]
CLIENTS = ["10.1.2.3", "10.1.9.9", "10.9.9.9", "192.0.2.7", "198.51.100.1", "2001:db8::1", "::1"]
USERS = ["alice", "bob", "carol"]


@st.composite
def _groups(draw: st.DrawFn) -> list[policy.Group]:
    count = draw(st.integers(1, 5))
    groups = []
    for i in range(count):
        sources = draw(st.lists(st.sampled_from(NETS), max_size=2, unique=True))
        users = draw(st.frozensets(st.sampled_from(USERS), max_size=2))
        nets = tuple(ipaddress.ip_network(n) for n in sources)
        groups.append(policy.Group(f"g{i}", (), nets, True, users))
    groups.append(policy.Group("default", ()))
    return groups


def _lookup(groups: list[policy.Group], client: str, user: str | None) -> str:
    """What the proxy does with the two maps: longest prefix, then `label/user`, `label/`."""
    sources, members = _member_entries(groups)
    address = ipaddress.ip_address(client)
    if address.version == 4:  # the keys are IPv6: IPv4 is looked up in its mapped form
        address = ipaddress.ip_address(f"::ffff:{client}")
    best = max(
        (ipaddress.ip_network(k) for k, _ in sources if address in ipaddress.ip_network(k)),
        key=lambda n: n.prefixlen,
    )
    label = dict(sources)[str(best)]
    table = dict(members)
    if user is not None and f"{label}/{user}" in table:
        return table[f"{label}/{user}"]
    return table[f"{label}/"]


@given(_groups(), st.sampled_from(CLIENTS), st.sampled_from([None, *USERS]))
def test_the_member_maps_choose_what_select_group_chooses(
    groups: list[policy.Group], client: str, user: str | None
) -> None:
    chosen = policy.select_group(groups, parse_ip(client), user)
    assert _lookup(groups, client, user) == (chosen.name if chosen else NONE)
