"""The controllers drive PodMigrations against a real API server, with agent doubles on the nodes."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import grpc
import pytest
from integration.controller import harness

PHASES = ["Pending", "Validating", "Freezing", "Checkpointing", "Converting", "Restoring", "Cleaning"]


def _pods(api, ns):
    return {p.metadata.name: p for p in harness.core(api).list_namespaced_pod(ns).items}


def _events(api, ns, name):
    return [e.reason for e in harness.core(api).list_namespaced_event(ns).items if e.involved_object.name == name]


def test_migration_goes_through_every_phase_and_restores_from_checkpoint_images(api, ns, agents, controller):
    harness.make_pod(api, ns, "web", "node-a", containers=("app", "sidecar"))
    source_uid = harness.core(api).read_namespaced_pod("web", ns).metadata.uid
    harness.create_migration(api, ns, "move-web", "web", "node-b")

    m = harness.wait_phase(api, ns, "move-web", {"Completed", "Failed"})
    st = m["status"]
    assert st["phase"] == "Completed", st
    assert set(PHASES) <= set(st["phaseDurationsSeconds"]), st["phaseDurationsSeconds"]
    assert st["sourceNode"] == "node-a" and st["podUID"] == source_uid
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"

    pods = _pods(api, ns)
    assert "web" not in pods, "the source pod is removed once the restored pod runs"
    restored = pods[st["restoredPodName"]]
    assert restored.spec.node_name == "node-b"
    assert not restored.metadata.owner_references
    images = {ci["containerName"]: ci["imageRef"] for ci in st["containerImages"]}
    for ctr in restored.spec.containers:
        assert ctr.image == images[ctr.name] and ctr.image_pull_policy == "Never"
    ann = restored.metadata.annotations
    assert ann["lpm.my.domain/source-pod"] == f"{ns}/web"
    assert ann["lpm.my.domain/migration"] == "move-web"
    assert ann["lpm.my.domain/checkpoint"] == st["podCheckpointName"]
    assert restored.metadata.labels["app"] == "web"

    # The source was frozen, checkpointed and sealed on node-a; the images were made on node-b; never thawed.
    a, b = agents["node-a"], agents["node-b"]
    assert len(a.calls_to("Freeze")) >= 1 and not a.calls_to("Thaw")
    assert sorted(r["container_name"] for r in a.calls_to("Checkpoint")) == ["app", "sidecar"]
    assert all(r["checkpoint_id"] == st["checkpointID"] for r in a.calls_to("Checkpoint"))
    assert a.calls_to("CompleteCheckpoint")[-1]["container_names"] == ["app", "sidecar"]
    assert sorted(r["container_name"] for r in b.calls_to("ConvertCheckpointToImage")) == ["app", "sidecar"]

    # PodCheckpoint Ready and bound both ways to its content; each ContainerCheckpoint likewise.
    pc = harness.get_cr(api, ns, "podcheckpoints", st["podCheckpointName"])
    assert pc["status"]["phase"] == "Ready"
    assert pc["metadata"]["ownerReferences"][0]["uid"] == m["metadata"]["uid"]
    pcc = harness.custom(api).get_cluster_custom_object(
        "lpm.my.domain", "v1", "podcheckpointcontents", pc["status"]["boundContentName"]
    )
    assert pcc["spec"]["podCheckpointRef"]["uid"] == pc["metadata"]["uid"] and pcc["status"]["readyToUse"]
    for state in pc["status"]["containers"]:
        cc = harness.get_cr(api, ns, "containercheckpoints", state["containerCheckpointName"])
        ccc = harness.custom(api).get_cluster_custom_object(
            "lpm.my.domain", "v1", "containercheckpointcontents", cc["status"]["boundContentName"]
        )
        assert ccc["spec"]["containerCheckpointRef"]["uid"] == cc["metadata"]["uid"]
        assert ccc["spec"]["artifactURI"] == cc["status"]["artifactURI"] == state["artifactURI"]
        assert cc["status"]["phase"] == "Ready"

    reasons = harness.wait(
        lambda: "Completed" in _events(api, ns, "move-web") and _events(api, ns, "move-web"), "events"
    )
    for phase in ["Validating", "Freezing", "Checkpointing", "Converting", "Restoring", "Cleaning", "Completed"]:
        assert phase in reasons, reasons


def test_finished_migrations_are_counted_and_timed_in_the_metrics(api, ns, agents, controller):
    started = datetime.now(UTC)
    before = controller.metric("lpm_migrations_finished_total", phase="Completed", reason="Completed")
    frozen_before = controller.metric("lpm_migration_source_frozen_seconds_count")
    harness.make_pod(api, ns, "web", "node-a")
    harness.create_migration(api, ns, "m", "web", "node-b")
    assert harness.wait_phase(api, ns, "m", {"Completed", "Failed"})["status"]["phase"] == "Completed"
    time.sleep(2)  # more cycles look at the finished migration; none may count it again
    # Exactly once per migration that Completed meanwhile (this one, and any other test's leftover).
    items = harness.custom(api).list_cluster_custom_object("lpm.my.domain", "v1", "podmigrations")["items"]
    completed = sum(
        1
        for m in items
        if (m.get("status") or {}).get("phase") == "Completed"
        and datetime.fromisoformat(m["status"]["completionTime"].replace("Z", "+00:00")) >= started
    )
    assert completed >= 1
    assert (
        controller.metric("lpm_migrations_finished_total", phase="Completed", reason="Completed") == before + completed
    )
    assert controller.metric("lpm_migration_source_frozen_seconds_count") == frozen_before + completed
    assert controller.metric("lpm_migration_duration_seconds_count", phase="Completed") >= 1
    assert controller.metric("lpm_migration_phase_duration_seconds_count", phase="Restoring") >= 1


@pytest.mark.parametrize(
    ("target", "owner", "reason"),
    [
        ("node-down", None, "TargetNodeNotReady"),
        ("node-cordoned", None, "TargetNodeUnschedulable"),
        ("node-nowhere", None, "TargetNodeNotFound"),
        ("node-a", None, "TargetIsSourceNode"),
        ("node-b", "ReplicaSet", "PodHasController"),
    ],
)
def test_validation_fails_before_touching_anything(api, ns, agents, controller, target, owner, reason):
    ref = None
    if owner:
        ref = {
            "apiVersion": "apps/v1",
            "kind": owner,
            "name": "web-rs",
            "uid": "11111111-2222-3333-4444-555555555555",
            "controller": True,
        }
    harness.make_pod(api, ns, "web", "node-a", owner=ref)
    harness.create_migration(api, ns, "m", "web", target)
    st = harness.wait_phase(api, ns, "m", {"Completed", "Failed"})["status"]
    assert st["phase"] == "Failed" and st["reason"] == reason, st
    assert st["message"]
    assert not agents["node-a"].calls_to("Freeze")
    assert harness.get_cr(api, ns, "podcheckpoints", "m-checkpoint") is None
    assert list(_pods(api, ns)) == ["web"]


def test_second_migration_of_the_same_pod_is_refused(api, ns, controller):
    harness.make_pod(api, ns, "web", "node-a")
    harness.create_migration(api, ns, "first", "web", "node-b", sourcePolicy="KeepRunning", sourceCleanup="Retain")
    harness.create_migration(api, ns, "second", "web", "node-c")
    second = harness.wait_phase(api, ns, "second", {"Completed", "Failed"})["status"]
    first = harness.wait_phase(api, ns, "first", {"Completed", "Failed"})["status"]
    assert first["phase"] == "Completed"
    assert second["phase"] == "Failed" and second["reason"] == "AnotherMigrationActive"


def test_checkpoint_failure_rolls_back_thaws_source_and_names_the_container(api, ns, agents, controller):
    harness.make_pod(api, ns, "web", "node-a", containers=("app", "db"))
    agents["node-a"].fail(
        "Checkpoint", grpc.StatusCode.FAILED_PRECONDITION, "kubelet: checkpointing is not supported", times=2
    )
    harness.create_migration(api, ns, "m", "web", "node-b")
    st = harness.wait_phase(api, ns, "m", {"Completed", "Failed"})["status"]
    assert st["phase"] == "Failed", st
    assert "container" in st["message"] and "checkpointing is not supported" in st["message"], st["message"]
    assert agents["node-a"].calls_to("Thaw"), "the source is thawed"
    assert not agents["node-a"].frozen
    assert list(_pods(api, ns)) == ["web"], "the source keeps running, nothing restored"
    assert "RollingBack" in st["phaseDurationsSeconds"]


def test_restored_pod_that_crashes_is_removed_and_the_source_thawed(api, ns, agents, kubelet, controller):
    kubelet.behaviour[ns] = "crash"
    harness.make_pod(api, ns, "web", "node-a")
    harness.create_migration(api, ns, "m", "web", "node-b")
    st = harness.wait_phase(api, ns, "m", {"Completed", "Failed"})["status"]
    assert st["phase"] == "Failed" and st["reason"] == "RestoredPodFailed", st
    assert "CrashLoopBackOff" in st["message"]
    assert list(_pods(api, ns)) == ["web"]
    assert agents["node-a"].calls_to("Thaw") and not agents["node-a"].frozen


def test_agent_unreachable_on_target_fails_validation_with_reason(api, ns, agents, controller):
    agents["node-b"].fail("GetCapabilities", grpc.StatusCode.UNIMPLEMENTED, "unknown method", times=5)
    harness.make_pod(api, ns, "web", "node-a")
    harness.create_migration(api, ns, "m", "web", "node-b")
    st = harness.wait_phase(api, ns, "m", {"Completed", "Failed"})["status"]
    assert st["phase"] == "Failed" and st["reason"] == "AgentUnimplemented", st
    assert "upgrade the agent" in st["message"]


def test_killing_the_controller_mid_migration_never_makes_a_second_restored_pod(api, ns, agents, controller):
    agents["node-a"].delay = 1.5
    try:
        harness.make_pod(api, ns, "web", "node-a", containers=("app", "db"))
        harness.create_migration(api, ns, "m", "web", "node-b")
        harness.wait(lambda: harness.phase_of(api, ns, "m") == "Checkpointing", "Checkpointing")
        controller.kill()
        controller.start()
        st = harness.wait_phase(api, ns, "m", {"Completed", "Failed"})["status"]
    finally:
        agents["node-a"].delay = 0.0
    assert st["phase"] == "Completed", st
    restored = [n for n, p in _pods(api, ns).items() if (p.metadata.labels or {}).get("lpm.my.domain/restored")]
    assert restored == [st["restoredPodName"]]


def test_deleting_an_unfinished_migration_removes_its_restored_pod_and_thaws_the_source(
    api, ns, agents, kubelet, controller
):
    kubelet.behaviour[ns] = "hang"
    harness.make_pod(api, ns, "web", "node-a")
    harness.create_migration(api, ns, "m", "web", "node-b", checkpointRetention="Delete")
    harness.wait(lambda: harness.phase_of(api, ns, "m") == "Restoring" and len(_pods(api, ns)) == 2, "restored pod")
    harness.custom(api).delete_namespaced_custom_object("lpm.my.domain", "v1", ns, "podmigrations", "m")
    harness.wait(lambda: harness.get_cr(api, ns, "podmigrations", "m") is None, "PodMigration gone")
    assert list(_pods(api, ns)) == ["web"], "the half-made restored pod is removed, the source stays"
    assert agents["node-a"].calls_to("Thaw") and not agents["node-a"].frozen
    harness.wait(
        lambda: harness.get_cr(api, ns, "podcheckpoints", "m-checkpoint") is None,
        "checkpoint deleted (retention Delete)",
    )


def test_finished_migration_is_deleted_after_its_ttl_with_its_checkpoint(api, ns, agents, controller):
    harness.make_pod(api, ns, "web", "node-a")
    harness.make_pod(api, ns, "db", "node-a")
    harness.create_migration(api, ns, "keep", "db", "node-b")  # no TTL: stays
    harness.create_migration(api, ns, "m", "web", "node-b", ttlSecondsAfterFinished=3, checkpointRetention="Delete")
    st = harness.wait_phase(api, ns, "m", {"Completed", "Failed"})["status"]
    assert st["phase"] == "Completed", st
    harness.wait(lambda: harness.get_cr(api, ns, "podmigrations", "m") is None, "PodMigration deleted by its TTL")
    harness.wait(
        lambda: harness.get_cr(api, ns, "podcheckpoints", st["podCheckpointName"]) is None,
        "its checkpoint deleted (retention Delete)",
    )
    assert agents["node-a"].calls_to("DeleteCheckpoint")
    assert st["restoredPodName"] in _pods(api, ns), "the TTL removes the record, never the restored pod"
    assert harness.wait_phase(api, ns, "keep", {"Completed", "Failed"})["status"]["phase"] == "Completed"
    assert harness.get_cr(api, ns, "podmigrations", "keep") is not None


def test_clone_keeps_source_running_and_unfrozen(api, ns, agents, controller):
    harness.make_pod(api, ns, "web", "node-a")
    harness.create_migration(api, ns, "m", "web", "node-c", sourcePolicy="KeepRunning", sourceCleanup="Retain")
    st = harness.wait_phase(api, ns, "m", {"Completed", "Failed"})["status"]
    assert st["phase"] == "Completed", st
    assert not agents["node-a"].calls_to("Freeze")
    assert all(r["options"].get("leave_running") for r in agents["node-a"].calls_to("Checkpoint"))
    assert set(_pods(api, ns)) == {"web", st["restoredPodName"]}


def test_standalone_podcheckpoint_becomes_ready_with_bound_content(api, ns, controller):
    harness.make_pod(api, ns, "db", "node-c", containers=("postgres",))
    harness.custom(api).create_namespaced_custom_object(
        "lpm.my.domain",
        "v1",
        ns,
        "podcheckpoints",
        {
            "apiVersion": "lpm.my.domain/v1",
            "kind": "PodCheckpoint",
            "metadata": {"name": "snap"},
            "spec": {"podName": "db"},
        },
    )
    harness.wait(
        lambda: (harness.get_cr(api, ns, "podcheckpoints", "snap") or {}).get("status", {}).get("phase") == "Ready",
        "Ready",
    )
    pc = harness.get_cr(api, ns, "podcheckpoints", "snap")
    assert pc["status"]["boundContentName"] and pc["status"]["containers"][0]["artifactURI"].startswith("shared://")


def test_podcheckpoint_of_missing_pod_fails_with_reason(api, ns, controller):
    harness.custom(api).create_namespaced_custom_object(
        "lpm.my.domain",
        "v1",
        ns,
        "podcheckpoints",
        {
            "apiVersion": "lpm.my.domain/v1",
            "kind": "PodCheckpoint",
            "metadata": {"name": "snap"},
            "spec": {"podName": "ghost"},
        },
    )
    harness.wait(
        lambda: (harness.get_cr(api, ns, "podcheckpoints", "snap") or {}).get("status", {}).get("phase") == "Failed",
        "Failed",
    )
    st = harness.get_cr(api, ns, "podcheckpoints", "snap")["status"]
    assert st["reason"] == "PodNotFound" and "ghost" in st["message"]
    cond = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert cond["status"] == "False"
