"""The stats socket and the master CLI: one command in, haproxy's answer (text) out.

The answers are read by the typed parsers of `show.py` and `stat.py`; nothing else in the
package tree parses them."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from haproxy_egress.errors import HaproxyError

# The master CLI's prompt, e.g. "master> " or "master[ReloadFailed]> " (2.6 after a failed
# reload). In that state the master keeps the connection open after answering, so the master
# CLI is always spoken in prompt mode and an answer ends at the next prompt, not at EOF.
_MASTER_PROMPT = re.compile(rb"master(\[[A-Za-z]+\])?> $")
_RECV_SIZE = 1 << 18  # a large answer (`show stat`) in fewer system calls


@dataclass(frozen=True)
class CliSocket:
    """A unix-socket CLI (stats socket or master CLI): one command per connection."""

    path: Path
    timeout: float = 5.0
    master: bool = False  # the master CLI: prompt mode, answers end at the next prompt

    def command(self, line: str) -> str:
        """Send one command and read the whole answer; bounded by `timeout` overall."""
        # A bytearray grows in place: `bytes += chunk` copied the whole answer at every chunk,
        # ~1 GB of copying for the 13 MB `show stat` of 10,000 routes.
        data = bytearray()
        for chunk in self.stream(line):
            data += chunk
            if self.master and _answered(data):
                break
        text = data.decode("utf-8", "replace")
        if self.master:  # drop the prompts around the answer
            text = re.sub(r"^master(\[[A-Za-z]+\])?> ", "", text, flags=re.M)
        return text

    def stream(self, line: str) -> Iterator[bytes]:
        """Send one command and yield its answer as it arrives, bounded by `timeout` of
        waiting on haproxy overall (the master CLI's answer ends at its second prompt:
        `command` stops there). A reader can work on the start of a long answer (`show stat`)
        while haproxy writes the rest; the time it spends on a chunk is not haproxy's, and
        does not count."""
        deadline = time.monotonic() + self.timeout
        request = (f"prompt\n{line}\n" if self.master else f"{line}\n").encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.settimeout(self.timeout)
                sock.connect(str(self.path))
                sock.sendall(request)
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise HaproxyError(f"{self.path}: {line!r} timed out")
                    sock.settimeout(remaining)
                    chunk = sock.recv(_RECV_SIZE)
                    if not chunk:
                        return
                    handed = time.monotonic()
                    yield chunk
                    deadline += time.monotonic() - handed
            except (OSError, TimeoutError) as exc:
                raise HaproxyError(f"{self.path}: {line!r} failed: {exc}") from exc


def _answered(data: bytes | bytearray) -> bool:
    """Prompt mode: a first prompt, the answer, then a second prompt."""
    return bool(_MASTER_PROMPT.search(data)) and data.count(b"> ") >= 2
