"""The diff of two compiled configurations: noop, runtime or reload, and what an edit denies."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from haproxy_egress.config.model import Config
from haproxy_egress.config.sources import load_snapshot
from haproxy_egress.config.sources.configdir import Snapshot
from haproxy_egress.config.users import hash_password
from haproxy_egress.haproxy.show import Session
from haproxy_egress.render.compiler import RenderOptions, render
from haproxy_egress.render.maps import pattern_files
from haproxy_egress.runtime.changes import (
    Kind,
    Plan,
    _changed_sections,
    _sections,
    _structural,
    plan,
    servers,
)

OPTIONS = RenderOptions(run_dir=Path("/run/haproxy-egress"))


@dataclass(frozen=True)
class Version:
    config: Config
    text: str
    maps: dict[str, str]
    tls_files: dict[str, str] = field(default_factory=dict)


def compiled(*routes: dict[str, Any], **doc: Any) -> Version:
    data = {"version": 1, "routes": list(routes), **doc}
    snapshot = Snapshot(Path("/cfg"), (("routes.yaml", yaml.safe_dump(data).encode()),))
    config = load_snapshot(snapshot, {})
    return Version(config, render(config, OPTIONS), pattern_files(config))


def db(**extra: Any) -> dict[str, Any]:
    return {
        "name": "db",
        "listen": "127.0.0.1:15432",
        "destinations": ["10.0.0.1:5432", "10.0.0.2:5432"],
        **extra,
    }


def web(**extra: Any) -> dict[str, Any]:
    return {"name": "web", "listen": 18080, "mode": "http", "destinations": ["10.1.0.1:80"]} | extra


def diff(old: Version, new: Version) -> Plan:
    return plan(old, new)


def test_added_destination_is_a_runtime_change_with_its_words() -> None:
    old = compiled(db(), web())
    new = compiled(db(destinations=["10.0.0.1:5432", "10.0.0.2:5432", "10.0.0.3:5432"]), web())
    p = diff(old, new)
    assert p.kind is Kind.RUNTIME
    assert [s.ref for s in p.add] == ["db/10.0.0.3_5432"]
    assert p.add[0].address == "10.0.0.3:5432"
    assert p.add[0].options == " check inter 2s rise 2 fall 3"
    assert p.remove == ()
    assert p.denies == ()
    assert p.summary() == "route db: destinations 2 → 3, applied at runtime; no reload"


def test_removed_destination_denies_only_its_sessions() -> None:
    p = diff(compiled(db()), compiled(db(destinations=["10.0.0.2:5432"])))
    assert p.kind is Kind.RUNTIME
    assert [s.ref for s in p.remove] == ["db/10.0.0.1_5432"]
    (deny,) = p.denies
    assert deny.covers(Session("0x1", "db", "10.0.0.1_5432", "127.0.0.1"))
    assert not deny.covers(Session("0x2", "db", "10.0.0.2_5432", "127.0.0.1"))
    assert not deny.covers(Session("0x3", "web", "10.0.0.1_5432", "127.0.0.1"))


def test_allow_from_edit_swaps_its_file_and_denies_clients_outside() -> None:
    old = compiled(db(allow_from=["127.0.0.0/8", "10.0.0.0/8"]))
    new = compiled(db(allow_from=["10.0.0.0/8"]))
    assert old.text == new.text  # only the ACL file differs
    p = diff(old, new)
    assert p.kind is Kind.RUNTIME
    assert p.files == (("allow-from.db.acl", "10.0.0.0/8\n"),)
    (deny,) = p.denies
    assert deny.covers(Session("0x1", "db", "s", "127.0.0.1"))
    assert not deny.covers(Session("0x1", "db", "s", "10.2.3.4"))
    assert deny.covers(Session("0x1", "db", "s", "::1"))  # v6 is outside a v4 list too
    # Widening a list denies nobody.
    assert diff(new, old).denies == ()


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        ({"listen": "127.0.0.1:15433"}, "frontend db changed beyond its servers"),
        ({"connect_timeout": "1s"}, "backend db changed beyond its servers"),
        ({"check": {"interval": "5s"}}, "server db/10.0.0.1_5432 changed its options"),
        ({"destinations": ["db.example.test:5432"]}, "resolvers dns added"),
    ],
)
def test_structural_edits_reload(edit: dict[str, Any], why: str) -> None:
    p = diff(compiled(db()), compiled(db(**edit)))
    assert p.kind is Kind.RELOAD
    assert p.why == why
    assert p.summary().endswith(f"; reload ({why})")


def test_added_and_removed_routes_reload_and_removal_denies_everything() -> None:
    both = compiled(db(), web())
    p = diff(both, compiled(db()))
    assert p.kind is Kind.RELOAD
    assert p.notes == ("route web removed",)
    (deny,) = p.denies
    assert deny.everything
    assert deny.covers(Session("0x1", "web", "<none>", "1.2.3.4"))
    added = diff(compiled(db()), both)
    assert added.kind is Kind.RELOAD
    assert added.denies == ()
    assert added.notes == ("route web added",)


def test_an_untouched_route_is_never_denied() -> None:
    p = diff(compiled(db(), web()), compiled(db(listen=15999), web()))
    assert [d.route for d in p.denies] == ["db"]


def test_comment_only_difference_is_a_noop() -> None:
    old = compiled(db(), web())
    new = Version(old.config, old.text.replace("# route db", "# route db (moved)"), old.maps)
    assert plan(old, new).kind is Kind.NOOP


def test_runtime_changes_off_reload() -> None:
    p = plan(compiled(db()), compiled(db(destinations=["10.0.0.9:1"])), runtime=False)
    assert p.kind is Kind.RELOAD
    assert "EGRESS_RUNTIME_CHANGES" in p.why


def _with_users(*lines: str) -> Version:
    route = {
        "name": "pxy",
        "listen": 13128,
        "mode": "proxy",
        "proxy_auth": "required",
        "policy": ["*"],
    }
    data = yaml.safe_dump({"version": 1, "routes": [route, db()]}).encode()
    users = ("EGRESS_PROXY_USERS_FILE (test)", "".join(f"{line}\n" for line in lines).encode())
    config = load_snapshot(Snapshot(Path("/cfg"), (("routes.yaml", data),), users=users), {})
    return Version(config, render(config, OPTIONS), pattern_files(config))


def test_proxy_users_apply_at_runtime_and_a_revoked_one_ends_the_routes_tunnels() -> None:
    alice, bob = hash_password("alice", "a", "00" * 8).line, hash_password("bob", "b", "11" * 8)
    old = _with_users(alice)
    added = diff(old, _with_users(alice, bob.line))
    assert added.kind is Kind.RUNTIME
    assert added.notes == ("proxy users 1 → 2",)
    assert [name for name, _ in added.files] == ["pxy.users.map"]
    assert added.denies == ()  # nobody lost access
    rekeyed = diff(old, _with_users(hash_password("alice", "new", "00" * 8).line))
    assert rekeyed.kind is Kind.RUNTIME
    (deny,) = rekeyed.denies
    assert (deny.route, deny.everything) == ("pxy", True)
    assert deny.covers(Session("0x1", "pxy", "pxy-tunnel/tunnel", "10.0.0.9"))
    assert not deny.covers(Session("0x2", "db", "db/10.0.0.1_5432", "10.0.0.9"))


GOLDEN_TEXTS = sorted(
    (Path(__file__).parent.parent.parent / "data" / "golden").glob("*/haproxy.cfg")
)


@pytest.mark.parametrize("path", GOLDEN_TEXTS, ids=lambda p: p.parent.name)
def test_servers_and_changed_sections_read_what_the_full_parse_reads(path: Path) -> None:
    """The fast paths (a regex scan for servers; only sections whose text differs parsed)
    agree with the section parser on every golden config and every pair of them."""
    text = path.read_text()
    sections = _sections(text)
    assert servers(text) == {s.ref: s for sec in sections.values() for s in sec.servers.values()}
    for other in GOLDEN_TEXTS:
        full = _structural(sections, _sections(other.read_text()))
        fast = _structural(*_changed_sections(text, other.read_text()))
        assert (bool(fast[0]), fast[1:]) == (bool(full[0]), full[1:])


@pytest.mark.parametrize("path", GOLDEN_TEXTS, ids=lambda p: p.parent.name)
def test_changed_sections_agree_with_the_full_parse_on_every_one_line_edit(path: Path) -> None:
    """Each line deleted, doubled or changed in turn: the sections around the difference
    decide as the whole texts do (at the start, the end and across section boundaries)."""
    lines = path.read_text().splitlines(keepends=True)
    text = "".join(lines)
    for i, line in enumerate(lines):
        for edited in (
            lines[:i] + lines[i + 1 :],
            lines[: i + 1] + lines[i:],
            [*lines[:i], line.rstrip("\n") + "x\n", *lines[i + 1 :]],
        ):
            other = "".join(edited)
            for a, b in ((text, other), (other, text)):
                full = _structural(_sections(a), _sections(b))
                fast = _structural(*_changed_sections(a, b))
                assert (bool(fast[0]), fast[1:]) == (bool(full[0]), full[1:]), (i, line)
