"""Where the files shipped beside the code live: the Jinja2 template and the Lua hooks.

In a wheel they are package data (`haproxy_egress/templates`, `haproxy_egress/lua`); in a source
checkout (editable install, tests) they are the top-level `templates/` and `lua/` directories.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent  # haproxy_egress/ (this file is in render/)


def shipped_dir(name: str) -> Path:
    """The installed copy of a shipped directory, else the source checkout's."""
    installed = _PACKAGE / name
    if installed.is_dir():
        return installed
    return _PACKAGE.parent / name


def template_dir() -> Path:
    """Directory holding haproxy.cfg.j2."""
    return shipped_dir("templates")


def lua_dir() -> Path:
    """Directory holding the shipped Lua hooks."""
    return shipped_dir("lua")
