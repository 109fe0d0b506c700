"""The one file-change mechanism: filesystem events as hints, and a poll as the backstop.

Both watchers use it: the config directory's (runtime/watcher.py) and the metrics endpoint's
web-config files (metrics/webwatch.py). An event is only a hint to look: each caller's `look`
reads what it watches and decides whether it really changed (a content digest, file
signatures that held still). A periodic look backs up the event stream: inotify can overflow,
and a kubelet mount can be replaced wholesale.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import watchfiles

from haproxy_egress.background import Background

__all__ = ["FileWatch"]

log = logging.getLogger(__name__)


class FileWatch(Background):
    """A daemon thread calling `look()` after filesystem events under `paths()`, and every
    `poll` seconds without them; an empty `paths()` (a directory not there yet) is polled."""

    def __init__(
        self,
        name: str,
        paths: Callable[[], list[Path]],
        look: Callable[[], None],
        *,
        debounce: float,
        poll: float,
        recursive: bool,
    ) -> None:
        self._watch_paths = paths
        self._look = look
        self._debounce_ms = max(1, int(debounce * 1000))
        self._poll = poll
        self._recursive = recursive
        super().__init__(name)

    def _run(self) -> None:
        # A change between the caller's load and this watch raised no event: look once now.
        self._look()
        # From here on every change is seen: the line an operator (or a test) can wait for.
        watched = ", ".join(str(p) for p in self._watch_paths()) or "nothing yet"
        log.info("%s: watching %s for changes", self._thread.name, watched)
        while not self._stop.is_set():
            watching = self._watch_paths()
            if not watching:
                # Nothing to watch: the poll notices when it comes (back).
                self._look()
                self._stop.wait(min(self._poll, 1.0))
                continue
            try:
                for _changes in watchfiles.watch(
                    *watching,
                    debounce=self._debounce_ms,
                    step=self._settle_ms(),
                    stop_event=self._stop,
                    rust_timeout=max(1, int(self._poll * 1000)),
                    yield_on_timeout=True,  # an empty batch every `poll` seconds: the backstop
                    recursive=self._recursive,
                    watch_filter=None,  # kubelet names (..data, ..2026_...) matter here
                    ignore_permission_denied=True,
                    raise_interrupt=False,
                ):
                    self._look()
                    if self._watch_paths() != watching:
                        break  # a watched inode is gone, or others are named: watch those
            except (OSError, RuntimeError) as exc:
                # The batch that failed may have held the change: the look below sees it.
                log.warning("watching %s failed (%s); polling", watching[0], exc)
                self._stop.wait(min(self._poll, 1.0))
            # A watch that ended (directory replaced, an error) is restarted by the loop; what
            # changed while no watch was set raised no event, so look once before it.
            time.sleep(0.05)
            if not self._stop.is_set():
                self._look()

    def _settle_ms(self) -> int:
        """How long events must stop before a look (watchfiles' step): a burst of writes to
        plain files ends when 50 ms pass without another (or the debounce, if shorter)."""
        return min(50, self._debounce_ms)
