"""The haproxy program: its command lines, its version, its pid file, its memory."""

from __future__ import annotations

import subprocess
from pathlib import Path


def master_argv(haproxy_bin: str, config_path: Path, master_socket: Path) -> list[str]:
    """haproxy in master-worker mode, in the foreground, with its master CLI socket.

    -W: master-worker; -db: stay in the foreground (we are its parent, and PID 1 of the pod);
    -S: the master CLI, where `reload` and `show proc` are spoken.
    """
    return [
        haproxy_bin,
        "-W",
        "-db",
        "-S",
        f"{master_socket},mode,600",
        "-f",
        str(config_path),
    ]


def running_configs(proc: Path = Path("/proc")) -> list[Path]:
    """The config files of haproxy masters started as `master_argv` builds them, among the
    processes this user may see: where each router on this machine keeps its run dir."""
    found = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone, or not ours to read
        args = [a.decode(errors="replace") for a in argv if a]
        if "-W" in args and "-S" in args and "-f" in args and args.index("-f") + 1 < len(args):
            found.add(Path(args[args.index("-f") + 1]))
    return sorted(found)


def version(haproxy_bin: str = "haproxy") -> str:
    """haproxy's version string, e.g. '2.6.12-1+deb12u4'; "unknown" when it does not run
    (the binary is checked where it is started, with a clearer error)."""
    try:
        out = subprocess.run(
            [haproxy_bin, "-v"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return parse_version(out)


def parse_version(text: str) -> str:
    """The version in `haproxy -v`'s first line ("HAProxy version 2.6.12-1+deb12u4 2023/..."),
    or "unknown"."""
    first = text.splitlines()[0] if text else ""
    parts = first.split()
    return parts[2] if len(parts) > 2 else "unknown"


def pid_file_pids(pid_file: Path) -> list[int]:
    """The pids haproxy wrote to its pid file (`pidfile` in the global section), one per
    line; none when the file is absent or unreadable."""
    try:
        text = pid_file.read_text()
    except OSError:
        return []
    return [int(word) for word in text.split() if word.isdigit()]


def rss_bytes(pid: int) -> int:
    """A process's resident memory (VmRSS), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return 0
