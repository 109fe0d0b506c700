"""The pure compile: load → validate → render, with the pattern and TLS files the text loads.

`Compiled` is what every later stage works on: `check`, `render` and `diff` print it, and the
reload transaction (runtime/reload.py) checks, installs and applies it. Nothing here writes
anything or speaks to haproxy.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from haproxy_egress.config.document import Config
from haproxy_egress.config.sources import Snapshot, load_snapshot, read_inputs, reserved_listeners
from haproxy_egress.config.tlsmaterial import RouteTls, load_material, material_paths_of
from haproxy_egress.errors import ConfigError, Problem
from haproxy_egress.render import hooks
from haproxy_egress.render.compiler import SHARED_BLOCKS, RenderOptions, render
from haproxy_egress.render.maps import pattern_files
from haproxy_egress.render.packed import PackedText
from haproxy_egress.render.stages import Stages
from haproxy_egress.render.syslog import failover_problems
from haproxy_egress.render.tls import staged_files
from haproxy_egress.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Compiled:
    """A validated configuration and the haproxy.cfg text it renders to."""

    config: Config
    # The text (`text`), kept deflated between changes (`pack`).
    packed: PackedText
    inputs_digest: str  # of the inputs' snapshot (what the watcher compares)
    hooks: hooks.HookSet = hooks.EMPTY  # the Lua files the text loads (staged in the run dir)
    # The pattern files the text loads (name → content, under RunDir.maps): allow_from ACLs
    # (render/acls.py) and the policy routes' lists (render/maps.py).
    maps: Mapping[str, str] = field(default_factory=dict)
    # The TLS-originating routes' checked material (config/tlsmaterial.py).
    tls: tuple[RouteTls, ...] = ()

    @property
    def text(self) -> str:
        """The rendered haproxy.cfg."""
        return self.packed.text

    @property
    def tls_files(self) -> dict[str, str]:
        """The TLS files the text loads (name → content, under RunDir.tls)."""
        return staged_files(self.tls)

    @cached_property
    def config_digest(self) -> str:
        """sha256 of the rendered haproxy.cfg (the `digest` label of config_info)."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    def unpack_soon(self) -> None:
        """A change has begun: start inflating the texts it will read (this config's, which
        it diffs, and the block cache's, which its render splices) beside its validation."""
        self.packed.unpack_soon()
        SHARED_BLOCKS.unpack_soon()

    def pack(self) -> None:
        """A change is done with this config's text (and the block cache with the last
        render's): keep them deflated until the next change reads them."""
        _ = self.config_digest  # made while the text is at hand
        self.packed.pack()
        SHARED_BLOCKS.pack()


def compiled_text(
    config: Config,
    text: str,
    inputs_digest: str,
    *,
    hook_set: hooks.HookSet = hooks.EMPTY,
    maps: Mapping[str, str] | None = None,
    tls: tuple[RouteTls, ...] = (),
) -> Compiled:
    """A `Compiled` of a freshly rendered `text`, sharing its holder with the block cache."""
    return Compiled(config, SHARED_BLOCKS.holder(text), inputs_digest, hook_set, maps or {}, tls)


def compile_snapshot(
    settings: Settings, options: RenderOptions, snapshot: Snapshot, stages: Stages | None = None
) -> Compiled:
    """Validate and render one snapshot; raises ConfigError naming every problem."""
    stages = stages or Stages()
    if not snapshot.exists and settings.config_dir != Settings.config_dir:
        # The default directory may legitimately be absent (env-only config); an explicitly
        # configured one that is missing is a mistake, or a mount that vanished.
        raise ConfigError([Problem(str(settings.config_dir), "", "directory does not exist")])
    config = load_snapshot(snapshot, settings.route_env, reserved_listeners(settings))
    stages.lap("validate")
    if not config.routes:
        where = str(settings.config_dir)
        raise ConfigError(
            [Problem(where, "", "no routes: add a YAML key with routes, or set SERVICE_* env")]
        )
    failovers = failover_problems(config.logging, options.haproxy_version)
    if failovers:
        where = str(settings.config_dir)
        raise ConfigError([Problem(where, path, message) for path, message in failovers])
    # The TLS files this config names: read now if the snapshot was taken for other ones
    # (a route added or its Secret moved), so the digest covers exactly what is loaded.
    snapshot = snapshot.with_tls(material_paths_of(config))
    material, problems = load_material(config, snapshot.tls, time.time())
    if problems:
        raise ConfigError(problems)
    for m in material:
        if m.settings.insecure_skip_verify:
            # Loud on every load: verification is off only because the route says so.
            log.warning(
                "route %s: insecure_skip_verify: the destination's certificate and name are "
                "NOT verified",
                m.route,
            )
    hook_set = hooks.resolve(config, snapshot.files)
    text = render(config, options, hooks=hook_set)
    maps = pattern_files(config)
    stages.lap("render")
    return compiled_text(config, text, snapshot.digest, hook_set=hook_set, maps=maps, tls=material)


def compile_current(settings: Settings, options: RenderOptions) -> Compiled:
    """Read the config directory and environment now and render; raises ConfigError."""
    return compile_snapshot(settings, options, read_inputs(settings))
