"""The TLS material routes name (client certificate Secrets, CA bundles, CRLs), read as inputs.

These files are part of the snapshot the watcher compares, like the ConfigMap keys: a rotated
Secret is a change. A Secret mount is a kubelet directory (`..data` → `..2026_…/`, one
symlink per key), swapped whole; every file of one directory is read through one resolved
`..data`, so a certificate and its key always come from the same version of the Secret.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MAX_FILE_BYTES", "TlsFile", "read_tls_files", "watched_dirs"]

MAX_FILE_BYTES = 1 << 20  # a Secret holds at most 1 MiB
_ATTEMPTS = 3  # a swap can delete the version being read; then read the new one


@dataclass(frozen=True)
class TlsFile:
    """One file as read: its content, or why it could not be read."""

    path: str  # as the route names it
    data: bytes | None
    error: str = ""


def _read(path: Path) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError("more than a Secret may hold (1 MiB)")
    return data


def _read_dir(directory: Path, names: list[str]) -> list[TlsFile]:
    for attempt in range(_ATTEMPTS):
        link = directory / "..data"
        base = link.resolve() if link.is_symlink() else directory
        out: list[TlsFile] = []
        swapped = False
        for name in names:
            shown = str(directory / name)
            try:
                out.append(TlsFile(shown, _read(base / name)))
            except FileNotFoundError as exc:
                if base != directory and attempt + 1 < _ATTEMPTS and not base.exists():
                    swapped = True  # this version was swapped out and deleted: read the new one
                    break
                out.append(TlsFile(shown, None, exc.strerror or "not found"))
            except (OSError, ValueError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                out.append(TlsFile(shown, None, f"cannot be read: {reason}"))
        if not swapped:
            return out
    raise AssertionError("unreachable")


def read_tls_files(paths: Iterable[str]) -> tuple[TlsFile, ...]:
    """Read each path once, grouped by directory (one `..data` per directory); sorted by path."""
    by_dir: dict[Path, list[str]] = {}
    for text in sorted(set(paths)):
        path = Path(text)
        by_dir.setdefault(path.parent, []).append(path.name)
    files = [f for directory, names in by_dir.items() for f in _read_dir(directory, names)]
    return tuple(sorted(files, key=lambda f: f.path))


def watched_dirs(paths: Iterable[str]) -> list[Path]:
    """The directories whose events may change these files (the kubelet swaps `..data` in
    the file's own directory)."""
    return sorted({Path(p).parent for p in paths if os.path.isdir(Path(p).parent)})
