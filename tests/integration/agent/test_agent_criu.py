"""The agent end to end with real runc + CRIU: checkpoint through the kubelet API, store, verify, convert to a
checkpoint image, restore; and the faults around it. Each test says the behaviour in its name."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from integration.agent.conftest import TEST_BACKOFF, Agent, Containers, agent_config
from integration.agent.harness import TCP_COUNTER, RuncKubelet, restore_from_image_dir, runc_state, wait_for

from lpm.agent.deps import build_deps
from lpm.agent.server import AgentServer
from lpm.api.agent.v1 import agent_pb2, agent_pb2_grpc
from lpm.api.constants import IMAGE_ANNOTATION_CRIO_CHECKPOINT_NAME, IMAGE_ANNOTATION_CRIU_CONTAINER_NAME
from lpm.storage.uri import ArtifactRef


def checkpoint(
    agent: Agent, pod, checkpoint_id: str, leave_running: bool = False, **kw
) -> agent_pb2.CheckpointResponse:
    return agent.stub.Checkpoint(
        agent_pb2.CheckpointRequest(
            pod_namespace=pod.namespace,
            pod_name=pod.name,
            container_name=kw.get("container", pod.container),
            pod_uid=pod.uid,
            checkpoint_id=checkpoint_id,
            options=agent_pb2.CheckpointOptions(
                leave_running=leave_running, await_freeze=kw.get("await_freeze", False)
            ),
        ),
        timeout=120,
    )


def freeze(
    agent: Agent, pod, checkpoint_id: str, after: float | None = None, await_checkpoints: int = 0
) -> agent_pb2.FreezeResponse:
    req = agent_pb2.FreezeRequest(
        pod_namespace=pod.namespace,
        pod_name=pod.name,
        pod_uid=pod.uid,
        container_names=[pod.container],
        checkpoint_id=checkpoint_id,
    )
    if after is not None:
        req.auto_thaw_after.CopyFrom(duration_pb2.Duration(seconds=int(after), nanos=int((after % 1) * 1e9)))
    if await_checkpoints:
        req.await_checkpoints.CopyFrom(duration_pb2.Duration(seconds=await_checkpoints))
    return agent.stub.Freeze(req, timeout=30)


def thaw(agent: Agent, pod, checkpoint_id: str) -> agent_pb2.ThawResponse:
    return agent.stub.Thaw(
        agent_pb2.ThawRequest(pod_uid=pod.uid, container_names=[pod.container], checkpoint_id=checkpoint_id),
        timeout=30,
    )


def complete(agent: Agent, pod, checkpoint_id: str) -> agent_pb2.CompleteCheckpointResponse:
    return agent.stub.CompleteCheckpoint(
        agent_pb2.CompleteCheckpointRequest(
            pod_uid=pod.uid, checkpoint_id=checkpoint_id, container_names=[pod.container]
        ),
        timeout=60,
    )


def convert(agent: Agent, uri: str, container: str = "app") -> agent_pb2.ConvertResponse:
    return agent.stub.ConvertCheckpointToImage(
        agent_pb2.ConvertRequest(artifact_uri=uri, container_name=container), timeout=120
    )


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=True).stdout


def test_migration_round_trip_restores_a_counter_that_continues_from_its_checkpointed_value(
    agent: Agent, kubelet: RuncKubelet, containers: Containers, tmp_path: Path
) -> None:
    pod = containers.counter()
    kubelet.add(pod)
    wait_for(lambda: pod.count() >= 20, "the counter to pass 20")

    frozen = freeze(agent, pod, "mig-1")
    assert frozen.containers[0].state == agent_pb2.FREEZE_STATE_FROZEN
    assert pod.freezer_state() == "FROZEN"
    at_freeze = pod.count()

    reply = checkpoint(agent, pod, "mig-1")
    # CRIU dumped the already-frozen cgroup and left it frozen: the source cannot run on.
    assert pod.freezer_state() == "FROZEN"
    assert runc_state(pod.container_id)["status"] == "paused"
    time.sleep(0.3)  # the counter ticks every 50 ms when running
    assert pod.count() == at_freeze

    uri = reply.artifact.artifact_uri
    assert uri == f"shared://{pod.uid}/mig-1/app/dump.tar.zst"
    assert reply.attempts == 1 and reply.node_name == "test-node"
    assert list(kubelet.checkpoint_dir.iterdir()) == [], "the node-local kubelet archive must be deleted"

    ref = ArtifactRef.parse(uri)
    archive = agent.repo / ref.archive_path
    manifest = json.loads((agent.repo / ref.manifest_path).read_text())
    assert manifest["size"] == archive.stat().st_size == reply.artifact.compressed_size_bytes
    assert manifest["raw_sha256"] == reply.artifact.raw_sha256 and manifest["compression"] == "zstd"
    assert manifest["criu_version"] and manifest["node_name"] == "test-node"
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert stat.S_IMODE(archive.parent.stat().st_mode) == 0o700

    # Not restorable before the completion marker.
    with pytest.raises(grpc.RpcError) as early:
        convert(agent, uri)
    assert early.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    sealed = complete(agent, pod, "mig-1")
    assert [a.sha256 for a in sealed.artifacts] == [reply.artifact.sha256]

    image = convert(agent, uri)
    assert image.image_ref == "localhost/lpm-checkpoint/app:mig-1"
    inspect = json.loads(podman("image", "inspect", image.image_ref))[0]
    assert inspect["Annotations"][IMAGE_ANNOTATION_CRIO_CHECKPOINT_NAME] == "app"
    assert inspect["Annotations"][IMAGE_ANNOTATION_CRIU_CONTAINER_NAME] == "app"

    # Restore from the image's contents as the runtime stores them.
    mount = Path(podman("image", "mount", image.image_ref).strip())
    assert sorted(p.name for p in mount.iterdir()) == ["checkpoint", "config.dump", "spec.dump"]
    restored = containers.track(restore_from_image_dir(mount, tmp_path / "restored", containers.cgroup_parent))
    first = wait_for(restored.count, "the restored counter to write")
    assert first > at_freeze, f"restored counter restarted at {first}, checkpointed at {at_freeze}"
    wait_for(lambda: restored.count() > first, "the restored counter to keep counting")

    thawed = thaw(agent, pod, "mig-1")  # rollback path: the source runs again
    assert thawed.containers[0].state == agent_pb2.FREEZE_STATE_THAWED
    wait_for(lambda: pod.count() > at_freeze, "the thawed source to count again")


def test_kubelet_500_twice_then_success_is_retried_and_completes(
    agent: Agent, kubelet: RuncKubelet, containers: Containers
) -> None:
    """The fault matrix's kubelet case, at the kubelet boundary: a transient 500 (not CRIU's) is transport."""
    pod = containers.counter()
    kubelet.add(pod)
    kubelet.faults.extend([(500, "rpc error: code = Unknown desc = transient")] * 2)
    reply = checkpoint(agent, pod, "retry-1")
    assert reply.attempts == 3
    assert len(kubelet.checkpoint_requests()) == 3
    assert reply.artifact.artifact_uri.endswith("/retry-1/app/dump.tar.zst")
    assert pod.freezer_state() == "FROZEN", "a migration's source stays frozen after its checkpoint"
    thaw(agent, pod, "retry-1")


def test_kubelet_404_is_not_retried_and_reports_not_found(
    agent: Agent, kubelet: RuncKubelet, containers: Containers
) -> None:
    pod = containers.counter()
    kubelet.add(pod)
    with pytest.raises(grpc.RpcError) as err:
        checkpoint(agent, pod, "nf-1", leave_running=True, container="missing")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "404" in err.value.details()
    assert len(kubelet.checkpoint_requests()) == 1


def test_kubelet_5xx_beyond_the_retries_is_unavailable(
    agent: Agent, kubelet: RuncKubelet, containers: Containers
) -> None:
    pod = containers.counter()
    kubelet.add(pod)
    kubelet.faults.extend([(503, "down")] * (TEST_BACKOFF.retries + 1))
    with pytest.raises(grpc.RpcError) as err:
        checkpoint(agent, pod, "down-1", leave_running=True)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(kubelet.checkpoint_requests()) == TEST_BACKOFF.retries + 1


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupted_or_truncated_archive_is_refused_with_data_loss(
    agent: Agent, kubelet: RuncKubelet, containers: Containers, damage: str
) -> None:
    pod = containers.counter()
    kubelet.add(pod)
    reply = checkpoint(agent, pod, f"bad-{damage}", leave_running=True)
    complete(agent, pod, f"bad-{damage}")
    archive = agent.repo / ArtifactRef.parse(reply.artifact.artifact_uri).archive_path
    data = bytearray(archive.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    archive.write_bytes(bytes(data))
    with pytest.raises(grpc.RpcError) as err:
        convert(agent, reply.artifact.artifact_uri)
    assert err.value.code() == grpc.StatusCode.DATA_LOSS
    # ... and sealing again refuses too.
    with pytest.raises(grpc.RpcError) as again:
        complete(agent, pod, f"bad-{damage}")
    assert again.value.code() == grpc.StatusCode.DATA_LOSS


CRASHING_WRITER = textwrap.dedent(
    """
    import io, os, signal, sys
    from lpm.storage.posix import PosixBackend
    from lpm.storage.store import CheckpointStore
    from lpm.storage.uri import ArtifactRef
    backend = PosixBackend(sys.argv[1])
    def crash(src, dst):  # killed after the temp file is written and synced, before the rename
        os.kill(os.getpid(), signal.SIGKILL)
    backend.rename = crash
    store = CheckpointStore(backend, "test-node")
    store.put_archive(ArtifactRef(sys.argv[2], "crash-1", "app"), io.BytesIO(os.urandom(1 << 20)))
    """
)


def test_crash_between_temp_write_and_rename_is_never_readable_and_cleaned_on_restart(
    agent: Agent, kubelet: RuncKubelet, pki, tmp_path: Path
) -> None:
    uid = "0b7a3c1e-2f4d-4e5a-9b6c-7d8e9f0a1b2c"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, "-c", CRASHING_WRITER, str(agent.repo), uid], env=env, check=False)
    assert done.returncode == -signal.SIGKILL
    ref = ArtifactRef(uid, "crash-1", "app")
    left = list((agent.repo / ref.relative_dir).iterdir())
    assert len(left) == 1 and left[0].name.startswith(".dump.tar.zst.tmp-testnode-")

    with pytest.raises(grpc.RpcError) as err:
        agent.stub.CompleteCheckpoint(
            agent_pb2.CompleteCheckpointRequest(pod_uid=uid, checkpoint_id="crash-1", container_names=["app"]),
            timeout=30,
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as err:
        convert(agent, ref.uri)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # An agent starting on the same node removes its own dead writer's temp file.
    cfg = agent_config(tmp_path, kubelet, pki)
    restarted = AgentServer(cfg, build_deps(cfg, backoff=TEST_BACKOFF))
    restarted.start()
    try:
        assert list((agent.repo / ref.relative_dir).iterdir()) == []
    finally:
        restarted.stop(grace=0)


def test_two_checkpoints_of_the_same_pod_run_concurrently_and_both_complete(
    agent: Agent, kubelet: RuncKubelet, containers: Containers
) -> None:
    pod = containers.counter()
    kubelet.add(pod)
    replies: dict[str, agent_pb2.CheckpointResponse] = {}
    errors: list[BaseException] = []

    def run(checkpoint_id: str) -> None:
        try:
            replies[checkpoint_id] = checkpoint(agent, pod, checkpoint_id, leave_running=True)
            complete(agent, pod, checkpoint_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(cid,)) for cid in ("conc-a", "conc-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    uris = {r.artifact.artifact_uri for r in replies.values()}
    assert uris == {f"shared://{pod.uid}/conc-{x}/app/dump.tar.zst" for x in "ab"}
    for cid in ("conc-a", "conc-b"):
        assert (agent.repo / pod.uid / cid / ".checkpoint-complete").exists()
        with tarfile.open(fileobj=_raw_tar(agent, replies[cid])) as tar:
            assert "checkpoint/inventory.img" in tar.getnames()


def _raw_tar(agent: Agent, reply: agent_pb2.CheckpointResponse):
    import io

    from lpm.storage.posix import PosixBackend
    from lpm.storage.store import CheckpointStore

    store = CheckpointStore(PosixBackend(agent.repo))
    return io.BytesIO(b"".join(store.read_raw(ArtifactRef.parse(reply.artifact.artifact_uri))))


def test_frozen_counter_does_not_advance_and_advances_again_after_thaw(
    agent: Agent, kubelet: RuncKubelet, containers: Containers
) -> None:
    pod = containers.counter()
    kubelet.add(pod)
    freeze(agent, pod, "ft-1")
    freeze(agent, pod, "ft-1")  # idempotent per checkpoint ID
    at_freeze = pod.count()
    time.sleep(0.5)  # ten ticks of a running counter
    assert pod.count() == at_freeze
    with pytest.raises(grpc.RpcError) as conflict:
        freeze(agent, pod, "ft-2")
    assert conflict.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    thaw(agent, pod, "ft-1")
    thaw(agent, pod, "ft-1")  # idempotent
    wait_for(lambda: pod.count() > at_freeze, "the counter to advance after thaw")


def test_frozen_container_is_thawed_after_its_deadline_even_across_an_agent_restart(
    agent: Agent, kubelet: RuncKubelet, containers: Containers, pki, tmp_path: Path
) -> None:
    pod = containers.counter()
    kubelet.add(pod)
    freeze(agent, pod, "dl-1", after=1.5)
    assert pod.freezer_state() == "FROZEN"
    agent.server.stop(grace=0)  # the agent dies; its record stays in the state dir
    assert list(agent.state_dir.glob("freeze-dl-1.json"))
    assert pod.freezer_state() == "FROZEN"
    cfg = agent_config(tmp_path, kubelet, pki)
    restarted = AgentServer(cfg, build_deps(cfg, backoff=TEST_BACKOFF))
    restarted.start()
    try:
        wait_for(lambda: pod.freezer_state() == "THAWED", "the auto-thaw")
        wait_for(lambda: not list(agent.state_dir.glob("freeze-dl-1.json")), "the record to go")
    finally:
        restarted.stop(grace=0)


def test_unknown_pod_is_not_found_and_bad_names_are_invalid(agent: Agent, kubelet: RuncKubelet) -> None:
    bad = agent_pb2.CheckpointRequest(
        pod_namespace="default", pod_name="x", container_name="Bad_Name", pod_uid="nope", checkpoint_id="c"
    )
    with pytest.raises(grpc.RpcError) as err:
        agent.stub.Checkpoint(bad, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        agent.stub.Freeze(
            agent_pb2.FreezeRequest(
                pod_uid="11111111-2222-4333-8444-555555555555", container_names=["app"], checkpoint_id="c"
            ),
            timeout=10,
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    caps = agent.stub.GetCapabilities(agent_pb2.GetCapabilitiesRequest(), timeout=10)
    assert caps.criu_version.startswith("4.") and caps.freeze_supported and caps.runtime_name == "podman"


def test_health_and_reflection_are_served(agent: Agent) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(agent.channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="lpm.agent.v1.CheckpointService"), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    refl = reflection_pb2_grpc.ServerReflectionStub(agent.channel)
    answers = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answers[0].list_services_response.service}
    assert "lpm.agent.v1.CheckpointService" in names


__all__ = ["agent_pb2_grpc"]


def test_runc_container_frozen_before_runc_checkpoint_is_dumped_correctly_and_stays_frozen(
    kubelet: RuncKubelet, containers: Containers, tmp_path: Path
) -> None:
    """The substrate fact the migration relies on, with no agent in between: our freezer, then runc + CRIU."""
    from lpm.agent import freezer as fz

    pod = containers.counter()
    kubelet.add(pod)
    wait_for(lambda: pod.count() >= 5, "the counter to run")
    cgroup = Path("/sys/fs/cgroup/freezer") / pod.cgroup_parent.lstrip("/") / f"pod{pod.uid}" / pod.container_id
    assert fz.find_container_cgroup(Path("/sys/fs/cgroup/freezer"), pod.uid, pod.container_id) == cgroup
    fz.freeze_cgroup(cgroup)
    at_freeze = pod.count()
    node_path = kubelet._checkpoint(pod)  # runc checkpoint --leave-running of the frozen container
    assert fz.cgroup_state(cgroup) == fz.FROZEN and runc_state(pod.container_id)["status"] == "paused"
    time.sleep(0.3)
    assert pod.count() == at_freeze

    extracted = tmp_path / "extracted"
    with tarfile.open(kubelet.checkpoint_dir / Path(node_path).name) as tar:
        tar.extractall(extracted, filter="tar")
    restored = containers.track(restore_from_image_dir(extracted, tmp_path / "restored", containers.cgroup_parent))
    first = wait_for(restored.count, "the restored counter")
    assert first > at_freeze
    fz.thaw_cgroup(cgroup)
    wait_for(lambda: pod.count() > at_freeze, "the thawed source")


# ---- failure classes, CRIU's own words, fencing (real runc + CRIU) -------------------------------------------


def eligibility(agent: Agent, pod, tcp_established: bool = False) -> agent_pb2.EligibilityResponse:
    return agent.stub.CheckEligibility(
        agent_pb2.EligibilityRequest(
            pod_namespace=pod.namespace,
            pod_name=pod.name,
            pod_uid=pod.uid,
            container_names=[pod.container],
            tcp_established=tcp_established,
        ),
        timeout=30,
    )


def test_a_dump_criu_refuses_is_reported_once_with_criu_words_and_the_source_is_not_kept_frozen_by_retries(
    agent: Agent, kubelet: RuncKubelet, containers: Containers
) -> None:
    pod = containers.counter("tcp", script=TCP_COUNTER)
    kubelet.add(pod)
    wait_for(lambda: eligibility(agent, pod).connections.established >= 2, "the in-container TCP client to connect")
    with pytest.raises(grpc.RpcError) as err:
        checkpoint(agent, pod, "tcp-1")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert dict(err.value.trailing_metadata())["lpm-reason"] == "CheckpointRefused"
    details = err.value.details()
    assert "Connected TCP socket" in details and "spec.options.tcpEstablished" in details, details
    assert "/run/containerd" not in details and "criu-dump.log" not in details, details
    # CRIU's reason fails for certain: no repeat, no kubelet retry (the source stays frozen no longer than that).
    assert len(kubelet.checkpoint_requests()) == 1
    thawed = thaw(agent, pod, "tcp-1")
    assert thawed.containers[0].state == agent_pb2.FREEZE_STATE_THAWED
    assert thawed.containers[0].evidence == "freezer cgroup THAWED"
    assert pod.freezer_state() == "THAWED"


def test_eligibility_sees_the_in_container_tcp_connection_before_anything_is_frozen(
    agent: Agent, kubelet: RuncKubelet, containers: Containers
) -> None:
    pod = containers.counter("tcp", script=TCP_COUNTER)
    plain = containers.counter("plain")
    kubelet.add(pod)
    kubelet.add(plain)
    report = wait_for(lambda: (r := eligibility(agent, pod)).connections.established >= 2 and r, "the TCP client")
    assert report.connections.in_pod == report.connections.established and report.connections.external == 0
    assert [p.check for p in report.problems if p.blocking] == ["TCPConnectionOpen"]
    assert pod.freezer_state() == "THAWED", "checking froze nothing"
    allowed = eligibility(agent, pod, tcp_established=True)
    assert not [p for p in allowed.problems if p.blocking]
    clean = eligibility(agent, plain)
    assert clean.connections.established == 0 and not [p for p in clean.problems if p.blocking]


def test_a_rolled_back_checkpoint_id_never_freezes_the_source_again_even_from_a_late_call(
    agent: Agent, kubelet: RuncKubelet, containers: Containers
) -> None:
    """The outage of the TCP report: a Checkpoint still in flight when the migration gave up froze the source
    again, minutes after "thawed". Here the late call arrives after the rollback's Thaw and is refused."""
    pod = containers.counter()
    kubelet.add(pod)
    freeze(agent, pod, "late-1")
    thaw(agent, pod, "late-1")
    at_thaw = pod.count()
    for late in (lambda: checkpoint(agent, pod, "late-1"), lambda: freeze(agent, pod, "late-1")):
        with pytest.raises(grpc.RpcError) as err:
            late()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert dict(err.value.trailing_metadata())["lpm-reason"] == "CheckpointFenced"
    assert kubelet.checkpoint_requests() == [], "a fenced checkpoint never reaches the kubelet"
    assert pod.freezer_state() == "THAWED"
    wait_for(lambda: pod.count() > at_thaw + 5, "the source to keep counting")
    with pytest.raises(grpc.RpcError) as err:
        complete(agent, pod, "late-1")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, "a rolled-back checkpoint is never sealed"


def _in_thread(call: Callable[[], object]) -> tuple[threading.Thread, dict[str, object]]:
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["ok"] = call()
        except grpc.RpcError as exc:
            result["code"], result["reason"] = exc.code(), dict(exc.trailing_metadata() or ()).get("lpm-reason")

    t = threading.Thread(target=run)
    t.start()
    return t, result


def test_a_checkpoint_created_before_the_freeze_waits_for_it_then_dumps_the_pod_it_froze(
    agent: Agent, kubelet: RuncKubelet, containers: Containers
) -> None:
    """Freeze and Checkpoint meet at the agent: the Checkpoint neither freezes nor dumps the running pod; the
    Freeze waits for it, freezes, and the dump follows at once."""
    pod = containers.counter()
    kubelet.add(pod)
    t, result = _in_thread(lambda: checkpoint(agent, pod, "meet-1", await_freeze=True))
    before = pod.count()
    wait_for(lambda: pod.count() > before + 5, "the source to count on while its checkpoint waits")
    assert pod.freezer_state() == "THAWED" and kubelet.checkpoint_requests() == [] and t.is_alive()
    started = time.monotonic()
    freeze(agent, pod, "meet-1", await_checkpoints=10)
    assert time.monotonic() - started < 5, "the Checkpoint was already waiting: the Freeze did not wait it out"
    t.join(timeout=120)
    assert "ok" in result, result
    assert len(kubelet.checkpoint_requests()) == 1 and pod.freezer_state() == "FROZEN"
    frozen_at = pod.count()
    time.sleep(0.5)
    assert pod.count() == frozen_at, "dumped frozen, and it stays frozen"
    # A Freeze repeated (a controller's lost status write) renews the freeze at once: nothing to wait for.
    started = time.monotonic()
    freeze(agent, pod, "meet-1", await_checkpoints=10)
    assert time.monotonic() - started < 5
    thaw(agent, pod, "meet-1")


def test_a_rollback_before_the_freeze_fails_the_checkpoint_waiting_for_it_and_nothing_is_frozen_or_dumped(
    agent: Agent, kubelet: RuncKubelet, containers: Containers
) -> None:
    pod = containers.counter()
    kubelet.add(pod)
    t, result = _in_thread(lambda: checkpoint(agent, pod, "meet-2", await_freeze=True))
    time.sleep(0.5)
    assert t.is_alive(), "it waits for the freeze"
    thaw(agent, pod, "meet-2")
    t.join(timeout=10)
    assert not t.is_alive(), "the fence ends the wait at once"
    assert result.get("code") == grpc.StatusCode.FAILED_PRECONDITION and result.get("reason") == "CheckpointFenced"
    assert kubelet.checkpoint_requests() == [] and pod.freezer_state() == "THAWED"
    before = pod.count()
    wait_for(lambda: pod.count() > before + 5, "the source to count on")


def test_a_thaw_that_lands_while_the_kubelet_dumps_discards_the_archive_and_leaves_the_source_running(
    agent: Agent, kubelet: RuncKubelet, containers: Containers
) -> None:
    pod = containers.counter()
    kubelet.add(pod)
    # The kubelet answers 503 first: the call waits in its retry while the rollback thaws the source.
    kubelet.faults.append((503, "restarting"))
    t, result = _in_thread(lambda: checkpoint(agent, pod, "race-1"))
    wait_for(lambda: len(kubelet.checkpoint_requests()) >= 1, "the first kubelet attempt")
    thaw(agent, pod, "race-1")
    t.join(timeout=120)
    assert result.get("code") == grpc.StatusCode.FAILED_PRECONDITION, result
    assert pod.freezer_state() == "THAWED"
    assert not list((agent.repo).rglob("dump.tar.zst")), "no archive of a rolled-back checkpoint is stored"
    assert not list(kubelet.checkpoint_dir.iterdir()), "the kubelet's archive was removed"


def test_a_full_repository_fails_the_checkpoint_as_storage_full_and_leaves_nothing_behind(
    tmp_path: Path, kubelet: RuncKubelet, containers: Containers, podman_storage: Path
) -> None:
    repo = tmp_path / "small-repo"
    repo.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(repo)], check=True)
    try:
        (repo / "filler").write_bytes(b"\0" * (252 << 10))  # one 4 KiB page left
        cfg = agent_config(tmp_path, kubelet, kubelet.pki, "--storage", str(repo))
        server = AgentServer(cfg, build_deps(cfg, backoff=TEST_BACKOFF))
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        agent = Agent(server, agent_pb2_grpc.CheckpointServiceStub(channel), channel, repo, tmp_path / "state")
        pod = containers.counter()
        kubelet.add(pod)
        try:
            with pytest.raises(grpc.RpcError) as err:
                checkpoint(agent, pod, "full-1")
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert dict(err.value.trailing_metadata())["lpm-reason"] == "StorageFull"
            assert "no space left" in err.value.details()
            stored = [p for p in repo.rglob("*") if p.is_file() and p.name != "filler"]
            assert stored == [], f"partial artifacts left: {stored}"
            assert not list(kubelet.checkpoint_dir.iterdir()), "the kubelet's archive was removed"
            thaw(agent, pod, "full-1")
            assert pod.freezer_state() == "THAWED"
        finally:
            channel.close()
            server.stop(grace=1)
    finally:
        subprocess.run(["umount", str(repo)], check=False)
