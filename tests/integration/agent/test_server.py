"""The gRPC server's wiring: mutual TLS, plaintext only when asked, bounded slots, graceful shutdown.
The kubelet here is a double that blocks until released (no CRIU needed for these)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from integration.agent.harness import Pki
from prometheus_client import REGISTRY

from lpm.agent import config
from lpm.agent import freezer as fz
from lpm.agent.deps import Deps
from lpm.agent.images import ImageLoader
from lpm.agent.kubelet import CheckpointResult, KubeletUnavailable
from lpm.agent.server import AgentServer
from lpm.api.agent.v1 import agent_pb2, agent_pb2_grpc
from lpm.storage.posix import PosixBackend
from lpm.storage.store import CheckpointStore

POD = "6a2b3c4d-1111-4222-8333-944455556666"


@dataclass
class BlockingKubelet:
    archive_dir: Path
    release: threading.Event
    entered: threading.Semaphore

    def checkpoint(self, namespace: str, pod: str, container: str, timeout: float) -> CheckpointResult:
        self.entered.release()
        if not self.release.wait(30):
            raise KubeletUnavailable("never released")
        path = self.archive_dir / f"checkpoint-{pod}-{container}.tar"
        path.write_bytes(b"not really a tar, but bytes to store" * 100)
        return CheckpointResult(str(path), path, 1, 0.0)

    def pods(self) -> list[dict]:
        return []

    def close(self) -> None:
        pass


def make_server(tmp_path: Path, *flags: str, max_concurrent: int = 1) -> tuple[AgentServer, BlockingKubelet]:
    cfg = config.parse(["--listen", "127.0.0.1:0", "--node-name", "n1", "--storage", str(tmp_path / "repo"), *flags])
    (tmp_path / "repo").mkdir(exist_ok=True)
    (tmp_path / "archives").mkdir(exist_ok=True)
    kubelet = BlockingKubelet(tmp_path / "archives", threading.Event(), threading.Semaphore(0))
    deps = Deps(
        node_name="n1",
        store=CheckpointStore(PosixBackend(tmp_path / "repo"), "n1"),
        kubelet=kubelet,  # type: ignore[arg-type]
        freezer=fz.Freezer(lambda uid, name: Path("/nonexistent"), tmp_path / "state"),
        images=ImageLoader(runtime="podman"),
        max_concurrent=max_concurrent,
        queue_timeout=0.2,
    )
    return AgentServer(cfg, deps), kubelet


def request(checkpoint_id: str) -> agent_pb2.CheckpointRequest:
    return agent_pb2.CheckpointRequest(
        pod_namespace="default",
        pod_name="web",
        container_name="app",
        pod_uid=POD,
        checkpoint_id=checkpoint_id,
        options=agent_pb2.CheckpointOptions(leave_running=True),
    )


@pytest.fixture
def insecure(tmp_path: Path) -> Iterator[tuple[AgentServer, BlockingKubelet, agent_pb2_grpc.CheckpointServiceStub]]:
    server, kubelet = make_server(tmp_path, "--insecure")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield server, kubelet, agent_pb2_grpc.CheckpointServiceStub(channel)
    kubelet.release.set()
    channel.close()
    server.stop(grace=1)


def _rpcs(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("lpm_agent_rpc_total", {"method": method, "code": code}) or 0.0


def test_a_busy_agent_answers_resource_exhausted_instead_of_queueing_forever(insecure) -> None:
    server, kubelet, stub = insecure
    busy_before, ok_before = _rpcs("Checkpoint", "RESOURCE_EXHAUSTED"), _rpcs("Checkpoint", "OK")
    first = stub.Checkpoint.future(request("slot-a"), timeout=30)
    assert kubelet.entered.acquire(timeout=10)  # the only slot is taken
    with pytest.raises(grpc.RpcError) as busy:
        stub.Checkpoint(request("slot-b"), timeout=30)
    assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Freeze/Thaw/GetCapabilities do not wait for checkpoint slots.
    assert stub.GetCapabilities(agent_pb2.GetCapabilitiesRequest(), timeout=5).node_name == "n1"
    kubelet.release.set()
    assert first.result().artifact.artifact_uri.endswith("/slot-a/app/dump.tar.zst")
    assert list(kubelet.archive_dir.iterdir()) == [], "the node-local archive is deleted once stored"
    # Every answer is counted by method and status for the agent's metrics endpoint.
    assert _rpcs("Checkpoint", "RESOURCE_EXHAUSTED") == busy_before + 1
    assert _rpcs("Checkpoint", "OK") == ok_before + 1
    assert (REGISTRY.get_sample_value("lpm_agent_rpc_duration_seconds_count", {"method": "Checkpoint"}) or 0) >= 2


def test_graceful_shutdown_lets_a_running_checkpoint_finish_and_refuses_new_calls(tmp_path: Path) -> None:
    server, kubelet = make_server(tmp_path, "--insecure")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = agent_pb2_grpc.CheckpointServiceStub(channel)
    running = stub.Checkpoint.future(request("grace-a"), timeout=30)
    assert kubelet.entered.acquire(timeout=10)
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 20})
    stopper.start()
    threading.Timer(0.5, kubelet.release.set).start()
    assert running.result().checkpoint_id == "grace-a"
    stopper.join()
    with pytest.raises(grpc.RpcError) as after:
        stub.GetCapabilities(agent_pb2.GetCapabilitiesRequest(), timeout=2)
    assert after.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()


def test_tls_is_required_unless_insecure_is_explicit(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--insecure"):
        make_server(tmp_path)


def test_mutual_tls_accepts_a_client_certificate_from_the_ca_and_refuses_none(tmp_path: Path, pki: Pki) -> None:
    server, _ = make_server(
        tmp_path,
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-client-ca",
        str(pki.ca),
    )
    server.start()
    try:
        target = f"localhost:{server.port}"
        good = grpc.ssl_channel_credentials(
            pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
        )
        with grpc.secure_channel(target, good) as channel:
            caps = agent_pb2_grpc.CheckpointServiceStub(channel).GetCapabilities(
                agent_pb2.GetCapabilitiesRequest(), timeout=10
            )
            assert caps.node_name == "n1"
        anonymous = grpc.ssl_channel_credentials(pki.ca.read_bytes())
        with grpc.secure_channel(target, anonymous) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                agent_pb2_grpc.CheckpointServiceStub(channel).GetCapabilities(
                    agent_pb2.GetCapabilitiesRequest(), timeout=10
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(grace=0)


def test_the_agent_process_shuts_down_cleanly_on_sigterm(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    (tmp_path / "repo").mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lpm.agent.main",
            "--insecure",
            "--listen",
            "127.0.0.1:0",
            "--storage",
            str(tmp_path / "repo"),
            "--state-dir",
            str(tmp_path / "state"),
            "--kubelet-url",
            "https://127.0.0.1:1",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert agent.stderr is not None
    port = 0
    for line in agent.stderr:
        if "listening on port" in line:
            port = int(line.rsplit(" ", 1)[1])
            break
    assert port, "the agent never reported its port"
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        serving = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert serving.status == health_pb2.HealthCheckResponse.SERVING
    agent.send_signal(signal.SIGTERM)
    try:
        _, rest = agent.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        agent.kill()
        _, rest = agent.communicate()
        raise AssertionError(f"the agent ignored SIGTERM; its log:\n{rest}") from None
    assert agent.returncode == 0
    assert "lpm-agent stopped" in rest


def test_list_checkpoints_names_what_the_repository_holds_and_delete_removes_it(insecure) -> None:
    """The controller's orphan sweep sees the repository through these two calls of a real agent."""
    server, kubelet, stub = insecure
    kubelet.release.set()
    stub.Checkpoint(request("kept"), timeout=30)
    stub.CompleteCheckpoint(
        agent_pb2.CompleteCheckpointRequest(pod_uid=POD, checkpoint_id="kept", container_names=["app"]), timeout=30
    )
    stub.Checkpoint(request("unsealed"), timeout=30)
    listed = stub.ListCheckpoints(agent_pb2.ListCheckpointsRequest(), timeout=10).checkpoints
    assert [(c.pod_uid, c.checkpoint_id, c.complete) for c in listed] == [
        (POD, "kept", True),
        (POD, "unsealed", False),
    ]
    gone = stub.DeleteCheckpoint(agent_pb2.DeleteCheckpointRequest(pod_uid=POD, checkpoint_id="unsealed"), timeout=10)
    assert gone.existed
    listed = stub.ListCheckpoints(agent_pb2.ListCheckpointsRequest(), timeout=10).checkpoints
    assert [c.checkpoint_id for c in listed] == ["kept"]
