"""What the threads beside the loop read (`Running`) keeps only the running config: after a
change, the one it replaced (its whole haproxy.cfg text) is free."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import yaml

from haproxy_egress import cli, logsetup
from haproxy_egress.config.sources import LoadCache, load_snapshot
from haproxy_egress.config.sources.configdir import Snapshot
from haproxy_egress.render.pipeline import Compiled, compiled_text
from haproxy_egress.runtime.supervisor import Running
from tests.support import HAPROXY, free_port


def _compiled(name: str) -> Compiled:
    route = {"name": name, "listen": 20000, "destinations": ["192.0.2.1:443"]}
    data = yaml.safe_dump({"version": 1, "routes": [route]}).encode()
    config = load_snapshot(Snapshot(Path("/cfg"), (("a.yaml", data),)), {}, cache=LoadCache())
    return compiled_text(config, f"# the text of {name}\n", name)


def test_the_route_names_asked_before_a_change_do_not_keep_the_config_it_replaced() -> None:
    running = Running(_compiled("first"))
    assert running.route_names() == frozenset({"first"})
    gone = weakref.ref(running.compiled)
    running.compiled = _compiled("second")  # a runtime edit: no reload asks for names
    gc.collect()
    assert gone() is None
    assert running.route_names() == frozenset({"second"})


def test_the_entrypoint_keeps_no_reference_to_the_start_up_compile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run` hands its start-up compile to the supervisor and holds none itself: once the
    first edit replaces it, it is free (at 10,000 routes its 6 MB text stayed for good)."""
    config_dir = tmp_path / "cm"
    config_dir.mkdir()
    route = {"name": "web", "listen": free_port(), "destinations": ["192.0.2.1:443"]}
    (config_dir / "routes.yaml").write_text(yaml.safe_dump({"version": 1, "routes": [route]}))
    monkeypatch.setenv("EGRESS_CONFIG_DIR", str(config_dir))
    monkeypatch.setenv("EGRESS_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("EGRESS_LOG", "stdout")
    monkeypatch.setenv("EGRESS_HAPROXY_BIN", HAPROXY)
    monkeypatch.setattr(logsetup, "configure", lambda *_: None)  # pytest's logging stays

    class _Supervisor:
        """Holds the start-up compile as the real one does until the first edit replaces it."""

        def __init__(self, compiled: Compiled) -> None:
            self.compiled: Compiled | None = compiled

        def run(self) -> int:
            assert self.compiled is not None
            first = weakref.ref(self.compiled)
            self.compiled = None  # the first edit
            gc.collect()
            return 0 if first() is None else 1

    monkeypatch.setattr(cli, "assemble", lambda _s, _o, compiled: _Supervisor(compiled))
    assert cli.main(["run"]) == 0
