"""Fixtures: a real agent (in-process gRPC server, real store, real freezer, podman image store) talking to a
kubelet stand-in that checkpoints runc containers with CRIU. Needs root, runc, criu >= 4.2, podman, busybox-static
(tests/integration/agent/setup-host.sh installs them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from integration.agent.harness import (
    COUNTER,
    Pki,
    RuncKubelet,
    RuncPod,
    make_pki,
    require_tools,
    runc_remove,
    start_counter,
)

from lpm.agent import config
from lpm.agent.deps import build_deps
from lpm.agent.kubelet import Backoff
from lpm.agent.server import AgentServer
from lpm.api.agent.v1 import agent_pb2_grpc

# Short retry waits for tests; the production default (5 x 2 s, x2) is asserted by the unit tests.
TEST_BACKOFF = Backoff(retries=3, initial=0.05, factor=2.0)


@pytest.fixture(scope="session", autouse=True)
def _tools() -> None:
    require_tools()


@pytest.fixture
def cgroup_parent() -> Iterator[str]:
    parent = f"/lpm-test-{uuid.uuid4().hex[:10]}/kubepods"
    yield parent
    top = parent.split("/")[1]
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        root = hierarchy / top
        if root.is_dir():
            for d in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if d.is_dir():
                    d.rmdir()
            root.rmdir()


@dataclass
class Containers:
    tmp: Path
    cgroup_parent: str
    started: list[RuncPod]

    def counter(self, name: str = "counter", script: str = COUNTER) -> RuncPod:
        pod = start_counter(self.tmp, self.cgroup_parent, name=name, script=script)
        self.started.append(pod)
        return pod

    def track(self, pod: RuncPod) -> RuncPod:
        self.started.append(pod)
        return pod


@pytest.fixture
def containers(tmp_path: Path, cgroup_parent: str) -> Iterator[Containers]:
    c = Containers(tmp_path / "bundles", cgroup_parent, [])
    c.tmp.mkdir()
    yield c
    for pod in c.started:
        # A frozen container cannot be killed until thawed.
        try:
            state = Path("/sys/fs/cgroup/freezer") / cgroup_parent.lstrip("/") / f"pod{pod.uid}" / pod.container_id
            if (state / "freezer.state").exists():
                (state / "freezer.state").write_text("THAWED")
        except OSError:
            pass
        runc_remove(pod.container_id)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def kubelet(tmp_path: Path, pki: Pki) -> Iterator[RuncKubelet]:
    k = RuncKubelet(tmp_path / "kubelet-checkpoints", tmp_path / "kubelet-work", pki)
    k.checkpoint_dir.mkdir()
    k.work_dir.mkdir()
    server = k.serve()
    yield k
    server.shutdown()
    server.server_close()


@pytest.fixture
def podman_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private podman (vfs storage, state and temp dirs), so the tests never touch the host's podman.

    Everything podman keeps lives under `root`, its temp dir (default /run/libpod) included: that directory is
    shared by every podman on the host, and removing it under a running container (as `podman system reset`
    does) breaks other users' containers, e.g. the storage tests' NFS server, whose restart then fails with
    "failed to open slirp4netns log file /run/libpod/...". Cleanup therefore removes only what is ours.
    """
    root = tmp_path / "containers"
    for sub in ("graph", "run", "tmp", "volumes"):
        (root / sub).mkdir(parents=True)
    conf = root / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{root / "graph"}"\nrunroot = "{root / "run"}"\n')
    containers_conf = root / "containers.conf"
    containers_conf.write_text(
        '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
        f'events_logfile_path = "{root / "events.log"}"\ntmp_dir = "{root / "tmp"}"\n'
        f'volume_path = "{root / "volumes"}"\nstatic_dir = "{root / "graph" / "libpod"}"\n'
    )
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(conf))
    monkeypatch.setenv("CONTAINERS_CONF", str(containers_conf))
    yield root
    subprocess.run(["podman", "image", "unmount", "--all", "--force"], capture_output=True, check=False)
    subprocess.run(["podman", "rmi", "--all", "--force"], capture_output=True, check=False)
    shutil.rmtree(root, ignore_errors=True)


@dataclass
class Agent:
    server: AgentServer
    stub: agent_pb2_grpc.CheckpointServiceStub
    channel: grpc.Channel
    repo: Path
    state_dir: Path


def agent_config(tmp_path: Path, kubelet: RuncKubelet, pki: Pki, *extra: str) -> config.AgentConfig:
    return config.parse(
        [
            "--insecure",
            "--listen",
            "127.0.0.1:0",
            "--node-name",
            "test-node",
            "--storage",
            str(tmp_path / "repo"),
            "--kubelet-url",
            kubelet.url,
            "--kubelet-client-cert",
            str(pki.client_cert),
            "--kubelet-client-key",
            str(pki.client_key),
            "--kubelet-ca",
            str(pki.ca),
            "--kubelet-checkpoint-dir",
            str(kubelet.checkpoint_dir),
            "--state-dir",
            str(tmp_path / "state"),
            "--work-dir",
            str(tmp_path / "work"),
            "--runtime",
            "podman",
            "--freeze-deadline",
            "120",
            "--runtime-task-dir",
            str(kubelet.task_dir),
            "--proc-root",
            "/proc",
            *extra,
        ]
    )


@pytest.fixture
def agent(tmp_path: Path, kubelet: RuncKubelet, pki: Pki, podman_storage: Path) -> Iterator[Agent]:
    (tmp_path / "repo").mkdir()
    cfg = agent_config(tmp_path, kubelet, pki)
    server = AgentServer(cfg, build_deps(cfg, backoff=TEST_BACKOFF))
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield Agent(server, agent_pb2_grpc.CheckpointServiceStub(channel), channel, tmp_path / "repo", tmp_path / "state")
    channel.close()
    server.stop(grace=1)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # The machine's outbound proxy must not see 127.0.0.1 gRPC/HTTPS traffic.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "grpc_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
