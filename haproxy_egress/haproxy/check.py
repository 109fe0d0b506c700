"""`haproxy -c`: run it on a file, and read the alerts it prints about Lua files."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from haproxy_egress.errors import HaproxyCheckError, HaproxyError

CHECK_TIMEOUT = 120.0  # 10,000 routes check in a few seconds; this only catches a wedge


def check_argv(config_path: Path, haproxy_bin: str = "haproxy") -> list[str]:
    """`haproxy -c` of one file (not -q: it also silences the [ALERT] lines that say what is
    wrong)."""
    return [haproxy_bin, "-c", "-f", str(config_path)]


def check(
    config_path: Path, haproxy_bin: str = "haproxy", meanwhile: Callable[[], object] | None = None
) -> str:
    """Run `haproxy -c` on a file; return its warnings, raise HaproxyCheckError if rejected.
    `meanwhile` runs while haproxy checks (at 10,000 routes the check takes most of a second
    that work the reload needs anyway can use)."""
    try:
        proc = subprocess.Popen(
            check_argv(config_path, haproxy_bin),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    except FileNotFoundError:
        raise HaproxyError(f"haproxy binary not found: {haproxy_bin!r}") from None
    with proc:
        try:
            if meanwhile is not None:
                meanwhile()
            stdout, stderr = proc.communicate(timeout=CHECK_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise HaproxyError(f"haproxy -c took longer than {CHECK_TIMEOUT:.0f}s") from None
        except BaseException:
            proc.kill()
            proc.communicate()
            raise
    return check_output(proc.returncode, stdout + stderr)


def check_output(returncode: int, output: str) -> str:
    """`haproxy -c`'s output without its notices: the warnings when it passed; raises
    HaproxyCheckError (carrying the alerts) when it did not."""
    lines = output.splitlines()
    text = "\n".join(ln for ln in lines if "[NOTICE]" not in ln and "is valid" not in ln)
    if returncode != 0:
        raise HaproxyCheckError(text, [alert.text for alert in parse_alerts(text)])
    return text.replace("Warnings were found.", "").strip()


# `Lua runtime error: <path>:<line>: <msg>` and `error in Lua file '<path>': <path>:<line>: <msg>`
# Lua shortens long chunk names to "...<tail>", so a message may hold only the digest's end.
_LUA_AT = re.compile(r"([0-9a-f]{16,64})\.lua:([0-9]+): (.*)$")
_LUA_LOAD_ERROR = re.compile(r"error in Lua file '[^']*/([0-9a-f]{64})\.lua': (.*)$")
# An unknown action: `'http-request' expects ..., but got 'lua.x'` for http rules, and
# `'tcp-request content' expects ... in frontend 'f' (got 'lua.x')` for tcp ones (2.6 and 3.0).
_NOT_REGISTERED = re.compile(
    r"'(http-request|http-response|tcp-request)(?: content)?' expects .*"
    r"(?:, but got |\(got )'lua\.([a-z0-9_]+)'"
)
_NO_SERVICE = re.compile(r"use-service.*'lua\.([a-z0-9_]+)' unknown service")


@dataclass(frozen=True)
class LuaError:
    """A Lua error in a content-addressed file (`<sha256>.lua`)."""

    digest: str  # `lua_at`: the digest or its end (Lua shortens chunk names); else all of it
    message: str
    line: int | None = None


@dataclass(frozen=True)
class NotRegistered:
    """A rule `lua.<name>` whose action no loaded file registered for that keyword."""

    keyword: str  # http-request | http-response | tcp-request
    name: str


@dataclass(frozen=True)
class CheckAlert:
    """One `[ALERT]` line of `haproxy -c`, with what it says about Lua files (each None when
    the line does not say it). The caller decides which reading names one of its files."""

    text: str
    lua_at: LuaError | None = None  # an error at a line; `digest` may be only its end
    lua_load_error: LuaError | None = None  # a file that failed to load, whole digest
    not_registered: NotRegistered | None = None
    unknown_service: str | None = None  # `use-service lua.<name>`: no such service


def parse_alerts(output: str) -> list[CheckAlert]:
    """The `[ALERT]` lines of `haproxy -c`'s output, in order."""
    alerts = []
    for line in output.splitlines():
        if "[ALERT]" not in line:
            continue
        at = _LUA_AT.search(line)
        load = _LUA_LOAD_ERROR.search(line)
        action = _NOT_REGISTERED.search(line)
        service = _NO_SERVICE.search(line)
        alerts.append(
            CheckAlert(
                line,
                LuaError(at.group(1), at.group(3).strip(), int(at.group(2))) if at else None,
                LuaError(load.group(1), load.group(2).strip()) if load else None,
                NotRegistered(action.group(1), action.group(2)) if action else None,
                service.group(1) if service else None,
            )
        )
    return alerts
