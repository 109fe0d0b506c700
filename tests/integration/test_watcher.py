"""The config watcher on a real filesystem with real watchfiles: what it sees, and when it looks.

Each watcher here polls only every 60 s, so a change seen within a test's wait was seen by an
event (or by the look the watcher takes when it sets a new watch), never by the poll.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

from haproxy_egress.config.sources import read_snapshot
from haproxy_egress.filewatch import FileWatch
from haproxy_egress.runtime.watcher import KUBELET_SETTLE_MS, ConfigChanged, Watcher
from tests.kubelet import ConfigMapVolume
from tests.support import wait_for

ROUTES = {"version": 1, "routes": [{"name": "a", "listen": 18001, "destination": "10.0.0.1:80"}]}


def _watcher(directory: Path, posted: queue.SimpleQueue[ConfigChanged]) -> Watcher:
    digest = read_snapshot(directory, None, ()).digest
    return Watcher(directory, posted.put, digest, debounce=0.3, poll=60.0)


def test_every_kubelet_swap_is_posted_once_with_its_digest(tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path / "cm")
    volume.write({"routes.yaml": ROUTES})
    posted: queue.SimpleQueue[ConfigChanged] = queue.SimpleQueue()
    watcher = _watcher(volume.directory, posted)
    watcher.start()
    try:
        for port in range(18002, 18022):
            edited = {"version": 1, "routes": [ROUTES["routes"][0] | {"listen": port}]}  # type: ignore[index]
            volume.write({"routes.yaml": edited})
            event = posted.get(timeout=30)
            assert event.inputs_digest == read_snapshot(volume.directory, None, ()).digest
        assert posted.empty()  # one swap, one event: the key symlinks and old dir add none
    finally:
        watcher.stop()


def test_a_kubelet_swap_is_looked_at_sooner_than_a_plain_edit(tmp_path: Path) -> None:
    """The swap is atomic (one rename, read through `..data`), so the watcher does not wait
    50 ms for its burst of events to end; a plain directory edited file by file still does."""
    volume = ConfigMapVolume(tmp_path / "cm")
    volume.write({"routes.yaml": ROUTES})
    plain = tmp_path / "plain"
    plain.mkdir()
    posted: queue.SimpleQueue[ConfigChanged] = queue.SimpleQueue()
    assert _watcher(volume.directory, posted)._settle_ms() == KUBELET_SETTLE_MS
    assert _watcher(plain, posted)._settle_ms() == 50
    short = Watcher(plain, posted.put, "", debounce=0.02, poll=60.0)
    assert short._settle_ms() == 20  # a debounce shorter than the step bounds it


def test_a_new_watch_starts_with_a_look(tmp_path: Path) -> None:
    """When the watched paths change (a Secret mount appeared), the old watch ends and a new
    one is set; a change in between raised no event, so the watcher looks once right away."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    looks: list[int] = []
    grown = threading.Event()

    def paths() -> list[Path]:
        return [first, second] if grown.is_set() else [first]

    def look() -> None:
        looks.append(len(looks))
        if len(looks) == 2:  # the look after the event below: from now on watch both
            grown.set()

    watch = FileWatch("test-watch", paths, look, debounce=0.05, poll=60.0, recursive=True)
    watch.start()
    try:
        wait_for(lambda: len(looks) == 1, timeout=30)  # the look before the first watch
        # Write until the event's look widens the paths (the first watch may not be set at the
        # first write); the writes stop there, 50 ms before the new watch is set.
        wait_for(lambda: grown.is_set() or (first / "x").write_text("1") < 0, timeout=30)
        # No event follows, and the poll is a minute away: only the new watch's look counts.
        wait_for(lambda: len(looks) >= 3, timeout=30)
        assert looks == [0, 1, 2]
    finally:
        watch.stop()
