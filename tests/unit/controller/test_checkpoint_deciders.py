"""PodCheckpoint and ContainerCheckpoint deciders."""

from __future__ import annotations

from datetime import UTC, datetime

from lpm.api.agent.v1 import agent_pb2 as pb
from lpm.api.models import (
    CheckpointPhase,
    ConditionStatus,
    ContainerCheckpoint,
    ContainerCheckpointSpec,
    ContainerCheckpointStatus,
    DeletionPolicy,
    MigrationPhase,
    PodCheckpoint,
    PodCheckpointSpec,
    PodMigration,
    PodMigrationSpec,
)
from lpm.api.views import PodView
from lpm.controller.containercheckpoint import decide as ccd
from lpm.controller.effects import (
    CallCheckpoint,
    CompleteCheckpoint,
    CreateContainerCheckpoint,
    CreateContent,
    DeleteCheckpoint,
    DeleteObject,
    EmitEvent,
    MarkContentReady,
    Outcome,
    PatchStatus,
    effects_of,
    holds_of,
)
from lpm.controller.podcheckpoint import decide as pcd

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PUID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def pod(containers=("app", "db"), phase="Running"):
    return PodView("web", "ns", PUID, "node-a", phase, False, tuple(containers))


def status(actions):
    return next(a.status for a in actions if isinstance(a, PatchStatus))


def pc(**spec):
    meta = {
        "name": "snap",
        "namespace": "ns",
        "uid": "11111111-1111-1111-1111-111111111111",
        "creationTimestamp": "2026-01-01T00:00:00Z",
    }
    return PodCheckpoint(spec=PodCheckpointSpec(pod_name="web", **spec), metadata=meta)


def test_podcheckpoint_creates_one_owned_child_per_container_sharing_one_id():
    actions = pcd.decide(pcd.Observed(pod_checkpoint=pc(), now=NOW, pod=pod()))
    creates = [a for a in actions if isinstance(a, CreateContainerCheckpoint)]
    assert [a.name for a in creates] == ["snap-app", "snap-db"]
    ids = {a.body["spec"]["checkpointID"] for a in creates}
    assert ids == {"20260101t000000z-11111111"}
    assert all(a.body["metadata"]["ownerReferences"][0]["kind"] == "PodCheckpoint" for a in creates)
    assert status(actions).phase is CheckpointPhase.IN_PROGRESS


def test_podcheckpoint_uses_the_migrations_checkpoint_id():
    actions = pcd.decide(pcd.Observed(pod_checkpoint=pc(checkpoint_id="given-id"), now=NOW, pod=pod()))
    assert status(actions).checkpoint_id == "given-id"


def _in_progress(children_phase):
    started = pc()
    started.status = status(pcd.decide(pcd.Observed(pod_checkpoint=started, now=NOW, pod=pod())))
    kids = {}
    for name in ("app", "db"):
        cc = ContainerCheckpoint(
            spec=ContainerCheckpointSpec(pod_name="web", container_name=name), metadata={"name": f"snap-{name}"}
        )
        cc.status = ContainerCheckpointStatus(
            phase=children_phase[name],
            artifact_uri=f"shared://{PUID}/x/{name}/dump.tar.zst",
            bound_content_name=f"ccpc-{name}",
            reason="AgentFailedPrecondition",
            message="kubelet said no",
        )
        kids[name] = cc
    return started, kids


def test_one_failed_container_fails_the_podcheckpoint_naming_it():
    started, kids = _in_progress({"app": CheckpointPhase.READY, "db": CheckpointPhase.FAILED})
    st = status(pcd.decide(pcd.Observed(pod_checkpoint=started, now=NOW, children=kids)))
    assert st.phase is CheckpointPhase.FAILED and "container db" in st.message and "kubelet said no" in st.message


def test_all_ready_seals_then_binds_content():
    started, kids = _in_progress({"app": CheckpointPhase.READY, "db": CheckpointPhase.READY})
    obs = pcd.Observed(pod_checkpoint=started, now=NOW, children=kids)
    (seal,) = (a for a in pcd.decide(obs) if isinstance(a, CompleteCheckpoint))
    assert seal.node == "node-a" and list(seal.request.container_names) == ["app", "db"]
    outcomes = {seal.key: Outcome.success()}
    (create,) = (
        a
        for a in pcd.decide(pcd.Observed(pod_checkpoint=started, now=NOW, children=kids, outcomes=outcomes))
        if isinstance(a, CreateContent)
    )
    assert create.body["spec"]["podCheckpointRef"]["uid"] == started.metadata["uid"]
    assert create.body["spec"]["containerCheckpointContents"] == ["ccpc-app", "ccpc-db"]
    outcomes[create.key] = Outcome.success()
    (mark,) = (
        a
        for a in pcd.decide(pcd.Observed(pod_checkpoint=started, now=NOW, children=kids, outcomes=outcomes))
        if isinstance(a, MarkContentReady)
    )
    outcomes[mark.key] = Outcome.success()
    st = status(pcd.decide(pcd.Observed(pod_checkpoint=started, now=NOW, children=kids, outcomes=outcomes)))
    assert st.phase is CheckpointPhase.READY and st.bound_content_name == create.name


def cc():
    meta = {
        "name": "snap-app",
        "namespace": "ns",
        "uid": "22222222-2222-2222-2222-222222222222",
        "creationTimestamp": "2026-01-01T00:00:00Z",
    }
    return ContainerCheckpoint(
        spec=ContainerCheckpointSpec(pod_name="web", container_name="app", checkpoint_id="cid"), metadata=meta
    )


def test_containercheckpoint_calls_the_agent_on_the_pods_node_then_binds_content():
    obj = cc()
    (call,) = (
        a
        for a in ccd.decide(ccd.Observed(container_checkpoint=obj, now=NOW, pod=pod()))
        if isinstance(a, CallCheckpoint)
    )
    assert call.node == "node-a" and call.request.checkpoint_id == "cid"
    uri = f"shared://{PUID}/cid/app/dump.tar.zst"
    outcomes = {call.key: Outcome.success({"artifact": {"artifact_uri": uri, "compressed_size_bytes": "10"}})}
    (create,) = (
        a
        for a in ccd.decide(ccd.Observed(container_checkpoint=obj, now=NOW, pod=pod(), outcomes=outcomes))
        if isinstance(a, CreateContent)
    )
    assert (
        create.body["spec"]["artifactURI"] == uri
        and create.body["spec"]["containerCheckpointRef"]["uid"] == obj.metadata["uid"]
    )
    assert create.namespace is None, "contents are cluster-scoped"
    outcomes[create.key] = Outcome.success()
    outcomes[MarkContentReady("containercheckpointcontents", create.name).key] = Outcome.success()
    st = status(ccd.decide(ccd.Observed(container_checkpoint=obj, now=NOW, pod=pod(), outcomes=outcomes)))
    assert st.phase is CheckpointPhase.READY and st.artifact_uri == uri and st.bound_content_name == create.name
    ready = next(c for c in st.conditions if c.type == "Ready")
    assert ready.status is ConditionStatus.TRUE


def test_containercheckpoint_failure_sets_ready_false_with_reason():
    obj = cc()
    (call,) = (
        a
        for a in ccd.decide(ccd.Observed(container_checkpoint=obj, now=NOW, pod=pod()))
        if isinstance(a, CallCheckpoint)
    )
    bad = {call.key: Outcome.failure("AgentFailedPrecondition", "checkpointing not enabled in CRI-O", retryable=False)}
    st = status(ccd.decide(ccd.Observed(container_checkpoint=obj, now=NOW, pod=pod(), outcomes=bad)))
    assert st.phase is CheckpointPhase.FAILED and st.reason == "AgentFailedPrecondition"
    ready = next(c for c in st.conditions if c.type == "Ready")
    assert (ready.status.value, ready.reason) == ("False", "AgentFailedPrecondition")


def test_missing_container_fails_with_the_containers_listed():
    st = status(ccd.decide(ccd.Observed(container_checkpoint=cc(), now=NOW, pod=pod(containers=("web",)))))
    assert st.reason == "ContainerNotFound" and "(web)" in st.message


def _stored(policy: DeletionPolicy) -> PodCheckpoint:
    obj = pc(deletion_policy=policy)
    obj.status.node_name, obj.status.pod_uid, obj.status.checkpoint_id = "node-a", PUID, "20260101t000000z-11111111"
    obj.status.bound_content_name = "pcpc-abc"
    return obj


def test_deleting_a_podcheckpoint_with_policy_delete_removes_its_files_then_its_content():
    first = pcd.decide_finalize(pcd.Observed(pod_checkpoint=_stored(DeletionPolicy.DELETE), now=NOW))
    effects = effects_of(first)
    assert [type(a) for a in effects] == [DeleteCheckpoint, DeleteObject]
    delete = effects[0]
    assert isinstance(delete, DeleteCheckpoint) and delete.node == "node-a"
    assert delete.request == pb.DeleteCheckpointRequest(pod_uid=PUID, checkpoint_id="20260101t000000z-11111111")
    assert holds_of(first), "not done before the deletions ran"
    busy = {delete.key: Outcome.failure("AgentUnavailable", "down", retryable=True), effects[1].key: Outcome.success()}
    held = pcd.decide_finalize(pcd.Observed(pod_checkpoint=_stored(DeletionPolicy.DELETE), now=NOW, outcomes=busy))
    assert effects_of(held) == [] and holds_of(held), "an agent that may come back is waited for"
    gone = dict(busy, **{delete.key: Outcome.failure("NotFound", "gone", retryable=False)})
    assert (
        pcd.decide_finalize(pcd.Observed(pod_checkpoint=_stored(DeletionPolicy.DELETE), now=NOW, outcomes=gone)) == []
    )


def test_deleting_a_podcheckpoint_with_policy_retain_keeps_everything():
    assert pcd.decide_finalize(pcd.Observed(pod_checkpoint=_stored(DeletionPolicy.RETAIN), now=NOW)) == []


def test_a_criu_refusal_fails_at_once_with_criu_words_and_is_never_called_again():
    obj = cc()
    (call,) = (
        a
        for a in ccd.decide(ccd.Observed(container_checkpoint=obj, now=NOW, pod=pod()))
        if isinstance(a, CallCheckpoint)
    )
    refused = Outcome.failure(
        "CheckpointRefused",
        "CRIU could not checkpoint container app on node node-a: CRIU: inet: Connected TCP socket, consider using "
        "--tcp-established option. Hint: set spec.options.tcpEstablished",
        retryable=False,
    )
    actions = ccd.decide(ccd.Observed(container_checkpoint=obj, now=NOW, pod=pod(), outcomes={call.key: refused}))
    st = status(actions)
    assert st.phase is CheckpointPhase.FAILED and st.reason == "CheckpointRefused"
    assert "Connected TCP socket" in st.message
    assert [e.reason for e in actions if isinstance(e, EmitEvent)] == ["CheckpointRefused"]
    obj.status = st
    assert ccd.decide(ccd.Observed(container_checkpoint=obj, now=NOW, pod=pod())) == [], "terminal: no more calls"


def _owned_cc(owner_phase=None, owner_deleting=False):
    obj = cc()
    obj.metadata["ownerReferences"] = [{"kind": "PodCheckpoint", "name": "snap", "uid": "u", "controller": True}]
    owner = None
    if owner_phase is not None:
        owner = pc()
        owner.status.phase = owner_phase
        if owner_deleting:
            owner.metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return ccd.Observed(container_checkpoint=obj, now=NOW, pod=pod(), owner_name="snap", owner=owner)


def test_a_containercheckpoint_whose_podcheckpoint_ended_makes_no_agent_call():
    for observed in (_owned_cc(None), _owned_cc(CheckpointPhase.FAILED), _owned_cc(CheckpointPhase.IN_PROGRESS, True)):
        actions = ccd.decide(observed)
        assert not any(isinstance(a, CallCheckpoint) for a in actions)
        assert status(actions).phase is CheckpointPhase.FAILED and status(actions).reason == "Abandoned"
    live = ccd.decide(_owned_cc(CheckpointPhase.IN_PROGRESS))
    assert any(isinstance(a, CallCheckpoint) for a in live)


def test_a_podcheckpoint_whose_migration_ended_or_rolls_back_stops_without_agent_calls():
    meta = {"name": "mig", "namespace": "ns", "uid": "m"}
    for phase in (MigrationPhase.ROLLING_BACK, MigrationPhase.FAILED):
        owner = PodMigration(spec=PodMigrationSpec(pod_name="web", target_node="node-b"), metadata=meta)
        owner.status.phase = phase
        actions = pcd.decide(pcd.Observed(pod_checkpoint=pc(), now=NOW, pod=pod(), owner_name="mig", owner=owner))
        assert [type(a) for a in actions if not isinstance(a, (PatchStatus, EmitEvent))] == []
        assert status(actions).reason == "MigrationEnded"
    gone = pcd.decide(pcd.Observed(pod_checkpoint=pc(), now=NOW, pod=pod(), owner_name="mig", owner=None))
    assert status(gone).reason == "MigrationEnded"


def test_a_podcheckpoint_goes_on_after_its_live_migration_completed():
    """The Live engine completes once the pod runs on the target; the durable copy is still being written then,
    and must still be sealed (found by the 2 GiB benchmark: every such copy was abandoned, never completed)."""
    meta = {"name": "mig", "namespace": "ns", "uid": "m"}
    owner = PodMigration(spec=PodMigrationSpec(pod_name="web", target_node="node-b"), metadata=meta)
    owner.status.phase = MigrationPhase.COMPLETED
    actions = pcd.decide(pcd.Observed(pod_checkpoint=pc(), now=NOW, pod=pod(), owner_name="mig", owner=owner))
    assert status(actions).phase is CheckpointPhase.IN_PROGRESS and status(actions).reason != "MigrationEnded"


def test_a_post_copy_checkpoint_asks_for_lazy_pages_and_ends_streamed_without_content():
    obj = cc()
    obj.spec.stage_on_node, obj.spec.post_copy_above_bytes = "node-b", 256 << 20
    (call,) = (
        a
        for a in ccd.decide(ccd.Observed(container_checkpoint=obj, now=NOW, pod=pod()))
        if isinstance(a, CallCheckpoint)
    )
    assert call.request.options.lazy_pages_above_bytes == 256 << 20
    reply = {"memory_streamed": True, "pages_message": "every page went to the target (1073741824 bytes)"}
    actions = ccd.decide(
        ccd.Observed(container_checkpoint=obj, now=NOW, pod=pod(), outcomes={call.key: Outcome.success(reply)})
    )
    assert not any(isinstance(a, CreateContent) for a in actions), "nothing was stored: no content to bind"
    st = status(actions)
    assert (st.phase, st.reason) == (CheckpointPhase.STREAMED, "Streamed") and "1073741824 bytes" in st.message
    assert st.phase.terminal and not st.artifact_uri


def test_a_podcheckpoint_with_a_streamed_container_ends_streamed_and_seals_nothing():
    started, kids = _in_progress({"app": CheckpointPhase.STREAMED, "db": CheckpointPhase.READY})
    actions = pcd.decide(pcd.Observed(pod_checkpoint=started, now=NOW, children=kids))
    assert not any(isinstance(a, (CompleteCheckpoint, CreateContent)) for a in actions)
    st = status(actions)
    assert st.phase is CheckpointPhase.STREAMED and "container(s) app" in st.message
    waiting, kids = _in_progress({"app": CheckpointPhase.STREAMED, "db": CheckpointPhase.IN_PROGRESS})
    actions = pcd.decide(pcd.Observed(pod_checkpoint=waiting, now=NOW, children=kids))
    assert all(a.status.phase is CheckpointPhase.IN_PROGRESS for a in actions if isinstance(a, PatchStatus))
