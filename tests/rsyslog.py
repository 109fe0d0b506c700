"""Debian's rsyslogd as a real syslog receiver on loopback: TCP, or TLS through its gnutls
driver (a CA made by the test, a client certificate required), with its own config, work dir
and pid file; never the system service. What it receives goes to one file, one line each."""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.netns import stop_process
from tests.support import free_port, port_open, wait_for

RSYSLOGD = "/usr/sbin/rsyslogd"


@dataclass(frozen=True)
class ReceiverTls:
    """The receiver's certificate and the CA its clients' certificates must chain to."""

    ca: Path
    cert: Path
    key: Path


@dataclass
class Rsyslog:
    """One rsyslogd with an imtcp input on 127.0.0.1; `restart()` keeps its port and file."""

    directory: Path
    tls: ReceiverTls | None = None
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _starts: int = field(default=0, repr=False)
    received: Path = field(init=False)  # what it received, one message a line
    pid_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.received = self.directory / "received.log"
        self.pid_file = self.directory / "rsyslogd.pid"

    def _config(self) -> str:
        work = self.directory / "work"
        work.mkdir(parents=True, exist_ok=True)
        driver = ""
        module = 'module(load="imtcp" MaxSessions="50")'
        if self.tls is not None:
            driver = (
                f' DefaultNetstreamDriverCAFile="{self.tls.ca}"'
                f' DefaultNetstreamDriverCertFile="{self.tls.cert}"'
                f' DefaultNetstreamDriverKeyFile="{self.tls.key}"'
            )
            # x509/certvalid: the client must show a certificate signed by the CA.
            module = (
                'module(load="imtcp" MaxSessions="50" StreamDriver.Name="gtls"'
                ' StreamDriver.Mode="1" StreamDriver.AuthMode="x509/certvalid")'
            )
        return (
            f'global(workDirectory="{work}" maxMessageSize="64k"{driver})\n'
            f"{module}\n"
            f'input(type="imtcp" address="127.0.0.1" port="{self.port}")\n'
            'template(name="raw" type="string" string="%rawmsg%\\n")\n'
            f'action(type="omfile" file="{self.received}" template="raw"'
            ' flushOnTXEnd="on" asyncWriting="off")\n'
        )

    def start(self) -> Rsyslog:
        self.port = self.port or free_port()
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "rsyslog.conf"
        conf.write_text(self._config())
        self._starts += 1
        with open(self.directory / f"rsyslogd-{self._starts}.out", "wb") as log:
            self.proc = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(conf), "-i", str(self.pid_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: self._alive() and port_open(self.port), timeout=10)
        return self

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"rsyslogd exited {self.proc.returncode}")
        return True

    def stop(self) -> None:
        """SIGTERM (rsyslogd writes out what it took in), SIGKILL if it lingers."""
        if self.proc is None:
            return
        stop_process(self.proc, grace=10)
        self.proc = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pid_file)

    def lines(self) -> list[str]:
        """Every message received so far, in order (rsyslog writes each on its own line)."""
        if not self.received.exists():
            return []
        return self.received.read_text(errors="replace").splitlines()
