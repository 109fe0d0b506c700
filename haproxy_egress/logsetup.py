"""The supervisor's own log format: one line per record, text or JSON, on stderr."""

from __future__ import annotations

import json
import logging
import os
import select
import sys
import time

from haproxy_egress.settings import LogFormat


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = record.getMessage().replace("\n", " | ")  # one record, one line
        line = f"{ts}.{int(record.msecs):03d}Z haproxy-egress {record.levelname}: {msg}"
        if record.exc_info:
            line += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"))


# Linux writes up to PIPE_BUF bytes to a pipe in one piece: a line this long cannot be torn by
# another process writing the same pipe (haproxy's master and workers write their notices to
# the same stderr), so the pod log never shows half a supervisor line inside a haproxy line.
PIPE_BUF = 4096


def atomic_pieces(line: str, limit: int = PIPE_BUF) -> list[bytes]:
    """`line` as newline-terminated pieces of at most `limit` bytes each; a longer record is
    split into continued lines ("... [1/3]") rather than written in one tearable write."""
    data = line.encode("utf-8", "replace")
    if len(data) < limit:
        return [data + b"\n"]
    room = limit - 16  # for " [NN/NN]\n"
    chunks: list[bytes] = []
    text = data
    while text:
        cut = min(room, len(text))
        while cut < len(text) and cut > 0 and (text[cut] & 0xC0) == 0x80:
            cut -= 1  # never split a UTF-8 sequence
        chunks.append(text[:cut])
        text = text[cut:]
    n = len(chunks)
    return [c + f" [{i}/{n}]\n".encode() for i, c in enumerate(chunks, 1)]


class LineHandler(logging.Handler):
    """One write() per line, straight to the file descriptor: no buffered stream that could
    split a line over two writes."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            pieces = atomic_pieces(self.format(record))
            for piece in pieces:
                view = memoryview(piece)
                while view:
                    try:
                        view = view[os.write(self.fd, view) :]
                    except BlockingIOError:  # a non-blocking stderr: wait, do not drop
                        select.select([], [self.fd], [], 1.0)
        except Exception:
            self.handleError(record)


def configure(fmt: LogFormat, debug: bool = False) -> None:
    """Route every haproxy_egress logger to stderr in the chosen format."""
    handler = LineHandler(sys.stderr.fileno())
    handler.setFormatter(_JsonFormatter() if fmt is LogFormat.JSON else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # watchfiles logs every batch of changes at INFO; our own reload lines say what matters.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
