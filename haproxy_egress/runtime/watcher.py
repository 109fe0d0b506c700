"""Config directory change detection: posts ConfigChanged events, never touches processes.

Any filesystem event is only a hint (filewatch.py, with its periodic poll as the backstop). The
watcher then reads one consistent snapshot (through `..data` in the kubelet layout) and posts
an event only when the content digest differs from the last one it posted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from haproxy_egress.config.sources import read_snapshot
from haproxy_egress.config.sources.configdir import secret_dirs
from haproxy_egress.config.sources.tlsfiles import watched_dirs
from haproxy_egress.filewatch import FileWatch

log = logging.getLogger(__name__)

# How long the watcher waits after the last filesystem event of a kubelet `..data` swap before
# it reads the new snapshot (the bench subtracts it, like the debounce it replaces there).
KUBELET_SETTLE_MS = 10


@dataclass(frozen=True)
class ConfigChanged:
    """The inputs (config directory, users file, TLS files) now have this digest."""

    inputs_digest: str


class Watcher(FileWatch):
    """Watches the config directory (and the proxy users file) in a daemon thread and calls
    `post` on real content changes."""

    def __init__(
        self,
        directory: Path,
        post: Callable[[ConfigChanged], None],
        initial_digest: str,
        *,
        debounce: float = 0.3,
        poll: float = 10.0,
        users_file: Path | None = None,
        tls_paths: Callable[[], tuple[str, ...]] = tuple,
    ) -> None:
        self._directory = directory
        self._users_file = users_file
        # The TLS files the running config names (they change with the config): a rotated
        # Secret is a change like an edited key.
        self._tls_paths = tls_paths
        self._post = post
        self._digest = initial_digest
        self._secrets: list[str] = []  # parent credentials dirs the config names
        super().__init__(
            "config-watcher",
            self._paths,
            self._confirm,
            debounce=debounce,
            poll=poll,
            recursive=True,
        )

    def _confirm(self) -> None:
        """Read a snapshot; post its digest if it is new."""
        try:
            snapshot = read_snapshot(self._directory, self._users_file, self._tls_paths())
        except OSError as exc:
            log.warning("cannot read config directory %s: %s", self._directory, exc)
            return
        digest = snapshot.digest
        self._secrets = secret_dirs(snapshot)
        if digest != self._digest:
            self._digest = digest
            self._post(ConfigChanged(digest))

    def _settle_ms(self) -> int:
        """The kubelet's swap is one rename and the look reads through `..data`, so nothing
        is gained by waiting for its burst to end: look 10 ms after the last event."""
        if (self._directory / "..data").is_symlink():
            return min(KUBELET_SETTLE_MS, super()._settle_ms())
        return super()._settle_ms()

    def _paths(self) -> list[Path]:
        """The config directory, the proxy users' Secret mount (its `..data` swaps happen in
        the file's directory) and the parent credentials' Secrets; nothing while the config
        directory is missing (the poll notices when it comes back)."""
        if not self._directory.is_dir():
            return []
        paths = [self._directory]
        if self._users_file is not None and self._users_file.parent.is_dir():
            paths.append(self._users_file.parent)
        paths += [d for d in watched_dirs(self._tls_paths()) if d not in paths]
        paths += [Path(d) for d in self._secrets if Path(d).is_dir() and Path(d) not in paths]
        return paths
