"""Checks of the pod around the router before `run` starts anything: one clear error each.

Each failure is a SetupError naming the path or binary, the UID/GID the router runs as, and
the fix, instead of a PermissionError traceback from deep inside the first write.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from haproxy_egress.errors import SetupError
from haproxy_egress.settings import LogSink, Settings


def whoami() -> str:
    """'uid 1000680000 gid 0': what the kubelet's arbitrary UID turned out to be."""
    return f"uid {os.getuid()} gid {os.getgid()}"


def _owner(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return "unknown owner"
    return f"owner uid {st.st_uid} gid {st.st_gid}, mode {stat.S_IMODE(st.st_mode):04o}"


def require_binary(name: str, value: str, variable: str, alternative: str = "") -> None:
    """`value` (a name on PATH or a path) must be an executable."""
    if shutil.which(value) is None:
        other = f", or {alternative}" if alternative else ""
        raise SetupError(
            f"{name} not found: {variable}={value!r} is not an executable on PATH "
            f"({os.environ.get('PATH', '')}); install {name} or set {variable}{other}"
        )


def require_writable_dir(path: Path, variable: str) -> None:
    """`path` exists (or can be made) and this process can create files in it."""
    fix = f"mount a writable emptyDir at {variable} ({path})"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SetupError(
            f"{variable} {path} cannot be created ({exc.strerror}) as {whoami()}: {fix}"
        ) from None
    if not path.is_dir():
        raise SetupError(f"{variable} {path} is not a directory: {fix}")
    if not os.access(path, os.W_OK | os.X_OK):
        raise SetupError(
            f"{variable} {path} is not writable as {whoami()} ({_owner(path)}): {fix}, "
            "or run with a UID that may write there"
        )


def require_readable_dir(path: Path, variable: str) -> None:
    """A config dir, if it exists, must be readable (read-only is normal: a ConfigMap)."""
    if path.exists() and not os.access(path, os.R_OK | os.X_OK):
        raise SetupError(
            f"{variable} {path} is not readable as {whoami()} ({_owner(path)}): "
            "mount the ConfigMap with a defaultMode that others may read (e.g. 0444)"
        )


def check_tools(settings: Settings) -> None:
    """The binaries `check` and `run` need."""
    require_binary("haproxy", settings.haproxy_bin, "EGRESS_HAPROXY_BIN")
    require_readable_dir(settings.config_dir, "EGRESS_CONFIG_DIR")


def check_run(settings: Settings) -> None:
    """Everything `run` needs beyond `check`: socklog when it is the sink, a writable run dir."""
    check_tools(settings)
    if settings.log_sink is LogSink.SOCKLOG:
        require_binary(
            "socklog", settings.socklog_bin, "EGRESS_SOCKLOG_BIN", "set EGRESS_LOG=stdout"
        )
    require_writable_dir(settings.run_dir, "EGRESS_RUN_DIR")
