"""The storage tests' engine: podman's Docker-compatible API, and an nfs-ganesha server started through it.

The kernel here has no NFS client, so the tests speak NFSv3 from user space (nfs-rs) to a real server in a
container. testcontainers-python drives podman through `podman system service`; the service is started here
for the session and stopped after, ryuk is off (there is no ryuk image: nothing is pulled from a registry),
and the ports are published on 127.0.0.1 through slirp4netns (containers.conf), never the netavark bridge.

Shared by the contract suite (conftest.py) and the benchmark (tests/bench/storage).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import nfs_rs
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import LogMessageWaitStrategy

HERE: Final = pathlib.Path(__file__).resolve().parent
OWNER_LABEL: Final = "lpm.test.storage.owner-pid"
NFS_PORT: Final = 2049
MOUNT_PORT: Final = 20048
MAIN_EXPORT: Final = "/export"
SMALL_EXPORT: Final = "/small"
SMALL_EXPORT_SIZE: Final = "8m"
READY_LINE: Final = "NFS SERVER INITIALIZED"
PR_SET_PDEATHSIG: Final = 1
SCRATCH_MOUNT_PREFIX: Final = "lpm-test-storage-"


def _repo_file(relative: str) -> pathlib.Path:
    """A file the tests depend on (a `files` target), found above this module in the repo or the sandbox."""
    for base in (HERE, *HERE.parents):
        candidate = base / relative
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{relative} not found above {HERE}: is it a dependency of the test target?")


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(_repo_file("tests/integration/storage/containers.conf"))}


def ensure_host() -> None:
    """Installs the engine on a fresh machine (setup-host.sh is idempotent and quick when all is there)."""
    if all(shutil.which(tool) for tool in ("podman", "slirp4netns", "debootstrap", "nfs-cp")):
        return
    subprocess.run([str(_repo_file("tests/integration/storage/setup-host.sh"))], check=True)


def build_image() -> str:
    """The NFS server image's tag; built from Debian packages on first use, then cached by content hash."""
    out = subprocess.run(
        [str(_repo_file("src/docker/nfs-server/build.sh"))],
        env=podman_env(),
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


def _remove_orphans() -> None:
    """Containers left by a test process that died without cleaning up (its owner PID is gone)."""
    listing = subprocess.run(
        [
            "podman",
            "ps",
            "-a",
            "--filter",
            f"label={OWNER_LABEL}",
            "--format",
            f'{{{{.ID}}}} {{{{index .Labels "{OWNER_LABEL}"}}}}',
        ],
        env=podman_env(),
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    for line in listing.stdout.splitlines():
        container_id, _, pid = line.partition(" ")
        if pid.isdigit() and not pathlib.Path(f"/proc/{pid}").exists():
            subprocess.run(["podman", "rm", "-f", container_id], env=podman_env(), capture_output=True, check=False)


@contextlib.contextmanager
def scratch_tmpfs(mountpoint: pathlib.Path, size: str) -> Iterator[pathlib.Path]:
    """A tmpfs of `size` at `mountpoint`, unmounted after; ones left by dead test processes are unmounted first."""
    for line in pathlib.Path("/proc/self/mounts").read_text().splitlines():
        source, target = line.split()[:2]
        pid = source.removeprefix(SCRATCH_MOUNT_PREFIX)
        if source.startswith(SCRATCH_MOUNT_PREFIX) and pid.isdigit() and not pathlib.Path(f"/proc/{pid}").exists():
            subprocess.run(["umount", "-l", target], check=False)
    source = f"{SCRATCH_MOUNT_PREFIX}{os.getpid()}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", source, str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@contextlib.contextmanager
def podman_api(workdir: pathlib.Path) -> Iterator[str]:
    """Runs `podman system service` on a private socket and points testcontainers at it while open."""
    ensure_host()
    _remove_orphans()
    sock = workdir / "podman.sock"
    url = f"unix://{sock}"
    with open(workdir / "podman-service.log", "wb") as log:
        service = subprocess.Popen(
            ["podman", "system", "service", "--time=0", url],
            env=podman_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # the test process may be SIGKILLed (timeout): never leave the service
        )
    saved = {k: os.environ.get(k) for k in ("DOCKER_HOST", "TESTCONTAINERS_RYUK_DISABLED", "CONTAINERS_CONF")}
    try:
        deadline = time.monotonic() + 30
        while not _ping(sock):
            if service.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"podman API service did not come up on {url}: {(workdir / 'podman-service.log').read_text()}"
                )
            time.sleep(0.1)
        os.environ.update(
            DOCKER_HOST=url, TESTCONTAINERS_RYUK_DISABLED="true", CONTAINERS_CONF=podman_env()["CONTAINERS_CONF"]
        )
        yield url
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=15)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _ping(sock: pathlib.Path) -> bool:
    if not sock.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            return b"200" in s.recv(64)
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NfsServer:
    """A running nfs-ganesha container: `/export` is a bind mount of `export_dir`, `/small` a tiny tmpfs."""

    container: DockerContainer
    export_dir: pathlib.Path
    nfs_port: int
    mount_port: int

    def url(self, export: str = MAIN_EXPORT, subdir: str = "") -> str:
        path = f"{export}/{subdir}".rstrip("/")
        return f"nfs://127.0.0.1:{self.nfs_port}{path}?version=3&mountport={self.mount_port}"

    def stop(self) -> None:
        self.container.get_wrapped_container().stop(timeout=1)

    def start(self) -> None:
        self.container.get_wrapped_container().start()
        self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                nfs_rs.Client.connect(self.url(), connect_timeout=2, operation_timeout=2).close()
                return
            except nfs_rs.NfsError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def mkdir(self, subdir: str) -> None:
        """Creates `subdir` under the main export (as a test's private repository root)."""
        (self.export_dir / subdir).mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def nfs_server(export_dir: pathlib.Path) -> Iterator[NfsServer]:
    """Starts the NFS server through testcontainers (the podman API must be up: see podman_api)."""
    image = build_image()
    nfs_port, mount_port = free_port(), free_port()
    container = (
        DockerContainer(image)
        .with_volume_mapping(str(export_dir), MAIN_EXPORT, "rw")
        .with_tmpfs_mount(SMALL_EXPORT, f"size={SMALL_EXPORT_SIZE}")  # docker-py passes the options verbatim
        # VFS exports need open_by_handle_at(2): without CAP_DAC_READ_SEARCH every call is NFS3ERR_PERM.
        .with_kwargs(cap_add=["DAC_READ_SEARCH"], network_mode="slirp4netns", labels={OWNER_LABEL: str(os.getpid())})
        .waiting_for(LogMessageWaitStrategy(READY_LINE))
    )
    # testcontainers' with_bind_ports cannot take a host IP; docker-py's port map can.
    container.ports[f"{NFS_PORT}/tcp"] = ("127.0.0.1", nfs_port)  # type: ignore[assignment]
    container.ports[f"{MOUNT_PORT}/tcp"] = ("127.0.0.1", mount_port)  # type: ignore[assignment]
    with container:
        server = NfsServer(container, export_dir, nfs_port, mount_port)
        server.wait_ready()
        yield server
