"""The router's own output at a normal start and reload: nothing a newcomer must ignore.

haproxy prints WARNING/ALERT lines for causes the router controls (the server-state file on
first start, an HTTP log format on a TCP frontend, DNS slots never filled reported DOWN after a
reload); each was fixed at its cause, so a start and a reload print none. A client that resets
its connection to the metrics port, or sends garbage, costs no traceback.
"""

from __future__ import annotations

import re
import signal
import socket
import struct
from pathlib import Path

import pytest

from tests.router import Router
from tests.support import DnsServer, HttpOrigin, free_port, wait_for, write_configmap

# haproxy's own prefix ("[WARNING]  (41) : ...") must never reach the pod log: what the router
# relays is in its own format, and a normal start or reload relays no warning at all.
HAPROXY_PREFIX = re.compile(r"\[(WARNING|ALERT|NOTICE)\]")
ROUTER_PROBLEM = re.compile(r"haproxy-egress (WARNING|ERROR|CRITICAL):")


def _keys(dns: DnsServer, origin: HttpOrigin, ports: tuple[int, int, int]) -> dict[str, object]:
    proxy, named, fixed = ports
    return {
        "routes.yaml": {
            "version": 1,
            "resolvers": {"nameservers": [f"127.0.0.1:{dns.port}"]},
            "routes": [
                {
                    "name": "web-proxy",
                    "listen": f"127.0.0.1:{proxy}",
                    "mode": "proxy",
                    "policy": ["127.0.0.1"],
                    "guard": ["default", "-loopback"],
                },
                # A name with one address: three of its four DNS slots are never filled.
                {
                    "name": "named",
                    "listen": f"127.0.0.1:{named}",
                    "mode": "http",
                    "destinations": [f"origin.test:{origin.port}"],
                },
                {
                    "name": "fixed",
                    "listen": f"127.0.0.1:{fixed}",
                    "destinations": [f"127.0.0.1:{origin.port}"],
                },
            ],
        }
    }


def _reset(port: int) -> None:
    """Connect and reset at once (SO_LINGER 0): what a load-balancer probe may do."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _garbage(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x00\xff garbage \r\n\r\n")
        s.settimeout(5)
        while s.recv(4096):
            pass


@pytest.mark.timeout(60)
def test_start_and_reload_print_no_haproxy_warning(
    tmp_path: Path, dns: DnsServer, origin: HttpOrigin
) -> None:
    dns.records["origin.test"] = ["127.0.0.1"]
    ports = (free_port(), free_port(), free_port())
    config = tmp_path / "config"
    write_configmap(config, _keys(dns, origin, ports))
    router = Router(tmp_path / "router", config_dir=config).start()
    try:
        reloads = router.metric("haproxy_egress_reloads_total") or 0.0
        router.signal(signal.SIGHUP)  # a reload with nothing changed in the inputs ...
        # ... and one with a structural change: a route added.
        keys = _keys(dns, origin, ports)
        routes = keys["routes.yaml"]["routes"]  # type: ignore[index]
        routes.append(
            {
                "name": "more",
                "listen": f"127.0.0.1:{free_port()}",
                "destinations": [f"127.0.0.1:{origin.port}"],
            }
        )
        write_configmap(config, keys)
        wait_for(lambda: (router.metric("haproxy_egress_reloads_total") or 0) > reloads, 15)
        wait_for(lambda: "reloaded" in router.stderr(), 10)
        _reset(router.metrics_port)
        _garbage(router.metrics_port)
        assert router.metric("haproxy_up") == 1.0  # the endpoint still answers
    finally:
        router.stop()
    output = router.stdout() + router.stderr()
    noisy = [
        line
        for line in output.splitlines()
        if HAPROXY_PREFIX.search(line) or ROUTER_PROBLEM.search(line)
    ]
    assert not noisy, "\n".join(noisy)
    assert "Traceback" not in output, router.stderr()
    # What haproxy says about a route is relayed with the route named, in the router's format.
    assert re.search(r"INFO: haproxy: route named: Server named/origin\.test", router.stderr())
