"""Every haproxy fact in one place: command lines, `haproxy -c`, the CLI sockets."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from haproxy_egress.errors import HaproxyCheckError, HaproxyError

CHECK_TIMEOUT = 120.0  # 10,000 routes check in a few seconds; this only catches a wedge


def check_argv(config_path: Path, haproxy_bin: str = "haproxy") -> list[str]:
    """`haproxy -c` of one file (not -q: it also silences the [ALERT] lines that say what is
    wrong)."""
    return [haproxy_bin, "-c", "-f", str(config_path)]


def check_verdict(returncode: int, output: str) -> str:
    """What `haproxy -c` said: its warnings, or HaproxyCheckError if it refused the file."""
    lines = output.splitlines()
    text = "\n".join(ln for ln in lines if "[NOTICE]" not in ln and "is valid" not in ln)
    if returncode != 0:
        raise HaproxyCheckError(text)
    return text.replace("Warnings were found.", "").strip()


def check(config_path: Path, haproxy_bin: str = "haproxy") -> str:
    """Run `haproxy -c` on a file; return its warnings, raise HaproxyCheckError if rejected."""
    try:
        proc = subprocess.run(
            check_argv(config_path, haproxy_bin),
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise HaproxyError(f"haproxy binary not found: {haproxy_bin!r}") from None
    except subprocess.TimeoutExpired:
        raise HaproxyError(f"haproxy -c took longer than {CHECK_TIMEOUT:.0f}s") from None
    return check_verdict(proc.returncode, proc.stdout + proc.stderr)


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


def version(haproxy_bin: str = "haproxy") -> str:
    """haproxy's version string, e.g. '2.6.12-1+deb12u4'."""
    out = subprocess.run(
        [haproxy_bin, "-v"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    first = out.splitlines()[0] if out else ""
    parts = first.split()
    return parts[2] if len(parts) > 2 else "unknown"


# The master CLI's prompt, e.g. "master> " or "master[ReloadFailed]> " (2.6 after a failed
# reload). In that state the master keeps the connection open after answering, so the master
# CLI is always spoken in prompt mode and an answer ends at the next prompt, not at EOF.
_MASTER_PROMPT = re.compile(rb"master(\[[A-Za-z]+\])?> $")


@dataclass(frozen=True)
class CliSocket:
    """A unix-socket CLI (stats socket or master CLI): one command per connection."""

    path: Path
    timeout: float = 5.0
    master: bool = False  # the master CLI: prompt mode, answers end at the next prompt

    def command(self, line: str) -> str:
        """Send one command and read the whole answer; bounded by `timeout` overall."""
        deadline = time.monotonic() + self.timeout
        request = (f"prompt\n{line}\n" if self.master else f"{line}\n").encode()
        data = b""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.settimeout(self.timeout)
                sock.connect(str(self.path))
                sock.sendall(request)
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise HaproxyError(f"{self.path}: {line!r} timed out")
                    sock.settimeout(remaining)
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                    if self.master and _answered(data):
                        break
            except (OSError, TimeoutError) as exc:
                raise HaproxyError(f"{self.path}: {line!r} failed: {exc}") from exc
        text = data.decode("utf-8", "replace")
        if self.master:  # drop the prompts around the answer
            text = re.sub(r"^master(\[[A-Za-z]+\])?> ", "", text, flags=re.M)
        return text


def _answered(data: bytes) -> bool:
    """Prompt mode: a first prompt, the answer, then a second prompt."""
    return bool(_MASTER_PROMPT.search(data)) and data.count(b"> ") >= 2


@dataclass(frozen=True)
class Proc:
    """One line of the master's `show proc`."""

    kind: str  # master | worker
    pid: int
    reloads: int
    failed_reloads: int = 0
    old: bool = False  # under "# old workers": left by a reload, still serving connections


def parse_proc_table(text: str) -> list[Proc]:
    """Every master and worker line of `show proc` (2.6 and 3.x layouts), old workers marked;
    programs are left out."""
    procs: list[Proc] = []
    section = "current"
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            lowered = line.lower()
            if "old worker" in lowered:
                section = "old"
            elif "program" in lowered:
                section = "program"
            elif "worker" in lowered:
                section = "current"
            continue
        fields = line.split()
        if len(fields) < 3 or not fields[0].isdigit() or section == "program":
            continue
        pid, kind, reloads = int(fields[0]), fields[1], fields[2]
        failed = 0
        if "[failed:" in line:
            failed = int(line.split("[failed:")[1].split("]")[0].strip())
        count = int(reloads) if reloads.isdigit() else 0
        procs.append(Proc(kind, pid, count, failed, old=section == "old"))
    return procs


def parse_show_proc(text: str) -> list[Proc]:
    """The master and the current worker: the one that serves the newest configuration."""
    return [p for p in parse_proc_table(text) if not p.old]


def parse_old_workers(text: str) -> list[Proc]:
    """The old workers of `show proc` (left by reloads, still serving their connections),
    oldest first: the one that survived the most reloads."""
    old = [p for p in parse_proc_table(text) if p.old and p.kind == "worker"]
    return sorted(old, key=lambda p: -p.reloads)


def rss_bytes(pid: int) -> int:
    """A process's resident memory (VmRSS), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return 0
