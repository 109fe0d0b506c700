"""Which edits of a route's parent proxies apply at runtime and which reload."""

from __future__ import annotations

from typing import Any

from haproxy_egress.runtime.changes import Kind, plan
from tests.unit.runtime.test_changes import compiled


def proxy(**parent: Any) -> dict[str, Any]:
    return {
        "name": "px",
        "listen": 18080,
        "mode": "proxy",
        "policy": ["*"],
        "parent": {"proxies": ["192.0.2.10:3128"], **parent},
    }


def test_direct_list_edit_swaps_a_map_at_runtime() -> None:
    edit = plan(compiled(proxy()), compiled(proxy(direct=["*.svc.cluster.local"])))
    assert edit.kind is Kind.RUNTIME
    assert [name for name, _ in edit.files] == ["px.direct-domains.map"]
    assert edit.notes == ("route px: parent changed",)
    assert not edit.denies


def test_parent_list_and_balance_edits_reload() -> None:
    for change in ({"proxies": ["192.0.2.10:3128", "192.0.2.11:3128"]}, {"balance": "roundrobin"}):
        edit = plan(compiled(proxy()), compiled(proxy(**change)))
        assert edit.kind is Kind.RELOAD
        assert edit.why in (
            "route px: parent proxies changed",
            "backend px-parent-tunnel changed beyond its servers",
        )


def test_adding_a_parent_reloads() -> None:
    route = proxy()
    del route["parent"]
    assert plan(compiled(route), compiled(proxy())).kind is Kind.RELOAD
