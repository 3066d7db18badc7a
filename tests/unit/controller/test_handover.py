"""Owned pods: the hand-over decisions (validation, release, rollback order) and the webhooks' pure answers."""

from __future__ import annotations

import json
from datetime import timedelta

from unit.controller.test_podmigration_decide import (
    MUID,
    NODE_B,
    NOW,
    PUID,
    eligibility,
    migration,
    obs,
    pod,
    status,
)

from lpm.api import constants as c
from lpm.api.models import Engine, Handover, MigrationPhase
from lpm.api.views import PodView
from lpm.controller import admission
from lpm.controller.effects import DeletePod, Outcome, PatchPod, ProbeAgent, ProbeWebhook
from lpm.controller.podmigration.decide import READOPT_WAIT_SECONDS, decide
from lpm.controller.podmigration.handover import plan_handover, readopt_patch, release_patch

LIVE_CAPS = {
    "checkpoint_supported": True,
    "freeze_supported": True,
    "convert_supported": True,
    "live_restore_supported": True,
}
RS_LABELS = {c.LABEL_MIGRATABLE: "true", "pod-template-hash": "5d8f"}
HANDOVER = Handover(kind="ReplicaSet", name="web-5d8f", uid="owner-uid", label="pod-template-hash", value="5d8f")


def rs_pod(**kw):
    return pod(owner="ReplicaSet/web-5d8f", labels=RS_LABELS, **kw)


def outcomes(webhook_seen: str | None = MUID, image_only: bool = False):
    caps = {k: v for k, v in LIVE_CAPS.items() if not (image_only and k == "live_restore_supported")}
    out = {
        ProbeAgent("node-a").key: Outcome.success(caps),
        ProbeAgent("node-b").key: Outcome.success(caps),
        eligibility(live=not image_only).key: Outcome.success({"checked": ["TCP: 0 established"]}),
    }
    probe = (
        next(
            a
            for a in decide(obs(migration(), source_pod=rs_pod(), target_node=NODE_B, outcomes=out))
            if isinstance(a, ProbeWebhook)
        )
        if not image_only
        else None
    )
    if probe is not None:
        answer = {"metadata": {"annotations": {c.ANNOTATION_WEBHOOK_SEEN: webhook_seen}}} if webhook_seen else {}
        out[probe.key] = Outcome.success(answer)
    return out


def test_an_opted_in_replicaset_pod_validates_into_preparing_with_its_handover_and_releases_nothing_yet():
    actions = decide(obs(migration(), source_pod=rs_pod(), target_node=NODE_B, outcomes=outcomes()))
    st = status(actions)
    assert st.phase is MigrationPhase.PREPARING and st.engine is Engine.LIVE
    assert st.handover == HANDOVER
    assert not any(isinstance(a, PatchPod) for a in actions), "write-ahead: the webhook must see Preparing first"


def test_an_owned_pod_is_not_released_when_the_webhook_does_not_answer():
    st = status(decide(obs(migration(), source_pod=rs_pod(), target_node=NODE_B, outcomes=outcomes(None))))
    assert (st.phase, st.reason) == (MigrationPhase.FAILED, "AdmissionWebhookUnavailable")
    assert "nothing was changed" in (st.message or "")


def test_an_owned_pod_needs_the_live_engine_and_says_why_the_target_cannot():
    st = status(decide(obs(migration(), source_pod=rs_pod(), target_node=NODE_B, outcomes=outcomes(image_only=True))))
    assert (st.phase, st.reason) == (MigrationPhase.FAILED, "LiveEngineUnavailable")
    assert "cannot stage checkpoints" in (st.message or "") and "ReplicaSet/web-5d8f" in (st.message or "")
    image = migration()
    image.spec.engine = Engine.IMAGE
    st = status(decide(obs(image, source_pod=rs_pod(), target_node=NODE_B, outcomes=outcomes(image_only=True))))
    assert (st.phase, st.reason) == (MigrationPhase.FAILED, "OwnedPodNeedsLiveEngine")


def _preparing(handover=HANDOVER, **kw):
    return migration(
        MigrationPhase.PREPARING,
        pod_uid=PUID,
        source_node="node-a",
        engine=Engine.LIVE,
        checkpoint_id="ckpt",
        restored_pod_name="web-abcde",
        handover=handover,
        phase_started_at=(NOW - timedelta(seconds=kw.pop("since", 1))).isoformat(),
        **kw,
    )


def test_preparing_releases_the_source_by_its_selector_label_guarded_by_its_uid():
    actions = decide(obs(_preparing(), source_pod=rs_pod(), target_node=NODE_B))
    (patch,) = (a for a in actions if isinstance(a, PatchPod))
    assert patch.body["metadata"]["uid"] == PUID
    assert patch.body["metadata"]["labels"] == {"pod-template-hash": c.RELEASED_LABEL_VALUE}
    done = decide(obs(_preparing(), source_pod=rs_pod(), target_node=NODE_B, outcomes={patch.key: Outcome.success()}))
    st = status(done)
    assert st.handover.released and st.reason == "WaitingForOwner"


def test_an_owner_that_makes_no_replacement_rolls_back():
    released = Handover(**{**HANDOVER.__dict__, "released": True})
    st = status(decide(obs(_preparing(released, since=61), source_pod=rs_pod(), target_node=NODE_B)))
    assert st.phase is MigrationPhase.ROLLING_BACK and st.reason == "OwnerDidNotReplace"


def _released_source():
    p = rs_pod()
    raw = json.loads(json.dumps(p.raw))
    raw["metadata"]["labels"]["pod-template-hash"] = c.RELEASED_LABEL_VALUE
    del raw["metadata"]["ownerReferences"]
    return PodView.from_api({**raw, "status": {"phase": "Running"}})


def _replacement():
    return PodView.from_api(
        {
            "metadata": {
                "name": "web-abcde",
                "namespace": "ns",
                "uid": "r-uid",
                "annotations": {c.ANNOTATION_MIGRATION_UID: MUID},
            },
            "spec": {"nodeName": "node-b", "containers": [{"name": "app"}]},
            "status": {"phase": "Pending"},
        }
    )


def test_rollback_gives_the_source_back_to_its_owner_before_deleting_the_replacement():
    released = Handover(**{**HANDOVER.__dict__, "released": True})
    m = _preparing(released)
    m.status.phase = MigrationPhase.ROLLING_BACK
    actions = decide(obs(m, source_pod=_released_source(), restored_pod=_replacement()))
    patches = [a for a in actions if isinstance(a, PatchPod)]
    assert patches and patches[0].body == readopt_patch(PUID, released)
    assert not any(isinstance(a, DeletePod) for a in actions), "the owner must adopt the source first"
    # The owner adopted it again: now the replacement goes.
    adopted = rs_pod()
    actions = decide(obs(m, source_pod=adopted, restored_pod=_replacement()))
    assert [a.name for a in actions if isinstance(a, DeletePod)] == ["web-abcde"]
    assert not status(actions).handover.released


def test_rollback_goes_on_when_the_owner_never_adopts_the_source():
    released = Handover(**{**HANDOVER.__dict__, "released": True})
    m = _preparing(released, since=READOPT_WAIT_SECONDS + 1)
    m.status.phase = MigrationPhase.ROLLING_BACK
    src = pod(labels=RS_LABELS)  # label back, but no owner (the ReplicaSet was deleted)
    actions = decide(obs(m, source_pod=src, restored_pod=_replacement()))
    assert [a.name for a in actions if isinstance(a, DeletePod)] == ["web-abcde"]


def test_a_released_source_whose_status_write_was_lost_is_recognised_by_its_annotation():
    raw = json.loads(json.dumps(rs_pod().raw))
    raw["metadata"]["labels"]["pod-template-hash"] = c.RELEASED_LABEL_VALUE
    raw["metadata"]["annotations"] = release_patch(PUID, HANDOVER, MUID)["metadata"]["annotations"]
    del raw["metadata"]["ownerReferences"]
    again = plan_handover(raw, MUID)
    assert again == Handover(**{**HANDOVER.__dict__, "released": True})
    assert plan_handover(raw, "another-migration") is None  # a bare pod to anyone else


# ------------------------------------------------------------------------------------------ webhooks


def test_merge_diff_removes_replaces_and_adds():
    old = {"a": 1, "b": {"x": 1, "y": 2}, "c": [1], "gone": 0}
    new = {"a": 1, "b": {"x": 1, "z": 3}, "c": [2], "new": {"k": "v"}}
    assert admission.merge_diff(old, new) == {"b": {"y": None, "z": 3}, "c": [2], "new": {"k": "v"}, "gone": None}


def _owner_pod():
    return {
        "metadata": {
            "generateName": "web-5d8f-",
            "namespace": "ns",
            "labels": dict(RS_LABELS),
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-5d8f", "uid": "owner-uid", "controller": True}],
        },
        "spec": {
            "containers": [{"name": "app", "image": "img"}],
            "nodeSelector": {"kubernetes.io/hostname": "node-a"},
        },
    }


def test_the_owners_next_pod_becomes_the_restore_target_of_the_oldest_waiting_migration():
    m = _preparing(Handover(**{**HANDOVER.__dict__, "released": True}))
    m.metadata["name"] = "mig"
    (found,) = admission.waiting_for(_owner_pod(), [m])
    assert admission.replacement(_owner_pod(), found, rs_pod().raw) is None, "its source is not released yet"
    wanted = admission.replacement(_owner_pod(), found, _released_raw())
    assert wanted is not None
    meta, spec = wanted["metadata"], wanted["spec"]
    assert meta["name"] == "web-abcde" and "generateName" not in meta
    assert meta["ownerReferences"][0]["uid"] == "owner-uid", "the owner counts it as its replica"
    assert meta["labels"]["pod-template-hash"] == "5d8f"
    assert meta["annotations"][c.ANNOTATION_RESTORE_CHECKPOINT] == "ckpt"
    assert meta["annotations"][c.ANNOTATION_MIGRATION_UID] == MUID
    assert spec["nodeName"] == "node-b" and spec["runtimeClassName"] == c.RUNTIME_CLASS_LIVE
    assert "nodeSelector" not in spec
    diff = admission.merge_diff(_owner_pod(), wanted)
    assert diff["spec"]["nodeSelector"] is None and diff["metadata"]["generateName"] is None


def test_no_migration_claims_a_pod_of_another_owner_or_once_it_committed_or_ended():
    m = _preparing()
    other = _owner_pod()
    other["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    assert admission.waiting_for(other, [m]) == []
    for phase in (MigrationPhase.VALIDATING, MigrationPhase.CLEANING, MigrationPhase.FAILED):
        m.status.phase = phase
        assert admission.waiting_for(_owner_pod(), [m]) == [], phase


def test_an_owner_that_replaces_a_released_source_during_the_rollback_gets_a_restore_target_not_an_empty_pod():
    # Found by the migration machine: released, then timed out before the owner made its pod; the webhook let
    # that pod start empty. The rollback has aborted the restore, so the restore target only waits and fails.
    m = _preparing(Handover(**{**HANDOVER.__dict__, "released": True}))
    m.status.phase = MigrationPhase.ROLLING_BACK
    (found,) = admission.waiting_for(_owner_pod(), [m])
    wanted = admission.replacement(_owner_pod(), found, _released_raw())
    assert wanted is not None and wanted["spec"]["runtimeClassName"] == c.RUNTIME_CLASS_LIVE


def test_a_template_with_other_containers_is_not_turned_into_a_restore_target():
    pod_ = _owner_pod()
    pod_["spec"]["containers"] = [{"name": "other", "image": "img"}]
    assert admission.replacement(pod_, _preparing(), _released_raw()) is None


def _released_raw():
    """The source as the release patch leaves it (label changed, the release recorded for this migration)."""
    raw = json.loads(json.dumps(rs_pod().raw))
    patch = release_patch(PUID, HANDOVER, MUID)["metadata"]
    raw["metadata"]["labels"].update(patch["labels"])
    raw["metadata"]["annotations"] = dict(patch["annotations"])
    del raw["metadata"]["ownerReferences"]
    return raw


def test_the_probe_is_marked_and_nothing_else():
    probe = {"metadata": {"annotations": {c.ANNOTATION_WEBHOOK_PROBE: "u1"}}}
    assert admission.probe_mark(probe) == {"metadata": {"annotations": {c.ANNOTATION_WEBHOOK_SEEN: "u1"}}}
    assert admission.probe_mark(_owner_pod()) is None


def _running(raw):
    return {**raw, "status": {"phase": "Running"}}


def test_eviction_of_an_opted_in_pod_starts_one_migration_and_asks_to_retry():
    src = _running(rs_pod().raw)
    verdict = admission.judge_eviction(src, [], 0, 2, "node-b", "")
    assert verdict.action == "migrate" and verdict.migration is not None
    assert verdict.migration["spec"] == {**verdict.migration["spec"], "podName": "web", "targetNode": "node-b"}
    assert verdict.migration["metadata"]["name"] == admission.eviction_migration_name("web", PUID)
    running = migration(MigrationPhase.CHECKPOINTING, pod_uid=PUID)
    assert admission.judge_eviction(src, [running], 1, 2, "node-b", "").action == "wait"


def test_evictions_pass_for_pods_not_opted_in_and_after_a_failed_migration():
    plain = _running(pod(owner="ReplicaSet/web-5d8f", labels={"pod-template-hash": "5d8f"}).raw)
    assert admission.judge_eviction(plain, [], 0, 2, "node-b", "").action == "allow"
    failed = migration(MigrationPhase.FAILED, pod_uid=PUID)
    assert admission.judge_eviction(_running(rs_pod().raw), [failed], 0, 2, "node-b", "").action == "allow"
    # Failed in validation (no pod UID recorded): the eviction's own migration, named after the pod, counts too.
    refused = migration(MigrationPhase.FAILED)
    refused.metadata["name"] = admission.eviction_migration_name("web", PUID)
    assert admission.judge_eviction(_running(rs_pod().raw), [refused], 0, 2, "node-b", "").action == "allow"
    daemon = _running(pod(owner="DaemonSet/agent", labels={c.LABEL_MIGRATABLE: "true"}).raw)
    assert admission.judge_eviction(daemon, [], 0, 2, "node-b", "").action == "allow"


def test_evictions_wait_when_too_many_migrations_leave_the_node_or_no_node_takes_the_pod():
    src = _running(rs_pod().raw)
    assert admission.judge_eviction(src, [], 2, 2, "node-b", "").action == "wait"
    verdict = admission.judge_eviction(src, [], 0, 2, None, "no other node is Ready")
    assert verdict.action == "wait" and "no other node is Ready" in verdict.message


def _pdb(allowed, selector):
    return {"metadata": {"name": "web-pdb"}, "spec": {"selector": selector}, "status": {"disruptionsAllowed": allowed}}


def test_selector_matching_follows_label_selector_rules():
    labels = {"app": "web", "tier": "front"}
    assert admission.selector_matches({}, labels)
    assert not admission.selector_matches(None, labels)
    assert admission.selector_matches({"matchLabels": {"app": "web"}}, labels)
    assert not admission.selector_matches({"matchLabels": {"app": "db"}}, labels)
    expr = [{"key": "tier", "operator": "In", "values": ["front", "back"]}, {"key": "x", "operator": "DoesNotExist"}]
    assert admission.selector_matches({"matchExpressions": expr}, labels)
    assert not admission.selector_matches(
        {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}, labels
    )
    assert not admission.selector_matches({"matchExpressions": [{"key": "x", "operator": "Exists"}]}, labels)


def test_a_budget_is_spent_by_running_migrations_of_the_pods_it_covers():
    src = _running(rs_pod().raw)
    budget = _pdb(1, {"matchLabels": {"app": "web"}})
    assert admission.budget_problem(src, [budget], []) is None
    other = {"metadata": {"name": "web-2", "labels": {"app": "web"}}}
    problem = admission.budget_problem(src, [budget], [other])
    assert problem is not None and "web-pdb" in problem
    assert admission.budget_problem(src, [_pdb(0, {"matchLabels": {"app": "db"}})], []) is None  # not its budget
    verdict = admission.judge_eviction(src, [], 0, 2, "node-b", "", budget=problem)
    assert verdict.action == "wait" and verdict.migration is None


def test_migrations_count_against_their_node_from_the_moment_they_are_created():
    src = _running(rs_pod().raw)
    first = admission.judge_eviction(src, [], 0, 2, "node-b", "").migration
    assert first is not None and first["metadata"]["labels"][c.LABEL_DRAIN] == "node-a"
    fresh = migration()  # just created by an eviction: no status yet
    fresh.metadata["labels"] = dict(first["metadata"]["labels"])
    validated = migration(MigrationPhase.CHECKPOINTING, source_node="node-a")
    done = migration(MigrationPhase.COMPLETED, source_node="node-a")
    elsewhere = migration(MigrationPhase.CHECKPOINTING, source_node="node-c")
    assert admission.leaving([fresh, validated, done, elsewhere], "node-a") == 2


def test_a_release_whose_reply_was_lost_is_still_given_back():
    # Found by the migration machine: the release patch landed but its reply was lost, so the status never said
    # released; the rollback deleted the replacement without giving the source back, and the owner, still missing
    # its replica, kept making replacements: stuck for good.
    m = _preparing(HANDOVER)  # released=False in the status
    m.status.phase = MigrationPhase.ROLLING_BACK
    src = PodView.from_api({**_released_raw(), "status": {"phase": "Running"}})
    actions = decide(obs(m, source_pod=src, restored_pod=_replacement()))
    assert [a.body for a in actions if isinstance(a, PatchPod)] == [readopt_patch(PUID, HANDOVER)]
    assert not any(isinstance(a, DeletePod) for a in actions)
    assert status(actions).handover.released


def test_a_release_whose_status_write_was_lost_is_recorded_once_the_replacement_exists():
    """Seen in CI (tests/e2e/test_owned.py): the cycle that released the source lost its status write, the owner's
    replacement then existed, and Preparing went on with status.handover.released still false: the status said
    the source had not been released although it had."""
    st = status(decide(obs(_preparing(), source_pod=_released_source(), restored_pod=_replacement())))
    assert st.handover.released and st.phase is MigrationPhase.PREPARING


def test_validation_says_why_the_live_source_is_dumped_in_one_pass():
    def validated(source_caps):
        out = outcomes()
        out[ProbeAgent("node-a").key] = Outcome.success(source_caps)
        st = status(decide(obs(migration(), source_pod=rs_pod(), target_node=NODE_B, outcomes=out)))
        assert st.engine is Engine.LIVE
        return next(x.message for x in st.conditions if x.type == c.CONDITION_VALIDATED)

    assert "on node-a, pre-copy: its agent reports no dirty page tracking" in validated(LIVE_CAPS)
    said = {**LIVE_CAPS, "problems": ["something else", "pre-copy: the kernel does not track soft-dirty pages"]}
    assert "on node-a, pre-copy: the kernel does not track soft-dirty pages" in validated(said)
    assert "pre-copy rounds are not used yet" in validated({**LIVE_CAPS, "memory_dirty_tracking": True})
