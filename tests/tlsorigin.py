"""A TLS origin that demands a client certificate: nginx with `ssl_verify_client on`.

Every answer names what the origin saw: the client certificate's subject and serial (or
none) and the SNI name, so a test can tell which identity the router presented. One nginx
process (`master_process off`), stopped by its pid.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.netns import stop_process
from tests.support import free_port, port_open, wait_for


def nginx_preamble(directory: Path, connections: int) -> str:
    """nginx's main context for one process in the foreground, its files under `directory`
    (so it runs unprivileged anywhere), stopped by its pid."""
    return (
        f"daemon off;\nmaster_process off;\npid {directory}/nginx.pid;\n"
        f"error_log {directory}/error.log info;\n"
        f"events {{\n    worker_connections {connections};\n}}\n"
    )


NGINX_TLS_CFG = """http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_timeout 300s;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {client_ca};
        ssl_verify_client {verify};
        location / {{
            return 200 "client=$ssl_client_s_dn serial=$ssl_client_serial sni=$ssl_server_name\\n";
        }}
    }}
}}
"""


@dataclass
class TlsOrigin:
    """nginx on 127.0.0.1 serving TLS with `cert`, verifying clients against `client_ca`."""

    directory: Path
    cert: tuple[Path, Path]
    client_ca: Path
    verify: str = "on"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> TlsOrigin:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        cfg = self.directory / "nginx.conf"
        cfg.write_text(
            nginx_preamble(self.directory, 256)
            + NGINX_TLS_CFG.format(
                dir=self.directory,
                port=self.port,
                cert=self.cert[0],
                key=self.cert[1],
                client_ca=self.client_ca,
                verify=self.verify,
            )
        )
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(self.directory), "-e", str(self.directory / "error.log"),
             "-c", str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for(lambda: self._alive() and port_open(self.port), timeout=10)
        except BaseException:
            self.stop()
            raise
        return self

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = (self.directory / "error.log").read_text(errors="replace")
            raise AssertionError(f"nginx exited {self.proc.returncode}: {log}")
        return True

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
