"""Files the live config loads from the run dir, written by the reload transaction only.

Lua hooks are content-addressed (`<sha256>.lua`): a candidate config and the live or
last-good config each find the very files they name, so staging a new one never changes a
file a running config loads. Map and ACL files keep one name each, so the runtime API can
update them in place: before `haproxy -c` only files no running config loads yet are written
(the candidate needs them); a file a worker uses changes only once the candidate passed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from haproxy_egress.errors import ConfigError, Problem
from haproxy_egress.render.compiler import write_atomic
from haproxy_egress.render.hooks import LUA_FILE, HookSet
from haproxy_egress.render.syslog import ClientCert


def stage(hooks: HookSet, lua_dir: Path) -> None:
    """Write each hook file to `<lua_dir>/<sha256>.lua` unless it is there already.

    Content addressing makes this safe while a live config runs: a name is only ever written
    with the content it names, so no file a running or last-good config loads changes.
    """
    directory = lua_dir
    for lua in hooks.files:
        target = directory / lua.file_name
        if target.exists():
            continue
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{lua.file_name}.{os.getpid()}"
        tmp.write_bytes(lua.content)
        os.chmod(tmp, 0o640)
        os.replace(tmp, target)


def referenced(texts: Sequence[str]) -> set[str]:
    """The content-addressed Lua file names some haproxy.cfg texts load."""
    names: set[str] = set()
    for text in texts:
        names.update(re.findall(r"/([0-9a-f]{64}\.lua)$", text, re.M))
    return names


def prune(lua_dir: Path, keep_texts: Sequence[str]) -> None:
    """Delete staged Lua files that none of `keep_texts` (live, last-good) loads any more."""
    directory = lua_dir
    if not directory.is_dir():
        return
    keep = referenced(keep_texts)
    for entry in directory.iterdir():
        if LUA_FILE.match(entry.name) and entry.name not in keep:
            entry.unlink(missing_ok=True)


def write_new_maps(maps_dir: Path, files: Mapping[str, str]) -> None:
    """Write the files no running config loads yet, for `haproxy -c` of a candidate; a file
    that exists keeps the running content until the candidate is installed (`write_maps`),
    so a rejected candidate changes nothing a worker uses."""
    for name, content in files.items():
        if not (maps_dir / name).exists():
            write_atomic(maps_dir / name, content, mode=0o600)


def write_maps(maps_dir: Path, files: Mapping[str, str]) -> None:
    """Make `maps_dir` hold exactly `files` (name → content); each file replaced atomically."""
    maps_dir.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        target = maps_dir / name
        if not target.exists() or target.read_text(encoding="utf-8") != content:
            write_atomic(target, content, mode=0o600)
    for entry in maps_dir.iterdir():
        if entry.is_file() and entry.name not in files and not entry.name.startswith("."):
            entry.unlink(missing_ok=True)


def stage_client_certs(certs: Sequence[ClientCert]) -> None:
    """Join each Secret's tls.crt and tls.key into the one PEM haproxy's `crt` reads (it looks
    for a key only in `<crt>.key`, not in a Secret's `tls.key`); private: mode 0600."""
    problems = []
    for cert in certs:
        try:
            parts = [(cert.secret_dir / name).read_bytes() for name in ("tls.crt", "tls.key")]
        except OSError as exc:
            reason = f"cannot read {exc.filename}: {exc.strerror} (a kubernetes.io/tls Secret?)"
            problems.append(Problem("logging", f"{cert.where}.client_cert_dir", reason))
            continue
        pem = b"\n".join(part.rstrip(b"\n") for part in parts) + b"\n"
        if cert.pem.exists() and cert.pem.read_bytes() == pem:
            continue
        cert.pem.parent.mkdir(parents=True, exist_ok=True)
        tmp = cert.pem.with_name(f".{cert.pem.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        os.replace(tmp, cert.pem)
    if problems:
        raise ConfigError(problems)
