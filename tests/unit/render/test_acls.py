"""allow_from files: one per distinct list (haproxy -c finds pattern files by a list walk, so
one per route was quadratic), and which list edits that keeps runtime-applicable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from haproxy_egress.config.sources import load_snapshot
from haproxy_egress.config.sources.configdir import Snapshot
from haproxy_egress.render.acls import allow_from_files, render_acls
from haproxy_egress.render.compiler import RenderOptions, render
from haproxy_egress.render.maps import pattern_files
from haproxy_egress.runtime.changes import Kind, plan


class Version:
    def __init__(self, doc: dict[str, Any]) -> None:
        data = yaml.safe_dump(doc).encode()
        self.config = load_snapshot(Snapshot(Path("/cfg"), (("r.yaml", data),)), {})
        self.text = render(self.config, RenderOptions(run_dir=Path("/run/haproxy-egress")))
        self.maps = pattern_files(self.config)
        self.tls_files: dict[str, str] = {}


def _doc(shared: list[str], own: dict[str, list[str]] | None = None) -> dict[str, Any]:
    routes = [
        {"name": name, "listen": 20000 + i, "destinations": [f"10.9.0.{i + 1}:80"]}
        | ({"allow_from": (own or {})[name]} if name in (own or {}) else {})
        for i, name in enumerate(["c", "a", "b", "d"])
    ]
    return {"version": 1, "defaults": {"allow_from": shared}, "routes": routes}


def test_routes_with_one_list_share_one_file_named_after_the_first() -> None:
    v = Version(_doc(["10.0.0.0/8"], {"d": ["192.0.2.0/24"]}))
    assert allow_from_files(v.config) == {
        "a": "allow-from.a.acl",
        "b": "allow-from.a.acl",
        "c": "allow-from.a.acl",
        "d": "allow-from.d.acl",
    }
    assert render_acls(v.config) == {
        "allow-from.a.acl": "10.0.0.0/8\n",
        "allow-from.d.acl": "192.0.2.0/24\n",
    }
    assert v.text.count("allow-from.a.acl") == 3


def test_editing_a_shared_list_is_runtime_and_splitting_a_group_reloads() -> None:
    old = Version(_doc(["10.0.0.0/8"]))
    shared_edit = plan(old, Version(_doc(["10.0.0.0/8", "172.16.0.0/12"])))
    assert shared_edit.kind is Kind.RUNTIME
    assert shared_edit.files == (("allow-from.a.acl", "10.0.0.0/8\n172.16.0.0/12\n"),)
    split = plan(old, Version(_doc(["10.0.0.0/8"], {"b": ["192.0.2.0/24"]})))
    assert split.kind is Kind.RELOAD
