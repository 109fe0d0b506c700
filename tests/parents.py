"""Real parent proxies on loopback for the parent-proxy tests: Debian's squid (optionally with
`basic_ncsa_auth` credentials and a hosts file, so it resolves names the router cannot) and
tinyproxy. Each runs in the foreground with a private config, log and pid file, writes an
access log the tests read, and is stopped by its pid."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from tests.netns import stop_process
from tests.support import free_port, port_open, wait_for

SQUID = os.environ.get("EGRESS_SQUID_BIN", "/usr/sbin/squid")
TINYPROXY = os.environ.get("EGRESS_TINYPROXY_BIN", "/usr/bin/tinyproxy")
NCSA_AUTH = "/usr/lib/squid/basic_ncsa_auth"


def crypt_line(user: str, password: str) -> str:
    """An htpasswd line basic_ncsa_auth accepts (MD5-crypt, made by openssl)."""
    hashed = subprocess.run(
        ["openssl", "passwd", "-apr1", password], capture_output=True, text=True, check=True
    ).stdout.strip()
    return f"{user}:{hashed}\n"


@dataclass
class _Parent:
    """`directory` names the parent in messages; its files live in a directory of its own
    under the system temp dir, since both drop root for a user that cannot enter pytest's
    private tmp_path. Removed again by `stop`."""

    name: str
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    directory: Path = field(init=False)

    def __post_init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix=f"egress-{self.name}-"))

    @property
    def access_log(self) -> Path:
        return self.directory / "access.log"

    def log_text(self) -> str:
        """The access log so far ("" before the first request)."""
        return self.access_log.read_text(errors="replace") if self.access_log.exists() else ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def conf(self) -> Path:
        return self.directory / "parent.conf"

    def config_lines(self) -> list[str]:
        """The parent's configuration file, line by line."""
        raise NotImplementedError

    def argv(self) -> list[str]:
        """The command line that runs it in the foreground on `conf`."""
        raise NotImplementedError

    def start(self) -> Self:
        """Write the config and run the parent until its port answers."""
        # Both drop root for an unprivileged user, which must write the logs and pid file here.
        os.chmod(self.directory, 0o777)
        self.port = self.port or free_port()
        self.conf.write_text("\n".join([*self.config_lines(), ""]))
        argv = self.argv()
        with (self.directory / "stderr").open("wb") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        wait_for(lambda: port_open(self.port) or self._died(), timeout=30)
        if self.proc.poll() is not None:
            raise RuntimeError(f"{argv[0]} exited: {(self.directory / 'stderr').read_text()}")
        return self

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def kill(self) -> None:
        """Stop at once (SIGKILL), as a crashed parent would; the port stops answering."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=10)
        self.proc = None
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class SquidParent(_Parent):
    """squid as the corporate proxy: every request needs `user`'s credentials when given;
    `hosts` maps names only squid can resolve (squid's own hosts file)."""

    user: str | None = None
    password: str | None = None
    hosts: dict[str, str] = field(default_factory=dict)

    def config_lines(self) -> list[str]:
        d = self.directory
        (d / "hosts").write_text("".join(f"{ip} {name}\n" for name, ip in self.hosts.items()))
        auth: list[str] = []
        if self.user is not None and self.password is not None:
            (d / "passwd").write_text(crypt_line(self.user, self.password))
            os.chmod(d / "passwd", 0o644)
            auth = [
                f"auth_param basic program {NCSA_AUTH} {d}/passwd",
                "auth_param basic credentialsttl 1 second",
                "acl authed proxy_auth REQUIRED",
                "http_access deny !authed",
            ]
        return [
            f"http_port 127.0.0.1:{self.port}",
            f"pid_filename {d}/squid.pid",
            "cache deny all",
            "cache_mem 8 MB",
            # %>ha: the request headers squid received, so tests can see what it got.
            'logformat egress %rm %ru %>Hs %un "%>ha"',
            f"access_log stdio:{d}/access.log logformat=egress",
            f"cache_log {d}/cache.log",
            "cache_store_log none",
            f"coredump_dir {d}",
            "dns_nameservers 127.0.0.1",
            f"hosts_file {d}/hosts",
            "shutdown_lifetime 0",
            "debug_options ALL,0",
            "forwarded_for delete",
            "via off",
            *auth,
            "http_access allow all",
        ]

    def argv(self) -> list[str]:
        return [SQUID, "-N", "-f", str(self.conf)]

    def set_password(self, password: str) -> None:
        """Change the password squid accepts (basic_ncsa_auth re-reads its file)."""
        assert self.user is not None
        self.password = password
        path = self.directory / "passwd"
        before = path.stat().st_mtime_ns
        path.write_text(crypt_line(self.user, password))
        # basic_ncsa_auth re-reads the file when its mtime (in seconds) changes: make sure it
        # does even when both writes fall into the same second.
        os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


@dataclass
class TinyproxyParent(_Parent):
    """tinyproxy as a second parent, without credentials."""

    def config_lines(self) -> list[str]:
        d = self.directory
        return [
            "User nobody",
            "Group nogroup",
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 30",
            f'LogFile "{d}/access.log"',
            "LogLevel Connect",
            f'PidFile "{d}/tinyproxy.pid"',
            "MaxClients 50",
            "Allow 127.0.0.1",
            "DisableViaHeader Yes",
        ]

    def argv(self) -> list[str]:
        return [TINYPROXY, "-d", "-c", str(self.conf)]
