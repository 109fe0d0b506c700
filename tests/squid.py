"""Debian's squid, configured the way Red Hat's egress http-proxy image did, for differential
tests: the same `acl destN dstdomain|dst ...` / `http_access allow|deny destN` lines its
egress-http-proxy.sh generated from EGRESS_HTTP_PROXY_DESTINATION, then `http_access deny all`
(or `allow all` after `*`). It runs with a private config, pid file and log dir, no cache,
asks only the test's DNS server, and is stopped by its pid."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from haproxy_egress.config import policy
from tests.netns import Netns, Started, TestBed, wait_port

SQUID = os.environ.get("EGRESS_SQUID_BIN", "/usr/sbin/squid")


def acl_lines(rules: Sequence[policy.Rule]) -> list[str]:
    """The http_access section Red Hat generated (plus `port` ACLs for the :PORTS extension)."""
    lines: list[str] = []
    wildcard = False
    for n, rule in enumerate(rules, start=1):
        if rule.kind == "any":
            wildcard = True
            continue
        acl_type = "dst" if rule.kind == "network" else "dstdomain"
        lines.append(f"acl dest{n} {acl_type} {rule.squid()}")
        names = f"dest{n}"
        if rule.ports:
            lines.append(f"acl port{n} port {' '.join(map(str, rule.ports))}")
            names += f" port{n}"
        lines.append(f"http_access {rule.action} {names}")
    lines.append("http_access allow all" if wildcard else "http_access deny all")
    return lines


@dataclass
class Squid:
    """One squid process in a namespace of a test bed."""

    directory: Path
    address: str
    port: int
    rules: Sequence[policy.Rule]
    dns: str = "127.0.0.1"
    started: Started | None = None

    def config(self) -> str:
        d = self.directory
        return "\n".join(
            [
                f"http_port {self.address}:{self.port}",
                f"pid_filename {d}/squid.pid",
                "cache deny all",
                "cache_mem 8 MB",
                "access_log none all",
                f"cache_log {d}/cache.log",
                "cache_store_log none",
                f"coredump_dir {d}",
                f"dns_nameservers {self.dns}",
                "hosts_file none",
                "negative_dns_ttl 1 seconds",
                "shutdown_lifetime 0",
                "debug_options ALL,0",
                "forwarded_for delete",
                "via off",
                *acl_lines(self.rules),
                "",
            ]
        )

    def start(self, bed: TestBed, ns: Netns, client: Netns) -> Squid:
        self.directory.mkdir(parents=True, exist_ok=True)
        # squid drops root for the `proxy` user: it must be able to write its log and pid here.
        os.chmod(self.directory, 0o777)
        conf = self.directory / "squid.conf"
        conf.write_text(self.config())
        self.started = bed.start(ns, [SQUID, "-N", "-f", str(conf)], name="squid")
        wait_port(client, self.address, self.port, timeout=30, proc=self.started)
        return self
