"""`./dev.sh demo`: a working router on loopback in front of a demo origin, with metrics.

It starts a small HTTP origin on 127.0.0.1, points the seed-style environment at it and
execs `haproxy-egress run` as a newcomer would, so what runs is exactly the product.
"""

from __future__ import annotations

import http.server
import os
import sys
import tempfile
import threading
from pathlib import Path

from haproxy_egress.cli import main as cli_main

ORIGIN_PORT = int(os.environ.get("DEMO_ORIGIN_PORT", "18080"))
ROUTE_PORT = int(os.environ.get("DEMO_ROUTE_PORT", "8443"))
METRICS_PORT = int(os.environ.get("SCRAPER_TCP_PORT", "9101"))


class _Origin(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from the demo origin behind haproxy-egress\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> int:
    """Start the origin in a thread, then run the router in the foreground until Ctrl-C."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", ORIGIN_PORT), _Origin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    run_dir = Path(tempfile.mkdtemp(prefix="haproxy-egress-demo."))
    os.environ.update(
        {
            "SERVICE_NAME": "demo",
            "SERVICE_TCP_PORT": f"127.0.0.1:{ROUTE_PORT}",
            "SERVICE_DEST": f"127.0.0.1:{ORIGIN_PORT}",
            "SCRAPER_TCP_PORT": str(METRICS_PORT),
            "METRICS_ADDRESS": "127.0.0.1",
            "EGRESS_RUN_DIR": str(run_dir),
            "EGRESS_CONFIG_DIR": os.environ.get("EGRESS_CONFIG_DIR", str(run_dir / "configmap")),
        }
    )
    Path(os.environ["EGRESS_CONFIG_DIR"]).mkdir(parents=True, exist_ok=True)
    sys.stderr.write(
        "\nhaproxy-egress demo: a router on loopback in front of a demo origin\n"
        f"  try:     curl http://127.0.0.1:{ROUTE_PORT}/\n"
        f"  metrics: curl http://127.0.0.1:{METRICS_PORT}/metrics\n"
        f"  probes:  curl http://127.0.0.1:{METRICS_PORT}/readyz\n"
        f"  reload:  drop a routes.yaml into {os.environ['EGRESS_CONFIG_DIR']} "
        "(see docs/configuration.md)\n"
        "  stop:    Ctrl-C (graceful drain)\n\n"
    )
    try:
        return cli_main(["run"])
    finally:
        server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
