"""A ConfigMap volume exactly as the kubelet lays it out and updates it.

Layout: `..<timestamp>/` holds the real files, `..data -> ..<timestamp>`, and each key is a
symlink `key -> ..data/key`. An update writes a new timestamped directory, points a new
`..data_tmp` symlink at it, renames `..data_tmp` over `..data` (the atomic step), fixes the
key symlinks (adds new keys, removes dropped ones) and deletes the old directory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

import yaml


def _content(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return yaml.safe_dump(value, sort_keys=False).encode()


class ConfigMapVolume:
    """A directory updated only the way the kubelet's atomic writer does it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._serial = 0

    def _new_version_dir(self) -> Path:
        self._serial += 1
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
        path = self.directory / f"..{stamp}.{os.getpid()}{self._serial:06d}"
        path.mkdir()
        return path

    def write(self, keys: Mapping[str, object]) -> None:
        """Publish a new version holding exactly `keys` (dict values are dumped as YAML)."""
        version = self._new_version_dir()
        for name, value in keys.items():
            (version / name).write_bytes(_content(value))
        data = self.directory / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        tmp = self.directory / "..data_tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(version.name)
        os.rename(tmp, data)  # the atomic swap
        for name in keys:
            link = self.directory / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
        for entry in self.directory.iterdir():
            if not entry.name.startswith("..") and entry.is_symlink() and entry.name not in keys:
                entry.unlink()
        if old is not None:
            old_dir = self.directory / old
            for f in old_dir.iterdir():
                f.unlink()
            old_dir.rmdir()
