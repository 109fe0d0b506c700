"""A daemon thread with a stop flag: the watchers' common start/stop."""

from __future__ import annotations

import threading


class Background:
    """Runs `_run` in a daemon thread until `stop()`; subclasses poll `self._stop`."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop and wait briefly for it (a no-op if it never started)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def _run(self) -> None:
        raise NotImplementedError
