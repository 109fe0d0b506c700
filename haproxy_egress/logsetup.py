"""The supervisor's own log format: one line per record, text or JSON, on stderr."""

from __future__ import annotations

import json
import logging
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


def configure(fmt: LogFormat, debug: bool = False) -> None:
    """Route every haproxy_egress logger to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt is LogFormat.JSON else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # watchfiles logs every batch of changes at INFO; our own reload lines say what matters.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
