"""TLS origination benchmark: a route that speaks mTLS to its destination, side by side with a
hand-written haproxy doing the same origination and with nginx `proxy_ssl_certificate`.

    .venv/bin/python bench/tls.py [--duration 3] [--repeat 3] [--rotations 10]

In one run, on 127.0.0.1, against one nginx origin that demands a client certificate:

1. Handshakes per CPU-second of the proxy: wrk sends one request per connection through a
   plain-TCP listener, so every request is a new TLS connection to the origin (resumed as each
   proxy does by default); requests / (user + system CPU seconds of the proxy process).
2. Keep-alive request rate: the same with keep-alive connections (one TLS connection each).
3. Rotation: the client certificate Secret is swapped the kubelet's way (`..data` rename) and
   new connections are opened until the origin sees the new certificate; p50 and max of the
   time from the swap (goal p50 <= 1 s).

Peers: "ours" (haproxy-egress, `EGRESS_THREADS=1`, the route's default health checks and its
log line per connection; "ours-nolog" the same route with `log: false`),
"haproxy" (a hand-written `server ... ssl verify required ca-file crt sni verifyhost`, nbthread
1) and "nginx" (stream `proxy_ssl on` with `proxy_ssl_certificate`, `proxy_ssl_verify on`, one
worker). Repeats are interleaved so load on the machine hits every peer alike. Every process is
stopped by its pid; every load is bounded in time.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.kubelet import ConfigMapVolume  # noqa: E402
from tests.netns import stop_process  # noqa: E402
from tests.router import Router  # noqa: E402
from tests.support import HAPROXY, free_port, port_open, wait_for  # noqa: E402
from tests.tlscerts import make_ca, make_leaf  # noqa: E402
from tests.tlsorigin import TlsOrigin, nginx_preamble  # noqa: E402

NAME = "api.partner.example"
Pair = tuple[Path, Path]

HAPROXY_CFG = """global
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 1m
    timeout server 1m
listen partner
    bind 127.0.0.1:{port}
    server origin 127.0.0.1:{origin} {ssl}
"""
HAPROXY_SSL = "ssl verify required ca-file {ca} crt {crt} sni str({name}) verifyhost {name}"

NGINX_STREAM = "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n"
NGINX_CFG = """stream {{
    server {{
        listen 127.0.0.1:{port};
        proxy_pass 127.0.0.1:{origin};
        proxy_ssl on;
        proxy_ssl_certificate {cert};
        proxy_ssl_certificate_key {key};
        proxy_ssl_trusted_certificate {ca};
        proxy_ssl_verify on;
        proxy_ssl_name {name};
        proxy_ssl_server_name on;
        proxy_ssl_session_reuse on;
    }}
}}
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Peer:
    """One proxy: its plain-TCP listener and the pid whose CPU time is counted."""

    name: str
    port: int
    pid: Callable[[], int]
    stop: Callable[[], None]
    results: dict[str, list[float]] = field(default_factory=dict)


def wrk(port: int, seconds: float, close: bool) -> tuple[int, int]:
    """(requests answered 2xx, errors) of one wrk run: 1 thread, 8 connections."""
    header = ["-H", "Connection: close"] if close else []
    url = f"http://127.0.0.1:{port}/"
    run = subprocess.run(
        ["wrk", *header, "-t1", "-c8", f"-d{seconds:g}s", url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    )
    return _counts(run.stdout)


def _counts(out: str) -> tuple[int, int]:
    """wrk's report → (requests answered 2xx, failures of any kind)."""
    total = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    requests = int(total.group(1)) if total else 0
    failed = (int(bad.group(1)) if bad else 0) + (
        sum(int(x) for x in errors.groups()) if errors else 0
    )
    return requests - (int(bad.group(1)) if bad else 0), failed


def measure(peer: Peer, seconds: float, close: bool) -> tuple[float, float, int]:
    """(requests per second, requests per CPU-second of the proxy, failures)."""
    pid = peer.pid()
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    ok, failed = wrk(peer.port, seconds, close)
    cpu, elapsed = cpu_seconds(pid) - cpu0, time.monotonic() - t0
    return ok / elapsed, ok / cpu if cpu else 0.0, failed


def pki(directory: Path) -> tuple[Pair, Pair, Pair, Pair, Pair]:
    """partner CA, the origin's certificate, company CA, two client identities."""
    partner = make_ca(directory, "partner-ca")
    company = make_ca(directory, "company-ca")
    server = make_leaf(directory, "origin", partner, sans=f"DNS:{NAME}", usage="serverAuth")
    one = make_leaf(directory, "client-1", company, sans="DNS:client-1", usage="clientAuth")
    two = make_leaf(directory, "client-2", company, sans="DNS:client-2", usage="clientAuth")
    return partner, server, company, one, two


def start_haproxy(directory: Path, origin: int, ca: Path, client: Pair) -> Peer:
    directory.mkdir(parents=True, exist_ok=True)
    crt = directory / "client.pem"
    crt.write_text(client[0].read_text() + client[1].read_text())
    port = free_port()
    cfg = directory / "haproxy.cfg"
    ssl = HAPROXY_SSL.format(ca=ca, crt=crt, name=NAME)
    cfg.write_text(HAPROXY_CFG.format(port=port, origin=origin, ssl=ssl))
    proc = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: port_open(port), timeout=10)
    return Peer("haproxy", port, lambda: proc.pid, lambda: stop_process(proc))


def start_nginx(directory: Path, origin: int, ca: Path, client: Pair) -> Peer:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cfg = directory / "nginx.conf"
    cfg.write_text(
        NGINX_STREAM
        + nginx_preamble(directory, 4096)
        + NGINX_CFG.format(
            port=port, origin=origin, ca=ca, cert=client[0], key=client[1], name=NAME
        )
    )
    proc = subprocess.Popen(
        ["nginx", "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: port_open(port), timeout=10)
    return Peer("nginx", port, lambda: proc.pid, lambda: stop_process(proc))


def start_ours(
    directory: Path, origin: int, ca: Path, secret: ConfigMapVolume, *, log: bool = True
) -> Peer:
    port = free_port()
    volume = ConfigMapVolume(directory / "configmap")
    route = {
        "name": "partner",
        "listen": f"127.0.0.1:{port}",
        "destinations": [f"127.0.0.1:{origin}"],
        "tls": {"server_name": NAME, "ca_file": str(ca), "client_cert_dir": str(secret.directory)},
        "log": log,
    }
    volume.write({"routes.yaml": {"version": 1, "routes": [route]}})
    env = {"EGRESS_THREADS": "1", "EGRESS_RELOAD_DEBOUNCE": "0.05"}
    if "EGRESS_HAPROXY_BIN" in os.environ:
        env["EGRESS_HAPROXY_BIN"] = os.environ["EGRESS_HAPROXY_BIN"]
    router = Router(directory / "router", env=env, config_dir=volume.directory).start()
    return Peer("ours" if log else "ours-nolog", port, router.worker_pid, router.stop)


def publish(secret: ConfigMapVolume, pair: Pair) -> None:
    secret.write({"tls.crt": pair[0].read_bytes(), "tls.key": pair[1].read_bytes()})


def seen_identity(port: int) -> str:
    """The client certificate subject the origin reports for a new connection, or ""."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        return conn.getresponse().read().decode().split()[0]
    except (OSError, http.client.HTTPException, IndexError):
        return ""
    finally:
        conn.close()


def rotations(peer: Peer, secret: ConfigMapVolume, pairs: tuple[Pair, Pair], n: int) -> list[float]:
    """Seconds from each Secret swap to the first new connection with the new identity."""
    out = []
    for i in range(n):
        pair = pairs[(i + 1) % 2]
        want = f"client=CN={pair[0].stem}"
        start = time.monotonic()
        publish(secret, pair)
        while seen_identity(peer.port) != want:
            if time.monotonic() - start > 30:
                raise SystemExit(f"rotation {i} never took effect")
            time.sleep(0.005)
        out.append(time.monotonic() - start)
        time.sleep(0.3)  # let the watcher settle before the next swap
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default in (("--duration", 3.0), ("--repeat", 3), ("--rotations", 10)):
        parser.add_argument(flag, type=type(default), default=default)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tls.") as tmp:
        work = Path(tmp)
        partner, server, company, one, two = pki(work / "pki")
        origin = TlsOrigin(work / "origin", server, company[0]).start()
        secret = ConfigMapVolume(work / "mtls")
        publish(secret, one)
        peers: list[Peer] = []
        try:
            peers.append(start_ours(work / "ours", origin.port, partner[0], secret))
            nolog = work / "ours-nolog"
            peers.append(start_ours(nolog, origin.port, partner[0], secret, log=False))
            peers.append(start_haproxy(work / "haproxy", origin.port, partner[0], one))
            peers.append(start_nginx(work / "nginx", origin.port, partner[0], one))
            for peer in peers:
                assert seen_identity(peer.port) == "client=CN=client-1", peer.name
            for _ in range(args.repeat):
                for peer in peers:  # interleaved: the machine's load hits every peer alike
                    for kind, close in (("handshake", True), ("keepalive", False)):
                        rate, per_cpu, failed = measure(peer, args.duration, close)
                        peer.results.setdefault(f"{kind}_rate", []).append(rate)
                        peer.results.setdefault(f"{kind}_per_cpu", []).append(per_cpu)
                        peer.results.setdefault(f"{kind}_failed", []).append(failed)
            latencies = rotations(peers[0], secret, (one, two), args.rotations)
        finally:
            for peer in peers:
                peer.stop()
            origin.stop()
    report(peers, latencies, args)


def report(peers: list[Peer], latencies: list[float], args: argparse.Namespace) -> None:
    med = {p.name: {k: statistics.median(v) for k, v in p.results.items()} for p in peers}
    hand = med["haproxy"]
    print(f"\n{args.repeat} x {args.duration:g} s per measure, interleaved; medians\n")
    names = ("ours", "ours-nolog", "haproxy", "nginx")
    print("| measure | ours | ours, `log: false` | hand-written haproxy | nginx | ours / haproxy |")
    print("|---|---|---|---|---|---|")
    rows = (
        ("new TLS connections/s (one request each)", "handshake_rate", "{:,.0f}"),
        ("new TLS connections per CPU-second of the proxy", "handshake_per_cpu", "{:,.0f}"),
        ("keep-alive requests/s", "keepalive_rate", "{:,.0f}"),
        ("keep-alive requests per CPU-second of the proxy", "keepalive_per_cpu", "{:,.0f}"),
    )
    for label, key, fmt in rows:
        cells = [fmt.format(med[p][key]) for p in names]
        ratio = med["ours"][key] / hand[key] if hand[key] else 0.0
        print(f"| {label} | {' | '.join(cells)} | {ratio:.2f}x |")
    failed = {
        p.name: sum(p.results["handshake_failed"] + p.results["keepalive_failed"]) for p in peers
    }
    counts = " | ".join(f"{failed[p]:,.0f}" for p in names)
    print(f"| failed requests (all runs) | {counts} | |")
    ordered = sorted(latencies)
    p50 = statistics.median(ordered)
    print(
        f"\nrotation (ours, {len(ordered)} swaps): Secret swap -> first new connection with the "
        f"new certificate: p50 {p50 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms "
        "(goal p50 <= 1 s)"
    )


if __name__ == "__main__":
    main()
