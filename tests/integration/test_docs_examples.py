"""The README's quick start and the docs' examples, run as written, so the text cannot rot.

The shell blocks of the README's "Quick start" are taken from the file and run command by
command, the way a newcomer pastes them: background commands (`... &`) are started and
stopped again by their pid, each `curl` is retried until the router it talks to is up, every
other command must succeed. Only two things are changed, both outside the text's meaning:
the fixed ports (and the metrics port's default, 9101) become free ones, since other tests run
at the same time, and `haproxy-egress` is this checkout's (a shim on PATH stands for
`. .venv/bin/activate`). The squid-mode example
of docs/migration.md is compared with what `migrate` prints for its "before".
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.router import _kill_leftovers
from tests.support import free_port, wait_for
from tests.tlscerts import make_ca, make_crl, make_leaf

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
# Fixed ports of the README's examples: each becomes a free port, the same one everywhere.
README_PORTS = (8443, 9101, 8000, 8001, 13128, 9102)


def blocks(text: str, kind: str) -> list[str]:
    """The fenced code blocks of `kind` (sh, yaml...) in `text`, in order."""
    return [m.group(2) for m in FENCE.finditer(text) if m.group(1) == kind]


def section(path: Path, title: str) -> str:
    """A markdown section: from its `## title` to the next `## ` heading."""
    text = path.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def commands(block: str) -> list[str]:
    """Shell commands as a reader pastes them: continuation lines joined, a here-document
    kept with its command, comments and blank lines left out."""
    out: list[str] = []
    lines = iter(block.splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        command = line
        while command.endswith("\\"):
            command = command[:-1] + " " + next(lines).strip()
        heredoc = re.search(r"<<'?(\w+)'?", command)
        if heredoc:
            body = []
            for more in lines:
                body.append(more)
                if more == heredoc.group(1):
                    break
            command += "\n" + "\n".join(body)
        out.append(command)
    return out


@dataclass
class Shell:
    """Runs the commands in one directory with this checkout's `haproxy-egress` on PATH;
    remembers what it started in the background."""

    cwd: Path
    env: dict[str, str]
    started: list[subprocess.Popen[bytes]]

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def background(self, command: str) -> None:
        log = open(self.cwd / f"background-{len(self.started)}.log", "wb")  # noqa: SIM115
        with log:
            self.started.append(
                subprocess.Popen(
                    ["bash", "-c", command],  # one simple command: bash execs it
                    cwd=self.cwd,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def stop(self) -> None:
        for proc in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "haproxy-egress"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m haproxy_egress.cli "$@"\n')
    shim.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin:/usr/sbin:/sbin')}",
        "PYTHONPATH": str(ROOT),
        "HOME": str(tmp_path),
    }
    work = tmp_path / "work"
    work.mkdir()
    s = Shell(work, env, [])
    try:
        yield s
    finally:
        s.stop()
        for run_dir in (tmp_path / "egress-run", tmp_path / "egress-lab"):
            _kill_leftovers(run_dir)


def _localized(command: str, ports: dict[int, int], tmp: Path) -> str:
    for fixed, free in ports.items():
        command = re.sub(rf"(?<![\d.]){fixed}(?!\d)", str(free), command)
    return command.replace("/tmp/egress-", f"{tmp}/egress-")


@pytest.mark.timeout(120)
def test_readme_quick_start_works_as_written(shell: Shell, tmp_path: Path) -> None:
    text = section(ROOT / "README.md", "Quick start")
    sh = blocks(text, "sh")
    assert sh[0].strip() == ". .venv/bin/activate"  # stood for by the shim on PATH
    ports = {fixed: free_port() for fixed in README_PORTS}
    shell.env["SCRAPER_TCP_PORT"] = str(ports[9101])  # the metrics port's default, moved too
    outputs: dict[str, str] = {}
    for block in sh[1:]:
        for written in commands(block):
            command = _localized(written, ports, tmp_path)
            if command.rstrip().endswith("&"):
                shell.background(command.rstrip()[:-1])
                continue
            if command.startswith("curl "):

                def fetched(command: str = command) -> str | None:
                    done = shell.run(command)
                    return done.stdout if done.returncode == 0 else None

                output = wait_for(fetched, timeout=30, step=0.2)
                assert output is not None
                outputs[command] = output
                continue
            done = shell.run(command)
            expected = 1 if command.startswith("haproxy-egress explain") else 0
            assert done.returncode == expected, (command, done.stdout, done.stderr)
            outputs[command] = done.stdout
    for proc in shell.started:
        assert proc.poll() is None, proc.args  # every router and origin is still up
    said = list(outputs.values())
    # What the text promises: the origin through the tcp route, metrics, the lab proxy
    # allowing rule 2 and refusing the rest with the same words as explain.
    assert sum("Directory listing" in out for out in said) == 2, said
    assert any("haproxy_up 1" in out for out in said), said
    refusal = next(out for out in said if out.startswith("no rule of route lab-proxy"))
    explained = next(out for out in said if "lab-proxy (proxy): deny: " in out)
    assert refusal in explained


def test_migration_squid_example_is_what_migrate_prints(shell: Shell) -> None:
    title = "HTTP proxy mode (squid mode): `EGRESS_HTTP_PROXY_DESTINATION`"
    before, after = blocks(section(ROOT / "docs" / "migration.md", title), "yaml")[:2]
    value = before.split("value: |\n", 1)[1]
    shell.env["EGRESS_HTTP_PROXY_DESTINATION"] = "".join(
        line[4:] + "\n" for line in value.splitlines()
    )
    shell.env["EGRESS_CONFIG_DIR"] = str(shell.cwd)  # no legacy keys there
    done = shell.run("haproxy-egress migrate --bare")
    assert done.returncode == 0, done.stderr
    assert done.stdout == after


# Fields whose value is a mounted Secret or file: the example's absolute path moves under the
# test's directory (like the ports, outside the text's meaning), and the test makes what the
# page says is mounted there.
MOUNTS = ("ca_file", "crl_file", "client_cert_dir", "credentials_dir")


def _mounts(data: object) -> set[tuple[str, str]]:
    """Every (field, path) of MOUNTS anywhere in a YAML document."""
    found: set[tuple[str, str]] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            if key in MOUNTS and isinstance(value, str) and value.startswith("/"):
                found.add((key, value))
            else:
                found |= _mounts(value)
    elif isinstance(data, list):
        for item in data:
            found |= _mounts(item)
    return found


def _mount_secrets(block: str, root: Path) -> str:
    """The example with its mounted paths under `root`, each made there: one CA (its
    certificate for every ca_file, its CRL for every crl_file), a client certificate for every
    client_cert_dir, a basic-auth pair for every credentials_dir."""
    mounts = _mounts(yaml.safe_load(block))
    if not mounts:
        return block
    ca = make_ca(root / "pki", "docs-ca")
    for field, path in sorted(mounts, key=lambda m: -len(m[1])):
        target = root / path.lstrip("/")
        if field == "ca_file":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(ca[0].read_bytes())
        elif field == "crl_file":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(make_crl(root / "pki", ca).read_bytes())
        elif field == "client_cert_dir":
            target.mkdir(parents=True, exist_ok=True)
            cert, key = make_leaf(
                root / "pki", target.name, ca, sans="DNS:egress", usage="clientAuth"
            )
            (target / "tls.crt").write_bytes(cert.read_bytes())
            (target / "tls.key").write_bytes(key.read_bytes())
        else:
            target.mkdir(parents=True, exist_ok=True)
            (target / "username").write_text("egress")
            (target / "password").write_text("pw-egress")
        block = block.replace(path, str(target))
    return block


def _documents() -> list[tuple[str, str]]:
    """Every YAML block of the docs and the README that is a whole routes document."""
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for n, block in enumerate(blocks(page.read_text(encoding="utf-8"), "yaml")):
            data = yaml.safe_load(block)
            if isinstance(data, dict) and "routes" in data:
                found.append((f"{page.name} block {n}", block))
    return found


@pytest.mark.timeout(120)
def test_every_routes_example_in_the_docs_passes_check(shell: Shell) -> None:
    """`check` (compile and haproxy -c) accepts each example as written, with what the page
    says goes beside it: docs/lua.md's hello.lua, the proxy users file of docs/policy.md."""
    documents = _documents()
    assert len(documents) >= 6, [name for name, _ in documents]
    hello = blocks((ROOT / "docs" / "lua.md").read_text(encoding="utf-8"), "lua")[0]
    for name, written in documents:
        config = shell.cwd / name.replace(" ", "-")
        config.mkdir()
        block = _mount_secrets(written, config / "mounted")
        (config / "routes.yaml").write_text(block)
        if "use: hello" in block:
            (config / "hello.lua").write_text(hello)
        users = sorted(
            {
                u
                for r in yaml.safe_load(block)["routes"]
                for g in r.get("clients", [])
                for u in g.get("users", [])
            }
        )
        lines = [
            shell.run(f"echo pw-{u} | haproxy-egress hash-password {u} --stdin").stdout
            for u in users
        ]
        (config / "users").write_text("".join(lines))
        env = f"EGRESS_PROXY_USERS_FILE={config}/users " if users else ""
        done = shell.run(f"{env}haproxy-egress check --config-dir {config}")
        assert done.returncode == 0, (name, done.stderr)
