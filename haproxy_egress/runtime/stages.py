"""Where a change's time went, stage by stage, for its log line (and the scale benchmark)."""

from __future__ import annotations

import time

__all__ = ["Stages"]


class Stages:
    """Laps of one change: `lap(name)` ends the stage that started at the previous lap."""

    def __init__(self) -> None:
        self.laps: list[tuple[str, float]] = []
        self._mark = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps.append((name, now - self._mark))
        self._mark = now

    def __str__(self) -> str:
        """e.g. "read 1 ms, validate 12 ms, render 20 ms, diff 3 ms, apply 6 ms"."""
        return ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in self.laps)
