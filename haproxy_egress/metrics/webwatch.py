"""Watches the web-config file and the certificate files it names; reports settled changes.

A Secret volume is updated the kubelet's way (a new `..<timestamp>` dir, then the `..data`
symlink swapped in the mount's own directory), so events in the files' directories are the
hint to look (filewatch.py, the poll its backstop), and `stat()` through the key's symlink sees
a new inode at once. A change is reported once the files' signatures have held still for one
poll interval: two Secrets (one for the certificate, one for the CA) updated a moment apart
give one reload, not a failure and a reload. A few stat() calls per look cost nothing next to
a scrape.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from haproxy_egress.filewatch import FileWatch

__all__ = ["FileWatcher", "signature"]

logger = logging.getLogger(__name__)

Signature = tuple[tuple[str, int, int, int, int], ...]


def signature(files: Sequence[Path]) -> Signature:
    """(path, device, inode, mtime, size) per file, following symlinks; -1s when missing."""
    out = []
    for path in files:
        try:
            st = os.stat(path)
            out.append((str(path), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(path), -1, -1, -1, -1))
    return tuple(out)


class FileWatcher(FileWatch):
    """A daemon thread calling `changed()` when the files `files()` names have changed."""

    def __init__(
        self,
        files: Callable[[], Sequence[Path]],
        changed: Callable[[], None],
        interval: float,
    ) -> None:
        self._files = files
        self._changed = changed
        self._interval = max(0.02, interval)
        # The baseline is taken now, right after the caller loaded the files: a change made
        # before start() is still seen.
        self._seen = signature(self._files())
        self._changed_at: float | None = None  # when the signature last moved, unreported
        super().__init__(
            "web-config-watcher",
            self._directories,
            self._settle,
            debounce=self._interval / 2,
            poll=self._interval,
            recursive=False,  # a Secret's `..data` swap happens in the mount directory itself
        )

    def _directories(self) -> list[Path]:
        """The directories holding the files (where their Secret's swaps happen)."""
        dirs = dict.fromkeys(path.parent for path in self._files())
        return [d for d in dirs if d.is_dir()]

    def _settle(self) -> None:
        """Report a change once the signature has held still for one interval."""
        now = signature(self._files())
        if now != self._seen:
            self._seen = now  # changed; report once it holds still
            self._changed_at = time.monotonic()
            return
        if self._changed_at is None or time.monotonic() - self._changed_at < self._interval:
            return
        self._changed_at = None
        try:
            self._changed()
        except Exception:
            logger.exception("web-config reload failed unexpectedly")
        # The reload may name other files (a new cert path): start from them.
        self._seen = signature(self._files())
