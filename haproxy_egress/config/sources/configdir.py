"""One consistent snapshot of a mounted ConfigMap directory (or a plain directory).

The kubelet publishes a ConfigMap as `..2026_11_26_10_00_00.123/` with `..data` pointing at it
and each key a symlink `key -> ..data/key`; it swaps versions by renaming a new `..data_tmp`
symlink over `..data`. Resolving `..data` once and reading every key from that one target
directory gives a snapshot that cannot mix two versions.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

from haproxy_egress.config.sources.tlsfiles import TlsFile, read_tls_files
from haproxy_egress.errors import Problem
from haproxy_egress.settings import PROXY_USERS_ENV

MAX_KEY_BYTES = 1 << 20  # a whole ConfigMap is limited to 1 MiB by the API server
_ATTEMPTS = 5  # a swap can delete the old version mid-read; read the new one instead
# Kubernetes' rule for ConfigMap keys; anything else (a newline in a file name of a plain
# directory, say) could end up in a comment of haproxy.cfg, so it is refused outright.
KEY_NAME = re.compile(r"^[-._a-zA-Z0-9]{1,253}\Z")


@dataclass(frozen=True)
class Snapshot:
    """The visible keys of the config directory at one instant, and their digest."""

    directory: Path
    files: tuple[tuple[str, bytes], ...]  # sorted by key name
    exists: bool = True
    problems: tuple[Problem, ...] = ()
    # The proxy users file (a Secret mounted elsewhere), read in the same pass: a rotated
    # Secret is a change like an edited key. (source for problems, content)
    users: tuple[str, bytes] | None = None
    # The parent proxies' credentials (`parent.credentials_dir` Secrets), read in the same pass
    # for the same reason: `<dir>/username`, `<dir>/password` → content.
    secrets: tuple[tuple[str, bytes], ...] = ()
    # The TLS material the routes name (Secrets mounted elsewhere), read in the same pass: a
    # rotated certificate is a change too (config/sources/tlsfiles.py).
    tls: tuple[TlsFile, ...] = ()

    @cached_property
    def digest(self) -> str:
        """sha256 over names and contents: equal digests mean nothing to reload (hashed once:
        a change asks several times, and at 10,000 routes the keys are 7 MB)."""
        h = hashlib.sha256()
        for name, data in (*self.files, *((self.users,) if self.users else ()), *self.secrets):
            h.update(f"{name}\0{len(data)}\0".encode())
            h.update(data)
        for f in self.tls:
            h.update(f"tls\0{f.path}\0{f.error}\0{len(f.data or b'')}\0".encode())
            h.update(f.data or b"")
        return h.hexdigest()

    @property
    def tls_paths(self) -> tuple[str, ...]:
        """The TLS files this snapshot read."""
        return tuple(f.path for f in self.tls)

    def with_tls(self, paths: Iterable[str]) -> Snapshot:
        """This snapshot with exactly these TLS files, read now unless already read."""
        wanted = tuple(sorted(set(paths)))
        if wanted == self.tls_paths:
            return self
        return replace(self, tls=read_tls_files(wanted))


def _read_dir(directory: Path) -> tuple[list[tuple[str, bytes]], list[Problem]]:
    files: list[tuple[str, bytes]] = []
    problems: list[Problem] = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue  # kubelet internals (..data, ..2026_...) and editor swap files
        if not entry.is_file():  # follows the per-key symlinks
            continue
        if not KEY_NAME.match(entry.name):
            problems.append(Problem(repr(entry.name), "", "not a valid ConfigMap key name"))
            continue
        size = entry.stat().st_size
        if size > MAX_KEY_BYTES:
            problems.append(
                Problem(entry.name, "", f"{size} bytes is more than a ConfigMap may hold (1 MiB)")
            )
            continue
        try:
            with open(entry.path, "rb") as fh:
                files.append((entry.name, fh.read(MAX_KEY_BYTES + 1)))
        except PermissionError as exc:
            problems.append(Problem(entry.name, "", f"cannot be read: {exc.strerror}"))
    return files, problems


def read_users(path: Path) -> tuple[tuple[str, bytes] | None, tuple[Problem, ...]]:
    """The proxy users file: (source, content), or a problem saying why it cannot be read."""
    source = f"{PROXY_USERS_ENV} ({path})"
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_KEY_BYTES + 1)
    except OSError as exc:
        return None, (Problem(source, "", f"cannot be read: {exc.strerror}"),)
    if len(data) > MAX_KEY_BYTES:
        return None, (Problem(source, "", "more than a Secret may hold (1 MiB)"),)
    return (source, data), ()


# `credentials_dir: /path` in a YAML key: found in the text, before parsing, so a rotated
# Secret changes the digest like an edited key (the loader reads the same paths again).
_CREDENTIALS_DIR = re.compile(rb"""^[ \t-]*credentials_dir:[ \t]*["']?(/[A-Za-z0-9._/-]+)""", re.M)
SECRET_KEYS = ("username", "password")


def secret_dirs(snapshot: Snapshot) -> list[str]:
    """The parent credentials directories the snapshot's YAML keys name."""
    found: list[str] = []
    for name, data in snapshot.files:
        # The plain search first: the pattern, tried at each line of 7 MB, cost 20 ms an edit.
        if name.endswith((".yaml", ".yml")) and b"credentials_dir" in data:
            found += [m.decode() for m in _CREDENTIALS_DIR.findall(data)]
    return sorted(set(found))


def read_secret(directory: str) -> tuple[bytes, bytes] | str:
    """A basic-auth Secret's username and password, or why they cannot be read."""
    values: list[bytes] = []
    for key in SECRET_KEYS:
        try:
            with open(Path(directory) / key, "rb") as fh:
                values.append(fh.read(4096))
        except OSError as exc:
            return f"{directory}/{key} cannot be read: {exc.strerror}"
    return values[0], values[1]


def _with_secrets(snapshot: Snapshot) -> Snapshot:
    secrets: list[tuple[str, bytes]] = []
    for directory in secret_dirs(snapshot):
        found = read_secret(directory)
        if isinstance(found, tuple):
            secrets += [(f"{directory}/{k}", v) for k, v in zip(SECRET_KEYS, found, strict=True)]
    return replace(snapshot, secrets=tuple(secrets))


def read_snapshot(
    directory: Path, users_file: Path | None = None, tls_paths: Iterable[str] = ()
) -> Snapshot:
    """Read every visible key once, through `..data` when the kubelet layout is present;
    the proxy users file, when there is one; the TLS files the routes name; and the parent
    credentials the keys name."""
    return _with_secrets(_read_snapshot(directory, users_file, tls_paths))


def _read_snapshot(
    directory: Path, users_file: Path | None = None, tls_paths: Iterable[str] = ()
) -> Snapshot:
    tls_wanted = tuple(tls_paths)
    if tls_wanted:
        return _read_snapshot(directory, users_file).with_tls(tls_wanted)
    if users_file is not None:
        users, unreadable = read_users(users_file)
        snapshot = _read_snapshot(directory)
        return replace(snapshot, users=users, problems=(*snapshot.problems, *unreadable))
    if not directory.is_dir():
        return Snapshot(directory, (), exists=False)
    for attempt in range(_ATTEMPTS):
        data_link = directory / "..data"
        target = data_link.resolve() if data_link.is_symlink() else directory
        try:
            files, problems = _read_dir(target)
        except FileNotFoundError:
            if attempt + 1 == _ATTEMPTS:
                raise
            continue  # the version we resolved was swapped out and deleted: read the new one
        except PermissionError as exc:
            problem = Problem(str(directory), "", f"cannot be read: {exc.strerror}")
            return Snapshot(directory, (), True, (problem,))
        if target is not directory and data_link.resolve() != target:
            # Swapped while we read: the old version's files are being deleted, so what we
            # listed may lack some keys. A torn read would drop routes; read the new one.
            if attempt + 1 == _ATTEMPTS:
                raise FileNotFoundError(f"{directory}: swapped {_ATTEMPTS} times while read")
            continue
        return Snapshot(directory, tuple(files), True, tuple(problems))
    raise AssertionError("unreachable")
