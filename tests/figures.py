"""Figures of the reliability tests (cases tried, faults injected, requests sent), recorded
for docs/reliability.md.

Each test calls `record()` with what it measured. When `EGRESS_FIGURES` names a file, one JSON
line per call is appended to it, so a `.ci/run` (or a nightly run) leaves the numbers its table
is filled from; otherwise the figures only go to the test's log.
"""

from __future__ import annotations

import json
import logging
import os
import time

log = logging.getLogger(__name__)


def record(test: str, **figures: float | int | str) -> None:
    """Keep one test's figures (appended to $EGRESS_FIGURES as a JSON line when set)."""
    entry = {
        "test": test,
        "profile": os.environ.get("HYPOTHESIS_PROFILE", "ci"),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **figures,
    }
    log.info("figures: %s", entry)
    path = os.environ.get("EGRESS_FIGURES")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
