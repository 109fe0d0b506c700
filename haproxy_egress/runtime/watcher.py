"""Config directory change detection: posts ConfigChanged events, never touches processes.

Any filesystem event is only a hint. The watcher then reads one consistent snapshot (through
`..data` in the kubelet layout) and posts an event only when the content digest differs from
the last one it posted. A periodic poll backs up the event stream (inotify can overflow, and
a ConfigMap mount can be replaced wholesale).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import watchfiles

from haproxy_egress.background import Background
from haproxy_egress.config.sources import read_snapshot
from haproxy_egress.config.sources.configdir import secret_dirs
from haproxy_egress.config.sources.tlsfiles import watched_dirs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConfigChanged:
    """The config directory now holds content with this digest."""

    digest: str


class Watcher(Background):
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
        self._debounce_ms = max(1, int(debounce * 1000))
        self._poll = poll
        self._secrets: list[str] = []  # parent credentials dirs the config names
        super().__init__("config-watcher")

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

    def _paths(self) -> list[Path]:
        """The config directory, the proxy users' Secret mount (its `..data` swaps happen in
        the file's directory) and the parent credentials' Secrets; a directory that is missing
        is left to the poll."""
        paths = [self._directory]
        if self._users_file is not None and self._users_file.parent.is_dir():
            paths.append(self._users_file.parent)
        paths += [d for d in watched_dirs(self._tls_paths()) if d not in paths]
        paths += [Path(d) for d in self._secrets if Path(d).is_dir() and Path(d) not in paths]
        return paths

    def _run(self) -> None:
        # A change between the start-up compile and this watch raised no event: look once now.
        self._confirm()
        while not self._stop.is_set():
            if not self._directory.is_dir():
                # Missing directory: nothing to watch; the poll notices when it comes back.
                self._confirm()
                self._stop.wait(min(self._poll, 1.0))
                continue
            watching = self._paths()
            try:
                for _changes in watchfiles.watch(
                    *watching,
                    debounce=self._debounce_ms,
                    step=min(50, self._debounce_ms),
                    stop_event=self._stop,
                    rust_timeout=int(self._poll * 1000),
                    yield_on_timeout=True,  # an empty batch every `poll` seconds: the backstop
                    recursive=True,
                    watch_filter=None,  # kubelet names (..data, ..2026_...) matter here
                    ignore_permission_denied=True,
                    raise_interrupt=False,
                ):
                    self._confirm()
                    if not self._directory.is_dir():
                        break  # the watched inode is gone; watch the new one
                    if self._paths() != watching:
                        break  # the config names other Secrets (TLS, parent auth): watch those
            except (OSError, RuntimeError) as exc:
                log.warning("watching %s failed (%s); polling", self._directory, exc)
                self._stop.wait(min(self._poll, 1.0))
            # A watch that ended (directory replaced) is restarted by the loop.
            time.sleep(0.05)
