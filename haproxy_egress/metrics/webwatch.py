"""Polls the web-config file and the certificate files it names; reports settled changes.

A Secret volume is updated the kubelet's way (a new `..<timestamp>` dir, then the `..data`
symlink swapped), so `stat()` through the key's symlink sees a new inode at once. A change is
reported once the files' signatures have stayed the same for one more poll: two Secrets (one
for the certificate, one for the CA) updated a moment apart give one reload, not a failure
and a reload. A few stat() calls per poll cost nothing next to a scrape.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from haproxy_egress.background import Background

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


class FileWatcher(Background):
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
        super().__init__("web-config-watcher")
        # The baseline is taken now, right after the caller loaded the files: a change made
        # before start() is still seen.
        self._baseline = signature(self._files())

    def _run(self) -> None:
        seen = self._baseline
        pending: Signature | None = None
        while not self._stop.wait(self._interval):
            now = signature(self._files())
            if pending is not None and now == pending:
                pending = None
                try:
                    self._changed()
                except Exception:
                    logger.exception("web-config reload failed unexpectedly")
                # The reload may name other files (a new cert path): start from them.
                seen = signature(self._files())
            elif now != seen:
                pending = now  # changed; report once it holds still for one more poll
                seen = now
            else:
                pending = None
