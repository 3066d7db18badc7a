"""Pods that keep their name: a StatefulSet's pod (web-0) and bare pods with spec.keepName. The source's frozen
checkpoint is staged on the target, the source is deleted (the commit point), and the replacement is created
under the same name: by the controller, or by the StatefulSet through the admission webhook."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest
from unit.controller.test_handover import LIVE_CAPS, _running
from unit.controller.test_podmigration_decide import (
    MUID,
    NODE_B,
    NOW,
    PUID,
    _ready_checkpoint,
    eligibility,
    migration,
    obs,
    pod,
    status,
)

from lpm.api import constants as c
from lpm.api.models import Engine, Handover, MigrationPhase, SourcePolicy
from lpm.controller import admission
from lpm.controller.effects import (
    AbortRestore,
    CreateRestoredPod,
    DeletePod,
    Outcome,
    ProbeAgent,
    ProbeWebhook,
    StageRestore,
    ThawSource,
)
from lpm.controller.podmigration.decide import decide, decide_finalize
from lpm.controller.podmigration.handover import plan_handover

STS = Handover(kind="StatefulSet", name="web", uid="owner-uid")
OPTED_IN = {c.LABEL_MIGRATABLE: "true"}


def sts_pod(**kw):
    return pod(owner="StatefulSet/web", labels=OPTED_IN, **kw)


def replacement(**kw):
    """The restored pod under the source's name: a new UID on the target, made by this migration."""
    return pod(uid="new", node="node-b", annotations={c.ANNOTATION_MIGRATION_UID: MUID}, **kw)


def _answered(decide_once, first_outcomes):
    """Run `decide_once(outcomes)` until it asks for nothing new, answering every effect with success (a webhook
    probe comes back marked). Returns the last answer and every effect asked for on the way."""
    out, asked = dict(first_outcomes), []
    for _ in range(10):
        actions = decide_once(out)
        new = [a for a in actions if hasattr(a, "key") and a.key not in out and not hasattr(a, "status")]
        if not new:
            return actions, asked
        for a in new:
            asked.append(a)
            out[a.key] = Outcome.success({"metadata": {"annotations": {c.ANNOTATION_WEBHOOK_SEEN: MUID}}})
    raise AssertionError("no fixed point")


def keeping(phase, handover=STS, **kw):
    m = migration(phase, restored_pod_name="web", engine=Engine.LIVE, handover=handover, source_frozen=True, **kw)
    if handover is None:
        m.spec.keep_name = True
    return m


def test_a_statefulset_pod_is_handed_over_under_its_own_name_with_nothing_to_release():
    found = plan_handover(sts_pod().raw, MUID)
    assert found == STS and not found.label


def test_a_statefulset_pod_validates_straight_to_freezing_with_its_own_name():
    base = {
        ProbeAgent("node-a").key: Outcome.success(LIVE_CAPS),
        ProbeAgent("node-b").key: Outcome.success(LIVE_CAPS),
        eligibility(live=True).key: Outcome.success({"checked": []}),
    }
    actions, asked = _answered(
        lambda out: decide(obs(migration(), source_pod=sts_pod(), target_node=NODE_B, outcomes=out)), base
    )
    assert any(isinstance(a, ProbeWebhook) for a in asked), "the webhook must be proven: it makes web-0 the target"
    st = status(actions)
    assert st.phase is MigrationPhase.FREEZING, (st.phase, st.message)
    assert st.restored_pod_name == "web" and st.handover == STS
    assert not any(isinstance(a, CreateRestoredPod) for a in asked), "no replacement before the freeze"


def test_keep_name_refuses_a_clone_and_the_pods_of_owners_that_name_them():
    m = migration()
    m.spec.keep_name, m.spec.source_policy = True, SourcePolicy.KEEP_RUNNING
    st = status(decide(obs(m, source_pod=pod(), target_node=NODE_B)))
    assert (st.phase, st.reason) == (MigrationPhase.FAILED, "KeepNameNeedsFreeze")
    owned = migration()
    owned.spec.keep_name = True
    rs = pod(owner="ReplicaSet/web-5d8f", labels={**OPTED_IN, "pod-template-hash": "5d8f"})
    st = status(decide(obs(owned, source_pod=rs, target_node=NODE_B)))
    assert (st.phase, st.reason) == (MigrationPhase.FAILED, "KeepNameOwned")
    assert "ReplicaSet/web-5d8f" in (st.message or "")


def _staged(m, source):
    first = decide(obs(m, source_pod=source, pod_checkpoint=_ready_checkpoint()))
    (stage,) = (a for a in first if isinstance(a, StageRestore))
    return decide(
        obs(m, source_pod=source, pod_checkpoint=_ready_checkpoint(), outcomes={stage.key: Outcome.success()})
    )


def test_restoring_is_recorded_before_the_source_is_deleted_and_a_bare_pod_records_its_replacement():
    actions = _staged(keeping(MigrationPhase.TRANSFERRING), sts_pod())
    st = status(actions)
    assert st.phase is MigrationPhase.RESTORING and "commit point" in (st.message or "")
    assert not any(isinstance(a, DeletePod) for a in actions), "write-ahead: Restoring is recorded first"
    assert st.replacement_manifest is None, "a StatefulSet makes the replacement"
    bare = status(_staged(keeping(MigrationPhase.TRANSFERRING, handover=None), pod()))
    body = json.loads(bare.replacement_manifest or "")
    assert body["metadata"]["name"] == "web" and body["spec"]["nodeName"] == "node-b"
    assert body["spec"]["runtimeClassName"] == c.RUNTIME_CLASS_LIVE
    assert body["metadata"]["annotations"][c.ANNOTATION_RESTORE_CHECKPOINT] == bare.checkpoint_id


def test_restoring_deletes_the_frozen_source_by_uid_then_creates_the_replacement_under_its_name():
    m = keeping(MigrationPhase.RESTORING, handover=None)
    m.status.replacement_manifest = json.dumps({"metadata": {"name": "web"}, "spec": {"nodeName": "node-b"}})
    actions = decide(obs(m, source_pod=pod()))
    (delete,) = (a for a in actions if isinstance(a, DeletePod))
    assert (delete.name, delete.uid, delete.grace_period_seconds) == ("web", PUID, 0)
    assert not any(isinstance(a, CreateRestoredPod) for a in actions)
    after = decide(obs(m, source_pod=None))
    (create,) = (a for a in after if isinstance(a, CreateRestoredPod))
    assert create.body["metadata"]["name"] == "web"
    # Once it runs the migration completes, and the manifest (the pod spec, env values included) is dropped.
    runs = replace(replacement(), started=("app",))
    done = status(decide(obs(m, source_pod=runs, restored_pod=runs)))
    assert done.phase is MigrationPhase.COMPLETED and done.replacement_manifest is None


def test_the_source_is_never_taken_for_its_own_replacement():
    m = keeping(MigrationPhase.RESTORING)
    actions = decide(obs(m, source_pod=sts_pod(), restored_pod=sts_pod()))
    (delete,) = (a for a in actions if isinstance(a, DeletePod))
    assert delete.uid == PUID, "the source is deleted (the commit point), not taken for the replacement"
    assert not any(isinstance(a, (AbortRestore, ThawSource)) for a in actions)


def test_before_the_commit_point_a_timeout_rolls_back_and_thaws():
    m = keeping(MigrationPhase.RESTORING, start_time="2026-01-01T11:00:00Z")
    actions = decide(obs(m, source_pod=sts_pod()))
    st = status(actions)
    assert st.phase is MigrationPhase.ROLLING_BACK
    assert not any(isinstance(a, DeletePod) for a in actions), "the source is not deleted: no commit"
    back = keeping(MigrationPhase.ROLLING_BACK, reason=st.reason, message=st.message)
    assert any(isinstance(a, ThawSource) for a in decide(obs(back, source_pod=sts_pod())))


def test_after_the_commit_point_a_failed_restore_removes_the_replacement_and_says_the_state_is_lost():
    m = keeping(MigrationPhase.RESTORING)
    broken = replacement(problem="CrashLoopBackOff", phase="Pending")
    actions, asked = _answered(lambda o: decide(obs(m, source_pod=broken, restored_pod=broken, outcomes=o)), {})
    assert not any(isinstance(a, ThawSource) for a in asked), "nothing to thaw: the source is gone"
    assert any(isinstance(a, AbortRestore) for a in asked)
    assert [a.uid for a in asked if isinstance(a, DeletePod)] == ["new"]
    st = status(actions)
    assert (st.phase, st.reason) == (MigrationPhase.FAILED, "FailedAfterCommit")
    assert "MEMORY STATE IS LOST" in (st.message or "") and "mig-checkpoint" in (st.message or "")
    assert "StatefulSet web starts it afresh" in (st.message or "")


def test_after_the_commit_point_a_timeout_does_not_roll_back_and_the_statefulset_gets_a_minute():
    m = keeping(MigrationPhase.RESTORING)
    waiting = status(decide(obs(m, source_pod=None)))
    assert (waiting.phase, waiting.reason) == (MigrationPhase.RESTORING, "WaitingForOwner")
    late = decide(obs(m, source_pod=None, now=NOW + timedelta(seconds=120)))
    assert (status(late).phase, status(late).reason) == (MigrationPhase.FAILED, "FailedAfterCommit")
    assert "OwnerDidNotReplace" in (status(late).message or "")


def test_deleting_a_migration_past_its_commit_point_leaves_the_restore_alone():
    m = keeping(MigrationPhase.RESTORING)
    m.metadata["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    target = replacement(phase="Pending")
    actions = decide_finalize(obs(m, source_pod=target, restored_pod=target))
    assert not any(isinstance(a, (AbortRestore, DeletePod, ThawSource)) for a in actions)


def _incoming(name="web"):
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "labels": {"app": "web", **OPTED_IN},
            "ownerReferences": [{"kind": "StatefulSet", "name": "web", "uid": "owner-uid", "controller": True}],
        },
        "spec": {"containers": [{"name": "app", "image": "img"}], "hostname": "web"},
    }


def test_the_webhook_makes_the_statefulsets_pod_the_restore_target_only_once_the_source_is_gone():
    m = keeping(MigrationPhase.RESTORING)
    assert admission.waiting_for(_incoming(), [m]) == [m]
    wanted = admission.replacement(_incoming(), m, None)
    assert wanted is not None and wanted["metadata"]["name"] == "web"
    assert wanted["spec"]["nodeName"] == "node-b" and wanted["spec"]["hostname"] == "web"
    assert wanted["metadata"]["annotations"][c.ANNOTATION_MIGRATION_UID] == MUID
    assert wanted["metadata"]["ownerReferences"][0]["kind"] == "StatefulSet"
    assert admission.replacement(_incoming(), m, sts_pod().raw) is None, "the source still exists"
    assert admission.replacement(_incoming("web-1"), m, None) is None, "another replica"
    frozen = keeping(MigrationPhase.CHECKPOINTING)
    assert admission.replacement(_incoming(), frozen, None) is None, "the source is deleted only in Restoring"


def _restored_by(m, node="node-b"):
    raw = _running(pod(owner="StatefulSet/web", labels=OPTED_IN, uid="new", node=node).raw)
    raw["metadata"]["annotations"] = {c.ANNOTATION_MIGRATION_UID: MUID}
    return raw


def test_drains_retry_by_name_so_the_replacement_is_never_evicted_while_restored_and_counts_as_gone_after():
    m = keeping(MigrationPhase.RESTORING)
    m.metadata["labels"] = {admission.LABEL_EVICTION: "true", c.LABEL_DRAIN: "node-a"}
    assert admission.judge_eviction(_restored_by(m), [m], 0, 2, "node-a", "", now=NOW).action == "wait"
    m.status.phase, m.status.completion_time = MigrationPhase.COMPLETED, "2026-01-01T11:59:58Z"
    moved = admission.judge_eviction(_restored_by(m), [m], 0, 2, "node-a", "", now=NOW)
    assert moved.action == "moved" and "node-a" in moved.message
    # Its new node is being drained too: that is a new eviction, and the pod moves on.
    again = admission.judge_eviction(_restored_by(m), [m], 0, 2, "node-c", "", node_cordoned=True, now=NOW)
    assert again.action == "migrate"
    later = NOW + timedelta(seconds=admission.MOVED_ANSWER_SECONDS + 1)
    assert admission.judge_eviction(_restored_by(m), [m], 0, 2, "node-c", "", now=later).action == "migrate"


@pytest.mark.parametrize("engine", [Engine.LIVE, Engine.IMAGE])
def test_a_timeout_that_strikes_as_the_restore_succeeds_completes_instead_of_deleting_the_only_copy(engine):
    """Found by the machine for the Image engine (whose restored pod reports no container starts)."""
    m = keeping(MigrationPhase.RESTORING, handover=None, start_time="2026-01-01T11:00:00Z")
    m.status.engine = engine
    runs = replacement()
    if engine is Engine.LIVE:
        runs = replace(runs, started=("app",))
    actions = decide(obs(m, source_pod=runs, restored_pod=runs))
    assert not any(isinstance(a, (DeletePod, AbortRestore)) for a in actions)
    assert status(actions).phase is MigrationPhase.COMPLETED
