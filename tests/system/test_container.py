"""The image from image/Containerfile, run the way OpenShift runs it: an arbitrary UID in
group 0, a read-only root filesystem with a tmpfs run dir, no capabilities, and the ConfigMap
mounted exactly as the kubelet lays it out. Host network, loopback peers only.

Needs a Docker engine (CI starts dockerd); without one these tests are skipped with the reason.
The base image `debian:trixie-slim` is made by image/build-base.sh when it is missing, since
no registry is reachable.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
import testcontainers.core.config as tc_config
import testcontainers.core.container as tc_container
import testcontainers.core.image as tc_image
import yaml

from haproxy_egress.config.users import hash_password
from haproxy_egress.errors import ExitCode
from tests.kubelet import ConfigMapVolume
from tests.support import (
    HELLO_LUA,
    DnsServer,
    EchoOrigin,
    HttpOrigin,
    free_port,
    http_get,
    wait_for,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent.parent
BASE_IMAGE = "debian:trixie-slim"
IMAGE_TAG = "haproxy-egress:test"
ARBITRARY_UID = "1000680000:0"  # what OpenShift's restricted-v2 SCC hands out: a UID, group 0
CONFIG_DIR = "/etc/haproxy-egress"
RUN_DIR = "/run/haproxy-egress"
# What our own Containerfile adds on top of Debian's packages (the package, templates, Lua): we
# decide every byte of it, so its bound is tight.
OWN_LAYER_GOAL_BYTES = 5 * 1000 * 1000
# The whole image is mostly Debian's trixie (python3, haproxy, libssl, the Python libraries):
# its size moves with every point release of the archive, not with our code. Measured 151.4 MB
# on 2026-12-05 (docs/benchmarks.md "Image"); the rail catches a dependency that drags in a
# new stack, and its message names the largest packages so a reader sees what grew.
SIZE_RAIL_BYTES = 200 * 1000 * 1000

# Ryuk, testcontainers' reaper, is an image from a registry: none is reachable, and every
# container here is removed by its fixture anyway.
tc_config.testcontainers_config.ryuk_disabled = True


def _engine_answers() -> str | None:
    """None when the Docker engine answers `GET /_ping`, else why not. Asked on a socket of our
    own: docker-py leaks its socket when the engine is absent, which filterwarnings=error turns
    into a crash of the whole session."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return None  # a remote engine: let docker-py ask it
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(host.removeprefix("unix://"))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            answer = s.recv(1024)
    except OSError as exc:
        return f"{host}: {exc.strerror or exc}"
    return None if answer.startswith(b"HTTP/1.") and b" 200 " in answer else repr(answer[:80])


def _engine() -> Any:
    """A client of the local Docker engine; a failure saying why there is none (./dev.sh test
    starts dockerd: a missing engine is a broken set-up, never a reason to skip)."""
    why = _engine_answers()
    if why is not None:
        pytest.fail(f"no Docker engine answers ({why}); run the tests through ./dev.sh test")
    return docker.from_env(timeout=10)


@dataclass
class BuiltImage:
    """The image under test and what building it measured."""

    tag: str
    size_bytes: int
    attrs: dict[str, Any] = field(default_factory=dict)
    # (the instruction that made it, its size in bytes), newest layer first
    layers: list[tuple[str, int]] = field(default_factory=list)


@pytest.fixture(scope="session")
def image() -> BuiltImage:
    """Build image/Containerfile as it is (context: the repository root, host network)."""
    client = _engine()
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        made = subprocess.run(
            [str(ROOT / "image" / "build-base.sh")],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert made.returncode == 0, f"build-base.sh failed:\n{made.stdout}\n{made.stderr}"
    tc_image.DockerImage(
        path=ROOT,
        dockerfile_path="image/Containerfile",
        tag=IMAGE_TAG,
        clean_up=False,
        network_mode="host",
    ).build()
    built = client.images.get(IMAGE_TAG)
    layers = [(str(h.get("CreatedBy", "")), int(h.get("Size", 0))) for h in built.history()]
    attrs = built.attrs
    client.close()
    # The tag stays after the session: the next build reuses its layers.
    return BuiltImage(IMAGE_TAG, int(attrs["Size"]), attrs, layers)


@dataclass
class Router:
    """One running router container and the ports it serves."""

    container: Any  # testcontainers DockerContainer
    route_port: int
    metrics_port: int
    started_at: float  # time.monotonic() just before `docker run`
    ready_seconds: float = 0.0

    @property
    def wrapped(self) -> Any:
        """docker-py's Container: stop, wait, exec, logs."""
        return self.container.get_wrapped_container()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def logs(self) -> str:
        return bytes(self.wrapped.logs()).decode(errors="replace")

    def exec(self, *argv: str) -> tuple[int, str]:
        code, out = self.wrapped.exec_run(list(argv))
        return int(code), bytes(out).decode(errors="replace")

    def metric(self, name: str) -> float:
        """One sample from /metrics, named with its labels as exposed (`name{kind="x"}`)."""
        for line in requests.get(self.url("/metrics"), timeout=5).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in /metrics")


@contextlib.contextmanager
def running_router(
    image: BuiltImage,
    config_dir: Path,
    env: Mapping[str, str],
    route_port: int,
    *,
    mounts: Mapping[str, Path] | None = None,
    cpus: float | None = None,
) -> Iterator[Router]:
    """`docker run` as OpenShift would, wait for /readyz; always removed afterwards.
    `mounts`: more read-only volumes (container path → host directory), e.g. a Secret;
    `cpus`: a CPU limit, as a pod's `resources.limits.cpu` sets it (a CFS quota)."""
    metrics_port = free_port()
    container = tc_container.DockerContainer(image.tag).with_volume_mapping(
        str(config_dir), CONFIG_DIR, "ro"
    )
    for target, source in (mounts or {}).items():
        container = container.with_volume_mapping(str(source), target, "ro")
    container = container.with_tmpfs_mount(RUN_DIR, "size=16m").with_kwargs(
        user=ARBITRARY_UID,
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        network_mode="host",
        **({"nano_cpus": int(cpus * 1e9)} if cpus else {}),
    )
    for key, value in {
        "SCRAPER_TCP_PORT": str(metrics_port),
        "METRICS_ADDRESS": "127.0.0.1",
        **env,
    }.items():
        container.with_env(key, value)
    started = time.monotonic()
    router = Router(container, route_port, metrics_port, started)
    try:
        container.start()  # inside the try: a container created but not started is removed too

        def ready() -> str:
            router.wrapped.reload()
            if router.wrapped.status == "exited":
                return "exited"
            return "ready" if requests.get(router.url("/readyz"), timeout=1).ok else ""

        try:
            state = wait_for(ready, timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"router not ready: {exc}\n{router.logs()}") from None
        assert state == "ready", f"router exited:\n{router.logs()}"
        router.ready_seconds = time.monotonic() - started
        yield router
    finally:
        container.stop()  # removes it, running or not


@pytest.fixture
def volume(tmp_path: Path) -> ConfigMapVolume:
    """A directory laid out and updated exactly like a kubelet ConfigMap volume."""
    directory = tmp_path / "configmap"
    directory.mkdir(mode=0o755)
    return ConfigMapVolume(directory)


def _routes(*routes: tuple[str, int, int]) -> dict[str, object]:
    """A routes.yaml key: (name, listen port, destination port on 127.0.0.1) each."""
    return {
        "version": 1,
        "routes": [
            {"name": name, "listen": f"127.0.0.1:{listen}", "destinations": [f"127.0.0.1:{dest}"]}
            for name, listen, dest in routes
        ],
    }


def _seed_env(route_port: int, origin: HttpOrigin, drain_seconds: float = 5) -> dict[str, str]:
    """The seed template's variables: one route `web` to the origin."""
    return {
        "SERVICE_NAME": "web",
        "SERVICE_TCP_PORT": f"127.0.0.1:{route_port}",
        "SERVICE_DEST": "127.0.0.1",
        "SERVICE_DEST_PORT": str(origin.port),
        "EGRESS_DRAIN_SECONDS": str(drain_seconds),
    }


@pytest.fixture
def router(
    image: BuiltImage, volume: ConfigMapVolume, origin: HttpOrigin, origin_b: HttpOrigin
) -> Iterator[Router]:
    """A router with the env route `web` → origin-a and a ConfigMap route `cm` → origin-b."""
    route_port = free_port()
    volume.write({"routes.yaml": _routes(("cm", free_port(), origin_b.port))})
    with running_router(image, volume.directory, _seed_env(route_port, origin), route_port) as r:
        yield r


def _cm_port(volume: ConfigMapVolume) -> int:
    doc = yaml.safe_load((volume.directory / "routes.yaml").read_text())
    return int(doc["routes"][0]["listen"].rsplit(":", 1)[1])


# --- the image ---------------------------------------------------------------------------------


def _one_off(image: BuiltImage, entrypoint: list[str], command: list[str] | None = None) -> str:
    """What a one-off run of the image prints: read-only, as the arbitrary UID, host network."""
    client = _engine()
    try:
        out: bytes = client.containers.run(
            image.tag,
            entrypoint=entrypoint,
            command=command,
            user=ARBITRARY_UID,
            network_mode="host",
            read_only=True,
            remove=True,
        )
        return out.decode()
    finally:
        client.close()


def test_image_shape_and_size(image: BuiltImage, record_property: Any) -> None:
    """Non-root, the run entrypoint, the metrics port, OCI labels; our own layer small, and
    the whole image (mostly Debian's packages) inside its rail."""
    record_property("image_size_mb", round(image.size_bytes / 1e6, 1))
    config = image.attrs["Config"]
    assert config["Entrypoint"] == ["haproxy-egress", "run"]
    uid, _, gid = str(config["User"]).partition(":")
    assert uid.isdigit()
    assert int(uid) != 0
    assert gid == "0"
    assert "9101/tcp" in config["ExposedPorts"]
    labels = config["Labels"]
    for key in ("title", "description", "licenses", "version", "revision"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    # The final stage's one COPY: the wheel installed in the build stage. The classic builder
    # records it as "COPY dir:<hash> in / ", BuildKit as "COPY /install/ / # buildkit".
    own = [
        size
        for made_by, size in image.layers
        if "COPY /install/ /" in made_by or re.search(r"COPY dir:\w+ in / *$", made_by)
    ]
    assert len(own) == 1, image.layers
    assert own[0] < OWN_LAYER_GOAL_BYTES, f"our own layer is {own[0] / 1e6:.2f} MB"
    if image.size_bytes >= SIZE_RAIL_BYTES:
        largest = _one_off(
            image,
            ["sh", "-c"],
            ["dpkg-query -W -f '${Installed-Size} ${Package}\\n' | sort -rn | head -n 12"],
        )
        pytest.fail(
            f"the image is {image.size_bytes / 1e6:.1f} MB (rail {SIZE_RAIL_BYTES / 1e6:.0f} MB);"
            f" its largest Debian packages (KiB):\n{largest}"
        )


def test_image_tools_and_group_writable_paths(image: BuiltImage) -> None:
    """HAProxy 3.x and socklog from trixie; the writable paths belong to group 0."""
    out = _one_off(
        image,
        ["sh", "-c"],
        [f"haproxy -v; command -v socklog; stat -c '%g %a' {RUN_DIR} {CONFIG_DIR}"],
    )
    assert "HAProxy version 3." in out
    assert "/socklog" in out
    for line in out.splitlines()[-2:]:
        group, mode = line.split()
        assert group == "0"
        assert int(mode, 8) & 0o070 == 0o070, line  # group rwx: OpenShift's UID is in group 0


DEPENDENCY_CHECK = """
import importlib.metadata as md, json, re
out = []
for req in md.requires("haproxy-egress") or []:
    if "extra ==" in req:
        continue
    name, minimum = re.match(r"([A-Za-z0-9_.-]+)\\s*(?:>=\\s*([0-9.]+))?", req).groups()
    dist = md.distribution(name)
    out.append([name, minimum or "0", dist.version, str(dist.locate_file(""))])
print(json.dumps(out))
"""


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_dependencies_are_debian_packages_satisfying_pyproject(image: BuiltImage) -> None:
    """Every runtime dependency is installed by Debian (not pip) at a version pyproject allows."""
    out = _one_off(image, ["python3", "-c", DEPENDENCY_CHECK])
    deps = yaml.safe_load(out)
    assert {name.lower() for name, *_ in deps} >= {"pyyaml", "jinja2", "pydantic", "watchfiles"}
    for name, minimum, installed, location in deps:
        assert _version(installed) >= _version(minimum), (name, installed, minimum)
        assert location.startswith("/usr/lib/python3/dist-packages"), (name, location)


# --- the running router --------------------------------------------------------------------


def test_runs_unprivileged_read_only(router: Router) -> None:
    """The arbitrary UID, group 0, no capabilities, no new privileges, nothing writable but
    the run dir."""
    assert router.exec("id", "-u") == (0, "1000680000\n")
    assert router.exec("id", "-g") == (0, "0\n")
    code, status = router.exec("cat", "/proc/1/status")
    assert code == 0
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["CapEff"].strip() == "0" * 16
    assert fields["NoNewPrivs"].strip() == "1"
    assert router.exec("touch", "/etc/haproxy-egress/x")[0] != 0
    assert router.exec("touch", "/usr/x")[0] != 0
    code, listing = router.exec("ls", RUN_DIR)
    assert code == 0
    assert "haproxy.cfg" in listing


def test_proxies_env_and_configmap_routes(
    router: Router, volume: ConfigMapVolume, origin: HttpOrigin, origin_b: HttpOrigin
) -> None:
    """Traffic through the seed-env route and through the mounted ConfigMap's route."""
    assert http_get(router.route_port) == "origin-a"
    assert http_get(_cm_port(volume)) == "origin-b"
    assert origin.peers == ["127.0.0.1"]
    assert origin_b.peers == ["127.0.0.1"]


def test_metrics_and_probes_answer(router: Router) -> None:
    """/healthz and /readyz say 200; /metrics has haproxy's and the supervisor's metrics."""
    http_get(router.route_port)
    assert requests.get(router.url("/healthz"), timeout=5).status_code == 200
    assert requests.get(router.url("/readyz"), timeout=5).status_code == 200
    metrics = requests.get(router.url("/metrics"), timeout=5)
    assert metrics.status_code == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert router.metric("haproxy_up") == 1
    assert 'frontend="web"' in metrics.text
    assert 'frontend="cm"' in metrics.text
    assert 'backend="web"' in metrics.text


def test_kubelet_swap_reloads_without_failed_requests(
    router: Router, volume: ConfigMapVolume, origin: HttpOrigin, origin_b: HttpOrigin
) -> None:
    """Two `..data` swaps while a client keeps connecting: re-pointing a route is applied
    through the runtime API, adding one reloads; every request succeeds."""
    failures: list[str] = []
    served = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal served
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline and served < 20_000:
            try:
                assert http_get(router.route_port, timeout=5) == "origin-a"
                served += 1
            except Exception as exc:
                failures.append(repr(exc))

    cm_port = _cm_port(volume)
    added_port = free_port()
    client = threading.Thread(target=load, daemon=True)
    client.start()
    try:
        time.sleep(0.3)
        volume.write({"routes.yaml": _routes(("cm", cm_port, origin.port))})
        wait_for(lambda: http_get(cm_port) == "origin-a", timeout=20)
        volume.write(
            {
                "routes.yaml": _routes(
                    ("cm", cm_port, origin.port), ("added", added_port, origin_b.port)
                )
            }
        )
        wait_for(lambda: http_get(added_port) == "origin-b", timeout=20)
        time.sleep(0.3)
    finally:
        stop.set()
        client.join(10)
    assert failures == []
    assert served > 20
    assert router.metric('haproxy_egress_config_changes_total{kind="runtime"}') >= 1
    assert router.metric('haproxy_egress_config_changes_total{kind="reload"}') >= 1
    assert router.metric("haproxy_egress_reloads_total") >= 1
    assert router.metric("haproxy_egress_reload_failures_total") == 0
    assert router.metric("haproxy_up") == 1


def test_logs_have_haproxy_connection_lines(router: Router, origin: HttpOrigin) -> None:
    """haproxy's per-connection log lines reach the container's log stream (via the relay)."""
    http_get(router.route_port)
    line = rf"(haproxy\[\d+\]: )?127\.0\.0\.1:\d+ \[[^\]]+\] web web/127\.0\.0\.1_{origin.port} "
    wait_for(lambda: re.search(line, router.logs()), timeout=10)


def test_docker_stop_drains_open_connections_and_exits_zero(
    image: BuiltImage, volume: ConfigMapVolume, origin: HttpOrigin
) -> None:
    """SIGTERM: the request in flight completes, then the container exits 0 by itself,
    well inside the grace period."""
    volume.write({"routes.yaml": _routes()})
    route_port = free_port()
    grace = 20
    env = _seed_env(route_port, origin, drain_seconds=10)
    with running_router(image, volume.directory, env, route_port) as router:
        conn = socket.create_connection(("127.0.0.1", route_port), timeout=10)
        conn.sendall(b"GET / HTTP/1.0\r\nHost: test\r\n")  # in flight: not complete yet
        time.sleep(0.3)
        result: dict[str, Any] = {}

        def stop() -> None:
            begun = time.monotonic()
            router.wrapped.stop(timeout=grace)  # `docker stop -t 20`: SIGTERM, then SIGKILL
            result["seconds"] = time.monotonic() - begun

        stopper = threading.Thread(target=stop, daemon=True)
        stopper.start()
        time.sleep(1.5)
        assert stopper.is_alive(), "the router did not wait for the open connection"
        conn.sendall(b"\r\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        conn.close()
        stopper.join(grace + 10)
        router.wrapped.reload()
        state = router.wrapped.attrs["State"]
        assert data.endswith(b"origin-a"), data[-200:]
        assert state["ExitCode"] == 0, router.logs()
        assert result["seconds"] < 10, result  # the drain ended when the connection did
        assert "exiting (code 0)" in router.logs()


def test_docker_stop_gives_up_on_idle_clients_after_the_drain_time(
    image: BuiltImage, volume: ConfigMapVolume, origin: HttpOrigin
) -> None:
    """A client that never finishes is cut when EGRESS_DRAIN_SECONDS run out, well inside the
    grace period (no SIGKILL); the exit code says connections were cut (FORCED_STOP)."""
    volume.write({"routes.yaml": _routes()})
    route_port = free_port()
    drain, grace = 3, 20
    env = _seed_env(route_port, origin, drain_seconds=drain)
    with running_router(image, volume.directory, env, route_port) as router:
        conn = socket.create_connection(("127.0.0.1", route_port), timeout=grace)
        conn.sendall(b"GET / HTTP/1.0\r\n")
        time.sleep(0.3)
        begun = time.monotonic()
        router.wrapped.stop(timeout=grace)
        seconds = time.monotonic() - begun
        router.wrapped.reload()
        conn.close()
        state = router.wrapped.attrs["State"]
        assert state["ExitCode"] == ExitCode.FORCED_STOP, router.logs()
        assert not state["OOMKilled"]
        # Cut at the drain deadline, not before; FORCED_STOP (not 137) says the runtime's
        # SIGKILL at the grace period never came.
        assert seconds >= drain - 0.5, seconds
        assert "drain period of 3s is over" in router.logs()


def test_ready_within_goal(
    image: BuiltImage, volume: ConfigMapVolume, origin: HttpOrigin, record_property: Any
) -> None:
    """From `docker run` to /readyz 200; the time it took is recorded (goal: 2 s)."""
    volume.write({"routes.yaml": _routes()})
    route_port = free_port()
    env = _seed_env(route_port, origin)
    with running_router(image, volume.directory, env, route_port) as router:
        # The 2 s start-up goal is a figure for docs/benchmarks.md, read from this property
        # (junit XML), never a wall-clock bound a loaded machine turns red.
        record_property("ready_seconds", round(router.ready_seconds, 2))
        assert http_get(route_port) == "origin-a"


# --- Lua hooks on the image's HAProxy (3.0, Lua 5.4; the unit tests run Debian 12's 2.6) ----

SECRET_DIR = "/var/run/secrets/parent-proxy"
USERS_DIR = "/var/run/secrets/proxy-users"


def _raw(port: int, request: bytes, until: bytes = b"") -> bytes:
    """Send one request on a new connection; read to close, or until `until` is seen."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while (chunk := s.recv(65536)) and not (until and until in data + chunk):
            data += chunk
        return data + chunk


def test_every_shipped_hook_and_a_user_hook_run_on_the_images_haproxy(
    image: BuiltImage, volume: ConfigMapVolume, echo: EchoOrigin, dns: DnsServer, tmp_path: Path
) -> None:
    """audit, deny_page, proxy_auth, the policy proxy's CONNECT handler and a ConfigMap hook,
    through the image's own HAProxy: the Lua uses only APIs of both 2.6 and 3.0."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "username").write_text("alice")
    (secret / "password").write_text("s3cret")
    secret.chmod(0o755)
    for f in secret.iterdir():
        f.chmod(0o644)  # the container's arbitrary UID reads it, as a kubelet-mounted Secret
    users = tmp_path / "users"  # the proxy users' Secret
    users.mkdir()
    (users / "users").write_text(hash_password("bob", "b0b-pw").line + "\n")
    users.chmod(0o755)
    (users / "users").chmod(0o644)
    hooked, guarded, hello, proxy = free_port(), free_port(), free_port(), free_port()
    staff = free_port()
    dest = [f"127.0.0.1:{echo.port}"]
    volume.write(
        {
            "routes.yaml": {
                "resolvers": {"nameservers": [f"127.0.0.1:{dns.port}"]},
                "routes": [
                    {
                        "name": "hooked",
                        "listen": f"127.0.0.1:{hooked}",
                        "mode": "http",
                        "destinations": dest,
                        "hooks": [
                            "audit",
                            {"use": "proxy_auth", "args": {"secret_dir": SECRET_DIR}},
                        ],
                    },
                    {
                        "name": "guarded",
                        "listen": f"127.0.0.1:{guarded}",
                        "mode": "http",
                        "destinations": dest,
                        "allow_from": ["10.0.0.0/8"],
                        "hooks": ["audit", "deny_page"],
                    },
                    {
                        "name": "hello",
                        "listen": f"127.0.0.1:{hello}",
                        "mode": "http",
                        "destinations": dest,
                        "hooks": [{"use": "hello", "at": "service", "args": {"who": "3.0"}}],
                    },
                    {
                        "name": "proxy",
                        "listen": f"127.0.0.1:{proxy}",
                        "mode": "proxy",
                        "policy": ["127.0.0.1/32"],
                    },
                    {
                        "name": "staff",
                        "listen": f"127.0.0.1:{staff}",
                        "mode": "proxy",
                        "proxy_auth": "required",
                        "policy": ["127.0.0.1/32"],
                    },
                ],
            },
            "hello.lua": HELLO_LUA % "hello",
        }
    )
    with running_router(
        image,
        volume.directory,
        {"EGRESS_DRAIN_SECONDS": "2", "EGRESS_PROXY_USERS_FILE": f"{USERS_DIR}/users"},
        hooked,
        mounts={SECRET_DIR: secret, USERS_DIR: users},
    ) as router:
        code, version = router.exec("haproxy", "-v")
        assert code == 0
        assert re.search(r"version 3\.", version), version  # not the host's 2.6
        # proxy_auth: the parent proxy's credentials from the mounted Secret.
        seen = json.loads(_raw(hooked, b"GET / HTTP/1.0\r\nHost: h\r\n\r\n").split(b"\r\n\r\n")[1])
        assert seen["proxy-authorization"] == "Basic " + base64.b64encode(b"alice:s3cret").decode()
        # deny_page: a readable 403 naming the route and the rule.
        page = _raw(guarded, b"GET / HTTP/1.0\r\nHost: g\r\n\r\n")
        assert page.startswith(b"HTTP/1.0 403"), page
        assert b"route: guarded" in page
        assert b"allow_from" in page
        # The user's hello.lua, with its argument.
        assert _raw(hello, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").endswith(b"hello, 3.0")
        # The policy proxy: CONNECT (Lua parses the head, 200 only once connected) and plain
        # HTTP to an allowed address; a denied one gets the 403 naming the rule.
        tunnel = _raw(
            proxy,
            f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: x\r\n\r\n"
            "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode(),
        )
        assert tunnel.startswith(b"HTTP/1.1 200 Connection established"), tunnel
        assert b'"host": "t"' in tunnel
        plain = _raw(proxy, f"GET http://127.0.0.1:{echo.port}/ HTTP/1.0\r\n\r\n".encode())
        assert plain.startswith(b"HTTP/1.0 200") or plain.startswith(b"HTTP/1.1 200"), plain
        denied = _raw(proxy, f"CONNECT 127.0.0.2:{echo.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert b" 403 " in denied.split(b"\r\n")[0], denied
        # Proxy users: 3.0 computes the same salted SHA-256 (sha2, b64dec, concat, strcmp).
        ask = f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: x\r\n"
        refused = _raw(staff, f"{ask}\r\n".encode())
        assert refused.startswith(b"HTTP/1.1 407"), refused
        assert b'Basic realm="staff"' in refused
        good = base64.b64encode(b"bob:b0b-pw").decode()
        authed = _raw(
            staff,
            f"{ask}Proxy-Authorization: Basic {good}\r\n\r\n"
            "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode(),
        )
        assert authed.startswith(b"HTTP/1.1 200 Connection established"), authed
        plain = _raw(
            staff,
            f"GET http://127.0.0.1:{echo.port}/ HTTP/1.0\r\n"
            f"Proxy-Authorization: Basic {good}\r\n\r\n".encode(),
        )
        assert b" 200 " in plain.split(b"\r\n")[0], plain
        assert b"proxy-authorization" not in plain.lower()
        # audit: one JSON object per request of the audited routes, in the container's log.
        lines: list[dict[str, Any]] = []

        def audited() -> bool:
            lines[:] = [
                json.loads(line[line.index("{") :])
                for line in router.logs().splitlines()
                if '{"type":"egress-audit"' in line
            ]
            return {"hooked", "guarded"} <= {ln["route"] for ln in lines}

        wait_for(audited, timeout=10)
    by_route = {ln["route"]: ln for ln in lines}
    assert by_route["hooked"]["destination"] == {
        "name": "127.0.0.1",
        "address": "127.0.0.1",
        "port": str(echo.port),
    }
    assert by_route["hooked"]["verdict"] == "allowed"
    assert by_route["guarded"]["verdict"] == "denied"
    assert by_route["guarded"]["rule"] == "allow_from"
    assert by_route["guarded"]["status"] == 403


def test_a_cpu_limit_sets_haproxys_threads(
    image: BuiltImage, volume: ConfigMapVolume, origin: HttpOrigin
) -> None:
    """haproxy counts the CPUs it may run on, not the CFS quota; the router renders nbthread
    from the limit, so a 1-CPU pod runs one thread whatever the node's size."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail(
            "needs 2 CPUs to tell a limit from the machine (this project's machines have 2)"
        )
    volume.write({"routes.yaml": _routes()})
    route_port = free_port()
    # The CPU limit decides the threads of the sinks that run several (the relay runs one).
    env = {**_seed_env(route_port, origin), "EGRESS_LOG": "socklog"}
    with running_router(image, volume.directory, env, route_port, cpus=1) as router:
        code, cfg = router.exec("cat", f"{RUN_DIR}/haproxy.cfg")
        assert code == 0
        assert "\n    nbthread 1\n" in cfg
        assert http_get(route_port) == "origin-a"
    with running_router(image, volume.directory, env, route_port) as router:
        code, cfg = router.exec("cat", f"{RUN_DIR}/haproxy.cfg")
        assert code == 0
        assert "nbthread" not in cfg  # no limit: haproxy picks, one thread per CPU
