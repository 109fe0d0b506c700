"""A rendered haproxy.cfg text kept deflated while no change is using it.

The supervisor keeps the text of the running config between changes: the next edit splices
its route blocks, diffs against it and writes it back if an install fails. At 10,000 routes
that text is 5 MB of the supervisor's memory for as long as it runs; deflated it is about
15 times smaller. Deflating it after a change (zlib level 3: about 8 ms at 10,000 routes)
and inflating it when the next change first reads it (about 3 ms) costs far less than the
edit it serves, and nothing at all while the router is idle. A change starts inflating it in
a thread of its own as it begins (`unpack_soon`): zlib lets go of the interpreter while it
works, so on a second core the text is ready by the time the render needs it, after the
validation.
"""

from __future__ import annotations

import threading
import zlib

__all__ = ["PackedText"]

# At 10,000 routes level 3 deflates 15x in 8 ms (level 6: 16x in 18 ms); inflating takes
# about 3 ms whatever the level.
_LEVEL = 3


class PackedText:
    """One text: in memory while it is used, deflated after `pack()` until it is read again."""

    __slots__ = ("_lock", "_packed", "_size", "_text")

    def __init__(self, text: str) -> None:
        self._text: str | None = text
        self._packed: bytes | None = None
        self._size = 0  # of the text's bytes: inflated into one buffer of that size
        self._lock = threading.Lock()  # one inflate at a time; no pack in the middle of one

    @property
    def text(self) -> str:
        """The text, inflated (once) if it was packed; kept until the next `pack()`."""
        text = self._text
        if text is None:
            with self._lock:
                text = self._text
                if text is None:
                    packed = self._packed
                    assert packed is not None  # `pack` sets it before it lets go of the text
                    text = self._text = self._inflated(packed)
        return text

    def unpack_soon(self) -> None:
        """Start inflating the text in a thread of its own, if it is packed: a change that
        will read it has begun."""
        if self._text is None and not self._lock.locked():
            threading.Thread(target=self._inflate, name="inflate", daemon=True).start()

    def _inflate(self) -> None:
        _ = self.text

    def read(self) -> str:
        """The text, without keeping an inflated copy: for a reader that needs it once, at a
        time of its own (the late check), and must not leave it inflated until the next
        change packs it."""
        text = self._text
        if text is not None:
            return text
        packed = self._packed
        assert packed is not None
        return self._inflated(packed)

    def _inflated(self, packed: bytes) -> str:
        # Sized up front: inflating into a growing buffer took the interpreter's lock back for
        # every step (7 ms at 10,000 routes, twice that beside a busy thread); into one
        # buffer of the right size it takes 3 ms, all of it beside the other threads.
        return zlib.decompress(packed, zlib.MAX_WBITS, self._size).decode()

    def pack(self) -> None:
        """Let go of the text, keeping it deflated (deflated once: the text never changes)."""
        with self._lock:
            text = self._text
            if text is None:
                return
            if self._packed is None:
                data = text.encode()
                self._size = len(data)
                self._packed = zlib.compress(data, _LEVEL)
            self._text = None

    @property
    def packed(self) -> bool:
        """Whether the text is only held deflated now."""
        return self._text is None
