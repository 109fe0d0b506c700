"""The run dir (an emptyDir in the pod): the one place that names every file in it.

haproxy, the supervisor, the template and the tests all find their sockets and files through
a `RunDir`, so a name is spelled once. Nothing here touches the disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    """Every path below the run dir."""

    root: Path

    @property
    def config(self) -> Path:
        """The live haproxy.cfg haproxy runs from."""
        return self.root / "haproxy.cfg"

    @property
    def candidate(self) -> Path:
        """A rendered config `haproxy -c` checks before it may become the live one."""
        return self.root / "haproxy.cfg.candidate"

    @property
    def last_good(self) -> Path:
        """The config that ran before the live one, put back if a reload does not take."""
        return self.root / "haproxy.cfg.last-good"

    @property
    def late_check(self) -> Path:
        """A copy of a config applied at runtime, for the `haproxy -c` run after the edit."""
        return self.root / "haproxy.cfg.late-check"

    @property
    def late_check_output(self) -> Path:
        """What that `haproxy -c` said (a file: a pipe could fill and stall it)."""
        return self.root / "haproxy.cfg.late-check.out"

    @property
    def stats_socket(self) -> Path:
        """haproxy's admin-level stats socket (mode 600)."""
        return self.root / "haproxy.sock"

    @property
    def master_socket(self) -> Path:
        """haproxy's master CLI socket (mode 600)."""
        return self.root / "master.sock"

    @property
    def log_socket(self) -> Path:
        """socklog's unix datagram socket haproxy logs to."""
        return self.root / "log.sock"

    @property
    def log_pipe(self) -> Path:
        """The FIFO haproxy's stdout (`log stdout`) writes to and the log relay reads."""
        return self.root / "log.pipe"

    @property
    def log_relay_state(self) -> Path:
        """The log relay's counters (lines in, out, lost), kept across relay restarts."""
        return self.root / "log-relay.state"

    @property
    def pid_file(self) -> Path:
        """haproxy's pidfile (the master's and workers' pids)."""
        return self.root / "haproxy.pid"

    @property
    def server_state(self) -> Path:
        """`show servers state`, saved before each reload for the new worker to load."""
        return self.root / "server-state"

    @property
    def lua(self) -> Path:
        """Staged Lua hooks, content-addressed (`<sha256>.lua`)."""
        return self.root / "lua"

    @property
    def maps(self) -> Path:
        """Map and ACL files haproxy loads with `-f` and the runtime API updates in place."""
        return self.root / "maps"

    @property
    def tls(self) -> Path:
        """TLS material haproxy loads (client certificate with its key, CA, CRL), one file
        per route and kind, mode 600; the runtime API updates them in place by name."""
        return self.root / "tls"

    @property
    def syslog_certs(self) -> Path:
        """Client certificates for syslog targets: a Secret's tls.crt and tls.key in one PEM
        (`<ring>.pem`), the one form haproxy's `crt` reads for a ring's server."""
        return self.root / "syslog"

    def stale(self) -> tuple[Path, ...]:
        """What a previous run may have left that must not outlive it (sockets, pid file)."""
        return (self.stats_socket, self.master_socket, self.log_socket, self.pid_file)
