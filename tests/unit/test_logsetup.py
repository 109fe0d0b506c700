"""The supervisor's log lines: each written whole, in pieces a pipe cannot tear."""

from __future__ import annotations

import logging
import os

from haproxy_egress.logsetup import PIPE_BUF, LineHandler, atomic_pieces


def test_short_line_is_one_piece() -> None:
    assert atomic_pieces("hello") == [b"hello\n"]


def test_long_line_is_split_into_numbered_lines_below_pipe_buf() -> None:
    line = "é" * 5000  # 10,000 bytes, multi-byte characters
    pieces = atomic_pieces(line)
    assert len(pieces) == 3
    assert all(len(p) <= PIPE_BUF and p.endswith(b"\n") for p in pieces)
    assert pieces[0].endswith(b" [1/3]\n")
    body = b"".join(p.rsplit(b" [", 1)[0] for p in pieces)
    assert body.decode("utf-8") == line  # nothing lost, no character split


def test_handler_writes_each_record_with_whole_lines() -> None:
    r, w = os.pipe()
    handler = LineHandler(w)
    handler.setFormatter(logging.Formatter("%(message)s"))
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "a %s", ("b",), None)
    handler.emit(record)
    os.close(w)
    assert os.read(r, 100) == b"a b\n"
    os.close(r)
