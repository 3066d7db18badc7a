"""PodMigration's pure decider, scenario by scenario (the state machine in tests/property covers interleavings)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from lpm.api import constants as c
from lpm.api.agent.v1 import agent_pb2 as pb
from lpm.api.models import (
    CheckpointPhase,
    ConditionStatus,
    ContainerCheckpointState,
    ContainerImage,
    EligibilityPolicy,
    Engine,
    MigrationPhase,
    PodCheckpoint,
    PodCheckpointSpec,
    PodMigration,
    PodMigrationSpec,
    PodMigrationStatus,
    PostCopy,
    SourceCleanup,
    SourcePolicy,
)
from lpm.api.views import NodeView, PodView
from lpm.controller.effects import (
    CheckEligibility,
    ConvertImage,
    CreatePodCheckpoint,
    CreateRestoredPod,
    DeletePod,
    DescribeRestoreFailure,
    EmitEvent,
    FreezeSource,
    GetRestoreState,
    Outcome,
    PatchStatus,
    ProbeAgent,
    ThawSource,
    holds_of,
)
from lpm.controller.podmigration.decide import CHECKS, Observed, decide, decide_finalize, ttl_remaining
from lpm.controller.reconciler import to_fixed_point

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
MUID = "aaaaaaaa-0000-0000-0000-000000000001"
PUID = "bbbbbbbb-0000-0000-0000-000000000002"
CAPS = {"checkpoint_supported": True, "freeze_supported": True, "convert_supported": True}


def migration(phase=MigrationPhase.PENDING, **status):
    st = PodMigrationStatus(phase=phase, **status)
    if phase is not MigrationPhase.PENDING:
        st.start_time = st.start_time or "2026-01-01T11:59:50Z"
        st.pod_uid = st.pod_uid or PUID
        st.source_node = st.source_node or "node-a"
        st.checkpoint_id = st.checkpoint_id or "20260101t115950z-aaaaaaaa"
        st.pod_checkpoint_name = st.pod_checkpoint_name or "mig-checkpoint"
        st.restored_pod_name = st.restored_pod_name or "web-12345"
        st.phase_started_at = st.phase_started_at or "2026-01-01T11:59:55Z"
    meta = {"name": "mig", "namespace": "ns", "uid": MUID, "creationTimestamp": "2026-01-01T11:59:50Z", "generation": 1}
    return PodMigration(spec=PodMigrationSpec(pod_name="web", target_node="node-b"), metadata=meta, status=st)


def pod(
    name="web",
    uid=PUID,
    node="node-a",
    phase="Running",
    owner=None,
    annotations=None,
    problem=None,
    deleting=False,
    labels=None,
    host=None,
):
    raw = {
        "metadata": {"name": name, "namespace": "ns", "uid": uid, "labels": {"app": "web", **(labels or {})}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "img"}], **(host or {})},
    }
    if owner:
        kind, owner_name = owner.split("/")
        raw["metadata"]["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": kind, "name": owner_name, "uid": "owner-uid", "controller": True}
        ]
    return PodView(
        name=name,
        namespace="ns",
        uid=uid,
        node_name=node,
        phase=phase,
        deleting=deleting,
        containers=("app",),
        controller=owner,
        labels=raw["metadata"]["labels"],
        annotations=annotations or {},
        problem=problem,
        raw=raw,
    )


NODE_B = NodeView("node-b", ready=True, ready_message="ok", unschedulable=False)


def obs(m, **kw):
    kw.setdefault("now", NOW)
    return Observed(migration=m, **kw)


def status(actions):
    return next(a.status for a in actions if isinstance(a, PatchStatus))


def eligibility(tcp_established=True, live=False):
    request = pb.EligibilityRequest(
        pod_namespace="ns",
        pod_name="web",
        pod_uid=PUID,
        container_names=["app"],
        tcp_established=tcp_established,
        empty_dir_moves=live,  # the Live engine carries emptyDir contents
    )
    return CheckEligibility("node-a", request)


def probes_ok(eligible=None):
    return {
        ProbeAgent("node-a").key: Outcome.success(CAPS),
        ProbeAgent("node-b").key: Outcome.success(CAPS),
        eligibility().key: eligible or Outcome.success({"checked": ["TCP: 0 established"]}),
    }


def test_pending_validates_by_probing_both_agents_first():
    actions = decide(obs(migration(), source_pod=pod(), target_node=NODE_B))
    assert [a for a in actions if isinstance(a, ProbeAgent)] == [ProbeAgent("node-a"), ProbeAgent("node-b")]
    assert status(actions).phase is MigrationPhase.VALIDATING
    assert not any(isinstance(a, FreezeSource) for a in actions)


def test_valid_migration_records_freezing_before_freezing():
    actions = decide(obs(migration(), source_pod=pod(), target_node=NODE_B, outcomes=probes_ok()))
    st = status(actions)
    assert st.phase is MigrationPhase.FREEZING and st.pod_uid == PUID and st.source_node == "node-a"
    assert not any(isinstance(a, FreezeSource) for a in actions), "write-ahead: freeze in the next cycle"
    assert {e.reason for e in actions if isinstance(e, EmitEvent)} == {"Validating", "Freezing"}


def test_validation_failures_have_actionable_reasons():
    cases = [
        (dict(source_pod=None, target_node=NODE_B), "PodNotFound"),
        (dict(source_pod=pod(phase="Pending"), target_node=NODE_B), "PodNotRunning"),
        (dict(source_pod=pod(host={"hostNetwork": True}), target_node=NODE_B), "PodUsesHostNamespaces"),
        (dict(source_pod=pod(host={"hostPID": True}), target_node=NODE_B), "PodUsesHostNamespaces"),
        (dict(source_pod=pod(host={"hostIPC": True}), target_node=NODE_B), "PodUsesHostNamespaces"),
        (dict(source_pod=pod(owner="StatefulSet/web"), target_node=NODE_B), "PodHasController"),
        (dict(source_pod=pod(owner="DaemonSet/ds", labels=OPTED_IN), target_node=NODE_B), "OwnerNotSupported"),
        (dict(source_pod=pod(owner="ReplicaSet/web-1", labels=OPTED_IN), target_node=NODE_B), "OwnerSelectorUnknown"),
        (dict(source_pod=pod(node=None), target_node=NODE_B), "PodNotScheduled"),
        (dict(source_pod=pod(node="node-b"), target_node=NODE_B), "TargetIsSourceNode"),
        (dict(source_pod=pod(), target_node=None), "TargetNodeNotFound"),
        (dict(source_pod=pod(), target_node=NodeView("node-b", False, "runtime down", False)), "TargetNodeNotReady"),
        (dict(source_pod=pod(), target_node=NodeView("node-b", True, "", True)), "TargetNodeUnschedulable"),
        (dict(source_pod=pod(), target_node=NODE_B, older_active_migrations=("other",)), "AnotherMigrationActive"),
    ]
    retained = migration()
    retained.spec.source_cleanup = SourceCleanup.RETAIN
    st = status(decide(obs(retained, source_pod=pod(), target_node=NODE_B)))
    assert st.reason == "FrozenSourceRetained" and "KeepRunning" in st.message
    clone = migration()
    clone.spec.source_policy = SourcePolicy.KEEP_RUNNING
    st = status(decide(obs(clone, source_pod=pod(owner="ReplicaSet/web-1", labels=RS_POD), target_node=NODE_B)))
    assert (st.phase, st.reason) == (MigrationPhase.FAILED, "OwnedPodClone")
    for kw, reason in cases:
        st = status(decide(obs(migration(), **kw)))
        assert (st.phase, st.reason) == (MigrationPhase.FAILED, reason), kw
        assert st.message
    # KeepNameNeedsFreeze, KeepNameOwned: tests/unit/controller/test_keep_name.py
    keep_name = {"KeepNameNeedsFreeze", "KeepNameOwned"}
    assert {reason for _, reason in cases} | {"FrozenSourceRetained", "OwnedPodClone"} | keep_name == {
        check.reason for check in CHECKS
    }


def test_a_pod_sharing_its_nodes_namespaces_is_refused_saying_which_and_why():
    st = status(
        decide(obs(migration(), source_pod=pod(host={"hostNetwork": True, "hostPID": True}), target_node=NODE_B))
    )
    assert (st.phase, st.reason) == (MigrationPhase.FAILED, "PodUsesHostNamespaces")
    assert "(hostNetwork, hostPID)" in st.message and "address, ports and connections" in st.message
    assert "node node-a" in st.message
    explicit_false = pod(host={"hostNetwork": False, "hostPID": False, "hostIPC": False})
    st = status(decide(obs(migration(), source_pod=explicit_false, target_node=NODE_B, outcomes=probes_ok())))
    assert st.phase is MigrationPhase.FREEZING


OPTED_IN = {"lpm.my.domain/migratable": "true"}
RS_POD = {**OPTED_IN, "pod-template-hash": "5d8f"}


def test_statefulset_message_says_how_to_detach():
    st = status(decide(obs(migration(), source_pod=pod(owner="StatefulSet/web"), target_node=NODE_B)))
    assert "kubectl delete statefulset web --cascade=orphan" in st.message


def test_incapable_agent_fails_validation_naming_the_problem():
    outcomes = probes_ok()
    outcomes[ProbeAgent("node-b").key] = Outcome.success({"checkpoint_supported": True, "problems": ["no CRIU"]})
    st = status(decide(obs(migration(), source_pod=pod(), target_node=NODE_B, outcomes=outcomes)))
    assert st.reason == "AgentNotCapable" and "target node node-b" in st.message and "no CRIU" in st.message


def test_unreachable_agent_is_retried_then_fails():
    outcomes = probes_ok()
    outcomes[ProbeAgent("node-a").key] = Outcome.failure("AgentUnavailable", "down", retryable=True)
    m = migration(MigrationPhase.VALIDATING)
    st = status(decide(obs(m, source_pod=pod(), target_node=NODE_B, outcomes=outcomes)))
    assert st.phase is MigrationPhase.VALIDATING and st.reason == "AgentUnavailable"
    late = NOW + timedelta(seconds=600)
    st = status(decide(obs(m, now=late, source_pod=pod(), target_node=NODE_B, outcomes=outcomes)))
    assert st.phase is MigrationPhase.FAILED


def test_freezing_calls_the_source_agent_with_an_auto_thaw_deadline():
    actions = decide(obs(migration(MigrationPhase.FREEZING), source_pod=pod()))
    (freeze,) = (a for a in actions if isinstance(a, FreezeSource))
    assert freeze.node == "node-a" and list(freeze.request.container_names) == ["app"]
    assert freeze.request.auto_thaw_after.seconds == 600 - 10 + 120, "the time left until the timeout, plus a margin"
    ok = decide(obs(migration(MigrationPhase.FREEZING), source_pod=pod(), outcomes={freeze.key: Outcome.success()}))
    st = status(ok)
    assert st.phase is MigrationPhase.CHECKPOINTING and st.source_frozen
    (create,) = (a for a in ok if isinstance(a, CreatePodCheckpoint))
    assert create.body["spec"]["checkpointID"] == st.checkpoint_id
    assert create.body["spec"]["leaveRunning"] is False
    assert create.body["metadata"]["ownerReferences"][0]["uid"] == MUID


def test_a_checkpoint_that_waits_for_the_freeze_is_created_before_it_and_the_freeze_waits_for_its_calls():
    m = migration(MigrationPhase.FREEZING, dump_waits_for_freeze=True)
    first = decide(obs(m, source_pod=pod()))
    (create,) = (a for a in first if isinstance(a, CreatePodCheckpoint))
    assert not any(isinstance(a, FreezeSource) for a in first), "the checkpoint first, then the freeze"
    assert create.body["spec"]["awaitFreeze"] is True and create.body["spec"]["leaveRunning"] is False
    made = {create.key: Outcome.success()}
    (freeze,) = (a for a in decide(obs(m, source_pod=pod(), outcomes=made)) if isinstance(a, FreezeSource))
    assert freeze.request.await_checkpoints.seconds > 0
    done = {**made, freeze.key: Outcome.success()}
    st = status(decide(obs(m, source_pod=pod(), outcomes=done)))
    assert st.phase is MigrationPhase.CHECKPOINTING and st.source_frozen
    # A restarted controller finds its PodCheckpoint and freezes; one that is not its own stops everything first.
    ours = replace(_ready_checkpoint(), status=replace(_ready_checkpoint().status, phase=CheckpointPhase.IN_PROGRESS))
    assert any(isinstance(a, FreezeSource) for a in decide(obs(m, source_pod=pod(), pod_checkpoint=ours)))
    theirs = _ready_checkpoint(uid="someone-else")
    taken = decide(obs(m, source_pod=pod(), pod_checkpoint=theirs))
    assert not any(isinstance(a, FreezeSource) for a in taken)
    assert status(taken).phase is MigrationPhase.ROLLING_BACK and status(taken).reason == "PodCheckpointNameTaken"


def test_without_the_hand_off_the_freeze_comes_first_and_does_not_wait():
    (freeze,) = (
        a for a in decide(obs(migration(MigrationPhase.FREEZING), source_pod=pod())) if isinstance(a, FreezeSource)
    )
    assert not freeze.request.HasField("await_checkpoints")


def test_validating_asks_for_the_hand_off_only_of_a_source_agent_that_can_and_a_pod_that_is_frozen():
    m = migration(MigrationPhase.VALIDATING)
    can = {**probes_ok(), ProbeAgent("node-a").key: Outcome.success({**CAPS, "freeze_hand_off": True})}
    st = status(
        to_fixed_point(decide, obs(m, source_pod=pod(), target_node=NODE_B, outcomes=can), lambda e: can[e.key])
    )
    assert st.dump_waits_for_freeze
    st = status(to_fixed_point(decide, obs(m, source_pod=pod(), target_node=NODE_B), lambda e: probes_ok()[e.key]))
    assert not st.dump_waits_for_freeze
    clone = replace(m, spec=replace(m.spec, source_policy=SourcePolicy.KEEP_RUNNING))
    run = to_fixed_point(
        decide, obs(clone, source_pod=pod(), target_node=NODE_B), lambda e: can.get(e.key, Outcome.success())
    )
    st = status(run)
    assert not st.dump_waits_for_freeze


def test_permanent_freeze_failure_rolls_back_and_thaws():
    m = migration(MigrationPhase.FREEZING)
    (freeze,) = (a for a in decide(obs(m, source_pod=pod())) if isinstance(a, FreezeSource))
    actions = decide(
        obs(m, source_pod=pod(), outcomes={freeze.key: Outcome.failure("AgentFailedPrecondition", "no cgroup", False)})
    )
    st = status(actions)
    assert st.phase is MigrationPhase.ROLLING_BACK
    assert not any(isinstance(a, ThawSource) for a in actions), "write-ahead: the rollback is recorded first"
    m2 = migration(MigrationPhase.ROLLING_BACK, source_frozen=True, reason=st.reason, message=st.message)
    assert any(isinstance(a, ThawSource) for a in decide(obs(m2, source_pod=pod())))


def _ready_checkpoint(uid=MUID):
    return PodCheckpoint(
        spec=PodCheckpointSpec(pod_name="web"),
        metadata={"name": "mig-checkpoint", "ownerReferences": [{"uid": uid}]},
        status=__import__("lpm.api.models", fromlist=["PodCheckpointStatus"]).PodCheckpointStatus(
            phase=CheckpointPhase.READY,
            containers=[
                ContainerCheckpointState(
                    name="app", phase=CheckpointPhase.READY, artifact_uri=f"shared://{PUID}/c/app/dump.tar.zst"
                )
            ],
        ),
    )


def test_ready_checkpoint_is_converted_on_the_target_node():
    entered = decide(
        obs(
            migration(MigrationPhase.CHECKPOINTING, source_frozen=True),
            source_pod=pod(),
            pod_checkpoint=_ready_checkpoint(),
        )
    )
    assert status(entered).phase is MigrationPhase.CONVERTING
    assert not any(isinstance(a, ConvertImage) for a in entered), "write-ahead: convert in the next cycle"
    actions = decide(
        obs(
            migration(MigrationPhase.CONVERTING, source_frozen=True),
            source_pod=pod(),
            pod_checkpoint=_ready_checkpoint(),
        )
    )
    (conv,) = (a for a in actions if isinstance(a, ConvertImage))
    assert conv.node == "node-b" and conv.request.container_name == "app"
    done = decide(
        obs(
            migration(MigrationPhase.CONVERTING, source_frozen=True),
            source_pod=pod(),
            pod_checkpoint=_ready_checkpoint(),
            outcomes={conv.key: Outcome.success({"image_ref": "localhost/ckpt/app:1"})},
        )
    )
    st = status(done)
    assert st.phase is MigrationPhase.RESTORING and st.container_images == [
        ContainerImage("app", "localhost/ckpt/app:1")
    ]
    assert not any(isinstance(a, CreateRestoredPod) for a in done), "write-ahead: create in the next cycle"


def test_a_slow_conversion_is_counted_as_converting_not_restoring():
    """The cycle runs the conversion (seconds) between two decide passes; the pass after it sees the time."""
    clock_now = [NOW]

    def execute(effect):
        assert isinstance(effect, ConvertImage)
        clock_now[0] += timedelta(seconds=4)
        return Outcome.success({"image_ref": "localhost/ckpt/app:1"})

    m = migration(MigrationPhase.CONVERTING, source_frozen=True, phase_started_at="2026-01-01T11:59:59.900Z")
    observed = obs(m, source_pod=pod(), pod_checkpoint=_ready_checkpoint())
    st = status(to_fixed_point(decide, observed, execute, now=lambda: clock_now[0]))
    assert st.phase is MigrationPhase.RESTORING
    assert abs(st.phase_durations_seconds["Converting"] - 4.1) < 1e-6
    assert st.phase_started_at == "2026-01-01T12:00:04.000000Z"


def test_slow_effects_never_change_the_requests_of_later_passes():
    """A freeze's auto-thaw deadline is computed from the cycle's `now`: were later passes to decide with a later
    time, the request (and its key) would change and the agent be asked again and again within one cycle."""
    clock_now, calls = [NOW], []

    def execute(effect):
        calls.append(effect.key)
        clock_now[0] += timedelta(seconds=1.5)  # every agent call is slow
        return Outcome.success(CAPS if isinstance(effect, ProbeAgent) else {})

    observed = obs(migration(MigrationPhase.FREEZING), source_pod=pod())
    st = status(to_fixed_point(decide, observed, execute, now=lambda: clock_now[0]))
    assert st.phase is MigrationPhase.CHECKPOINTING and st.source_frozen
    assert [k for k in calls if k.startswith("Freeze:")] == [calls[0]], calls  # asked once, not once a pass
    assert st.frozen_at == "2026-01-01T12:00:00.000000Z", "frozen from when the freeze was asked for"
    assert st.phase_started_at == "2026-01-01T12:00:03.000000Z", "Checkpointing entered after both calls"


def test_someone_elses_checkpoint_of_the_same_name_is_not_used():
    actions = decide(
        obs(
            migration(MigrationPhase.CHECKPOINTING, source_frozen=True),
            source_pod=pod(),
            pod_checkpoint=_ready_checkpoint(uid="x"),
        )
    )
    assert status(actions).reason == "PodCheckpointNameTaken"


def _restoring():
    return migration(
        MigrationPhase.RESTORING, source_frozen=True, container_images=[ContainerImage("app", "localhost/ckpt/app:1")]
    )


def test_restoring_creates_the_restored_pod_on_the_target_from_the_checkpoint_image():
    actions = decide(obs(_restoring(), source_pod=pod(), pod_checkpoint=_ready_checkpoint()))
    (create,) = (a for a in actions if isinstance(a, CreateRestoredPod))
    body = create.body
    assert body["spec"]["nodeName"] == "node-b"
    assert body["spec"]["containers"][0]["image"] == "localhost/ckpt/app:1"
    assert body["spec"]["containers"][0]["imagePullPolicy"] == "Never"
    assert body["metadata"]["annotations"][c.ANNOTATION_MIGRATION_UID] == MUID
    assert not any(isinstance(a, DeletePod) for a in actions), "the source stays until the copy runs"


def test_source_is_deleted_only_once_restored_pod_runs():
    restored = pod(
        name="web-12345", uid="cc", node="node-b", phase="Pending", annotations={c.ANNOTATION_MIGRATION_UID: MUID}
    )
    waiting = decide(obs(_restoring(), source_pod=pod(), restored_pod=restored))
    assert not any(isinstance(a, DeletePod) for a in waiting)
    running = pod(name="web-12345", uid="cc", node="node-b", annotations={c.ANNOTATION_MIGRATION_UID: MUID})
    actions = decide(obs(_restoring(), source_pod=pod(), restored_pod=running))
    (delete,) = (a for a in actions if isinstance(a, DeletePod))
    assert (delete.name, delete.uid, delete.grace_period_seconds) == ("web", PUID, 0)
    st = status(
        decide(obs(_restoring(), source_pod=pod(), restored_pod=running, outcomes={delete.key: Outcome.success()}))
    )
    assert st.phase is MigrationPhase.COMPLETED and st.completion_time
    assert set(st.phase_durations_seconds) >= {"Restoring", "Cleaning"}
    # The frozen source is gone, not frozen: the condition says so (it said "Frozen" on Completed migrations).
    assert not st.source_frozen
    frozen = next(cd for cd in st.conditions if cd.type == c.CONDITION_SOURCE_FROZEN)
    assert (frozen.status.value, frozen.reason) == ("False", "SourceDeleted")


def test_rollback_removes_the_restored_pod_before_thawing():
    restored = pod(
        name="web-12345",
        uid="cc",
        node="node-b",
        problem="container app: CrashLoopBackOff",
        annotations={c.ANNOTATION_MIGRATION_UID: MUID},
    )
    actions = decide(obs(_restoring(), source_pod=pod(), restored_pod=restored))
    assert [type(a) for a in actions if not isinstance(a, (PatchStatus, EmitEvent))] == [], "recorded first"
    st = status(actions)
    assert st.phase is MigrationPhase.ROLLING_BACK and st.reason == "RestoredPodFailed"
    m2 = migration(MigrationPhase.ROLLING_BACK, source_frozen=True, reason=st.reason, message=st.message)
    undo = decide(obs(m2, source_pod=pod(), restored_pod=restored))
    assert [type(a) for a in undo if not isinstance(a, (PatchStatus, EmitEvent))] == [DeletePod]
    again = decide(obs(m2, source_pod=pod(), restored_pod=None))
    (thaw,) = (a for a in again if isinstance(a, ThawSource))
    final = status(decide(obs(m2, source_pod=pod(), outcomes={thaw.key: THAWED})))
    assert final.phase is MigrationPhase.FAILED and not final.source_frozen and final.reason == "RestoredPodFailed"
    assert final.source_state == "app: THAWED (containerd task RUNNING, freezer cgroup THAWED)"
    assert "runs again (checked: app: THAWED" in (final.message or "")


THAWED = Outcome.success(
    {
        "containers": [
            {
                "container_name": "app",
                "state": "FREEZE_STATE_THAWED",
                "evidence": "containerd task RUNNING, freezer cgroup THAWED",
            }
        ]
    }
)


def test_a_thaw_the_runtime_does_not_confirm_is_retried_then_fails_loudly_never_claiming_thawed():
    still = Outcome.success(
        {
            "containers": [
                {"container_name": "app", "state": "FREEZE_STATE_FROZEN", "evidence": "containerd task PAUSED"}
            ]
        }
    )
    m = migration(MigrationPhase.ROLLING_BACK, source_frozen=True, reason="CheckpointRefused", message="CRIU: no")
    (thaw,) = (a for a in decide(obs(m, source_pod=pod())) if isinstance(a, ThawSource))
    soon = decide(obs(m, source_pod=pod(), outcomes={thaw.key: still}))
    assert not any(isinstance(a, PatchStatus) for a in soon), "nothing claimed while the thaw is retried"
    later = decide(obs(m, now=NOW + timedelta(seconds=600), source_pod=pod(), outcomes={thaw.key: still}))
    st = status(later)
    assert st.phase is MigrationPhase.FAILED and st.reason == "SourceStillFrozen" and st.source_frozen
    assert "STILL BE FROZEN" in (st.message or "") and st.source_state == "app: FROZEN (containerd task PAUSED)"
    frozen = next(cd for cd in st.conditions if cd.type == c.CONDITION_SOURCE_FROZEN)
    assert frozen.status is ConditionStatus.TRUE and frozen.reason == "ThawNotVerified"
    assert any(isinstance(a, EmitEvent) and a.type == "Warning" for a in later)


def test_a_pod_with_an_open_tcp_connection_is_refused_before_anything_is_frozen():
    found = Outcome.success(
        {
            "checked": ["TCP: 1 established (1 inside the pod, 0 external), 1 listening, 0 UDP"],
            "problems": [
                {
                    "container_name": "app",
                    "check": "TCPConnectionOpen",
                    "message": "1 established TCP connection (1 inside the pod): set spec.options.tcpEstablished",
                    "blocking": True,
                }
            ],
        }
    )
    actions = decide(obs(migration(), source_pod=pod(), target_node=NODE_B, outcomes=probes_ok(found)))
    st = status(actions)
    assert st.phase is MigrationPhase.FAILED and st.reason == "TCPConnectionOpen"
    assert "nothing was frozen" in (st.message or "") and "tcpEstablished" in (st.message or "")
    assert not any(isinstance(a, (FreezeSource, CreatePodCheckpoint)) for a in actions)
    assert st.eligibility[0].startswith("TCP: 1 established") and st.eligibility[-1].startswith("refused: container")
    eligible = next(cd for cd in st.conditions if cd.type == c.CONDITION_ELIGIBLE)
    assert eligible.status is ConditionStatus.FALSE and eligible.reason == "TCPConnectionOpen"


def test_eligibility_warn_records_the_finding_and_goes_on_to_freeze():
    m = migration()
    m.spec.eligibility = EligibilityPolicy.WARN
    found = Outcome.success(
        {"problems": [{"container_name": "app", "check": "OpenFileInEmptyDir", "message": "x", "blocking": True}]}
    )
    st = status(decide(obs(m, source_pod=pod(), target_node=NODE_B, outcomes=probes_ok(found))))
    assert st.phase is MigrationPhase.FREEZING
    assert next(cd for cd in st.conditions if cd.type == c.CONDITION_ELIGIBLE).reason == "Warned"


def test_a_tty_container_is_refused_from_its_spec():
    p = pod()
    p.raw["spec"]["containers"][0]["tty"] = True
    st = status(decide(obs(migration(), source_pod=p, target_node=NODE_B, outcomes=probes_ok())))
    assert st.phase is MigrationPhase.FAILED and st.reason == "TerminalAttached"


def test_an_agent_that_cannot_check_eligibility_does_not_block_but_says_so():
    old = Outcome.failure("AgentUnimplemented", "agent on node node-a: CheckEligibility failed", retryable=False)
    st = status(decide(obs(migration(), source_pod=pod(), target_node=NODE_B, outcomes=probes_ok(old))))
    assert st.phase is MigrationPhase.FREEZING
    assert any(line.startswith("warning: eligibility not checked") for line in st.eligibility)


def test_a_dry_run_ends_after_validation_without_freezing_or_creating_anything():
    m = migration()
    m.spec.dry_run = True
    actions = decide(obs(m, source_pod=pod(), target_node=NODE_B, outcomes=probes_ok()))
    st = status(actions)
    assert st.phase is MigrationPhase.COMPLETED and st.reason == "DryRunPassed"
    assert st.eligibility == ["TCP: 0 established"] and st.checkpoint_id is None
    assert not [a for a in actions if not isinstance(a, (PatchStatus, EmitEvent, ProbeAgent, CheckEligibility))]


def test_foreign_pod_with_the_restored_name_is_never_deleted():
    foreign = pod(name="web-12345", uid="zz", node="node-b")
    actions = decide(obs(_restoring(), source_pod=pod(), restored_pod=foreign))
    assert not any(isinstance(a, DeletePod) and a.name == "web-12345" for a in actions)
    assert status(actions).reason == "RestoredPodNameTaken"


def test_timeout_rolls_back():
    m = migration(MigrationPhase.CHECKPOINTING, source_frozen=True)
    st = status(decide(obs(m, now=NOW + timedelta(seconds=700), source_pod=pod())))
    assert st.reason == "Timeout" and "timeoutSeconds=600" in st.message


def test_terminal_phases_never_act():
    for phase in (MigrationPhase.COMPLETED, MigrationPhase.FAILED):
        assert decide(obs(migration(phase), source_pod=pod(), target_node=NODE_B)) == []


def test_finalizer_cleans_an_unfinished_migration_but_never_a_completed_one():
    restored = pod(name="web-12345", uid="cc", node="node-b", annotations={c.ANNOTATION_MIGRATION_UID: MUID})
    fin = decide_finalize(obs(_restoring(), source_pod=pod(), restored_pod=restored))
    assert holds_of(fin) and any(isinstance(a, DeletePod) and a.name == "web-12345" for a in fin)
    assert decide_finalize(obs(migration(MigrationPhase.COMPLETED), restored_pod=restored)) == []


def test_ttl_counts_from_completion_and_only_for_finished_migrations():
    done = migration(MigrationPhase.COMPLETED, completion_time="2026-01-01T11:59:00Z")
    assert ttl_remaining(done, NOW) is None, "no TTL: kept until deleted"
    done.spec.ttl_seconds_after_finished = 90
    assert ttl_remaining(done, NOW) == 30.0
    assert ttl_remaining(done, NOW + timedelta(seconds=31)) == -1.0
    failed = migration(MigrationPhase.FAILED, completion_time="2026-01-01T12:00:00Z")
    failed.spec.ttl_seconds_after_finished = 0
    assert ttl_remaining(failed, NOW) == 0.0
    running = migration(MigrationPhase.RESTORING)
    running.spec.ttl_seconds_after_finished = 0
    assert ttl_remaining(running, NOW + timedelta(days=1)) is None, "never while it runs"
    done.metadata["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    assert ttl_remaining(done, NOW + timedelta(days=1)) is None, "already going"


def test_a_restore_criu_failed_is_explained_in_criu_words_from_the_target_agent_without_node_paths():
    restored = pod(
        name="web-12345",
        uid="cc",
        node="node-b",
        problem="container app: RunContainerError (criu failed: type NOTIFY errno 0 log file: "
        "/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/work/restore.log)",
        annotations={c.ANNOTATION_MIGRATION_UID: MUID},
    )
    first = decide(obs(_restoring(), source_pod=pod(), restored_pod=restored))
    (ask,) = (a for a in first if isinstance(a, DescribeRestoreFailure))
    assert ask.node == "node-b" and ask.request == pb.RestoreFailureRequest(
        pod_uid="cc", container_names=["app"], checkpoint_id=_restoring().status.checkpoint_id
    )
    assert not any(isinstance(a, DeletePod) for a in first), "the words first, then the rollback"
    said = Outcome.success(
        {
            "containers": [
                {
                    "container_name": "app",
                    "lines": ["Can't open file events.log on restore: No such file or directory"],
                    "cause": "OpenFileCannotMove",
                    "advice": "a process holds a file open whose contents are not on the target node",
                }
            ]
        }
    )
    actions = decide(obs(_restoring(), source_pod=pod(), restored_pod=restored, outcomes={ask.key: said}))
    st = status(actions)
    assert st.phase is MigrationPhase.ROLLING_BACK and st.reason == "RestoreFailed"
    assert "CRIU: Can't open file events.log" in st.message and "Hint: a process holds a file" in st.message
    # The target agent kept nothing: the runtime's own words, without its paths.
    none = decide(obs(_restoring(), source_pod=pod(), restored_pod=restored, outcomes={ask.key: Outcome.success({})}))
    msg = status(none).message
    assert status(none).reason == "RestoreFailed" and "restore.log" in msg and "/run/containerd" not in msg


def _failed_checkpoint(reason="StorageFull", message="container app: no space left on the export"):
    pc = _ready_checkpoint()
    pc.status.phase, pc.status.reason, pc.status.message = CheckpointPhase.FAILED, reason, message
    return pc


def _live_checkpoint_failed(target_states=None, aborted=""):
    """A Live migration in Checkpointing whose PodCheckpoint failed; the target's agent answers `target_states`
    (None: not asked yet)."""
    m = migration(MigrationPhase.CHECKPOINTING, engine=Engine.LIVE, source_frozen=True)
    first = decide(obs(m, source_pod=pod(), pod_checkpoint=_failed_checkpoint()))
    if target_states is None:
        return first
    (ask,) = (a for a in first if isinstance(a, GetRestoreState))
    assert ask.node == "node-b" and list(ask.request.container_names) == ["app"]
    answer = {"containers": [{"container_name": "app", "state": s} for s in target_states], "aborted": aborted}
    return decide(
        obs(m, source_pod=pod(), pod_checkpoint=_failed_checkpoint(), outcomes={ask.key: Outcome.success(answer)})
    )


def test_a_live_migration_whose_target_verified_the_checkpoint_goes_on_when_only_the_durable_copy_failed():
    asking = _live_checkpoint_failed()
    assert not any(isinstance(a, PatchStatus) and a.status.phase is not MigrationPhase.CHECKPOINTING for a in asking)
    for state in ("RESTORE_STATE_STAGED", "RESTORE_STATE_RESTORED"):
        actions = _live_checkpoint_failed([state])
        st = status(actions)
        assert st.phase is MigrationPhase.RESTORING, (state, st.message)
        (cond,) = (x for x in st.conditions if x.type == c.CONDITION_DURABLE_COPY)
        assert cond.status is ConditionStatus.FALSE and "StorageFull" in cond.message and "no space" in cond.message
        assert any(
            isinstance(e, EmitEvent) and e.reason == "DurableCopyFailed" and e.type == "Warning" for e in actions
        )


def test_a_live_migration_rolls_back_when_the_target_has_no_verified_copy_or_the_restore_was_aborted():
    for states, aborted in ((["RESTORE_STATE_WAITING"], ""), (["RESTORE_STATE_ABSENT"], ""), ([], "rolled back")):
        st = status(_live_checkpoint_failed(states, aborted))
        assert (st.phase, st.reason) == (MigrationPhase.ROLLING_BACK, "StorageFull"), (states, st.message)
        assert not any(x.type == c.CONDITION_DURABLE_COPY for x in st.conditions)
    aborted = status(_live_checkpoint_failed(["RESTORE_STATE_STAGED"], "rolled back"))
    assert aborted.phase is MigrationPhase.ROLLING_BACK


def test_an_image_migration_rolls_back_on_a_failed_checkpoint_without_asking_the_target():
    m = migration(MigrationPhase.CHECKPOINTING, engine=Engine.IMAGE, source_frozen=True)
    actions = decide(obs(m, source_pod=pod(), pod_checkpoint=_failed_checkpoint()))
    assert not any(isinstance(a, GetRestoreState) for a in actions)
    assert status(actions).phase is MigrationPhase.ROLLING_BACK


def test_a_completed_live_migration_says_what_it_saw_of_its_durable_copy():
    in_progress = _ready_checkpoint()
    in_progress.status.phase = CheckpointPhase.IN_PROGRESS
    seen = {}
    for label, pc in (("ready", _ready_checkpoint()), ("storing", in_progress), ("failed", _failed_checkpoint())):
        m = migration(MigrationPhase.CLEANING, engine=Engine.LIVE)
        st = status(decide(obs(m, source_pod=None, pod_checkpoint=pc)))
        assert st.phase is MigrationPhase.COMPLETED
        (cond,) = (x for x in st.conditions if x.type == c.CONDITION_DURABLE_COPY)
        seen[label] = (cond.status, cond.reason)
    assert seen == {
        "ready": (ConditionStatus.TRUE, "Stored"),
        "storing": (ConditionStatus.UNKNOWN, "Storing"),
        "failed": (ConditionStatus.FALSE, "NotStored"),
    }
    # Once the migration went on without it, a later look never turns that into something better.
    went_on = status(_live_checkpoint_failed(["RESTORE_STATE_STAGED"]))
    m = migration(MigrationPhase.CLEANING, engine=Engine.LIVE, conditions=went_on.conditions)
    st = status(decide(obs(m, source_pod=None, pod_checkpoint=in_progress)))
    (cond,) = (x for x in st.conditions if x.type == c.CONDITION_DURABLE_COPY)
    assert (cond.status, cond.reason) == (ConditionStatus.FALSE, "NotStored")
    image = migration(MigrationPhase.CLEANING, engine=Engine.IMAGE)
    st = status(decide(obs(image, source_pod=None, pod_checkpoint=_ready_checkpoint())))
    assert st.phase is MigrationPhase.COMPLETED and not any(x.type == c.CONDITION_DURABLE_COPY for x in st.conditions)


LIVE_CAPS = {**CAPS, "live_restore_supported": True, "lazy_pages_supported": True}


def _validated_live(post_copy=PostCopy.AUTO, runtime_class="lpm", source_caps=None, target_caps=None, keep=False):
    m = migration()
    m.spec.post_copy, m.spec.keep_name = post_copy, keep
    src = pod()
    if runtime_class:
        src.raw["spec"]["runtimeClassName"] = runtime_class
    eligible = eligibility(live=True)
    outcomes = {
        ProbeAgent("node-a").key: Outcome.success(source_caps or LIVE_CAPS),
        ProbeAgent("node-b").key: Outcome.success(target_caps or LIVE_CAPS),
        eligible.key: Outcome.success({"checked": []}),
    }
    st = status(decide(obs(m, source_pod=src, target_node=NODE_B, outcomes=outcomes)))
    assert st.engine is Engine.LIVE, st.message
    (validated,) = (x for x in st.conditions if x.type == c.CONDITION_VALIDATED)
    return st.post_copy_above_bytes, validated.message


def test_post_copy_is_asked_for_above_256_mib_only_where_both_nodes_and_the_pods_runtime_can():
    assert _validated_live() == (256 << 20, _validated_live()[1])
    assert "post-copy for containers holding 256 MiB or more" in _validated_live()[1]
    assert _validated_live(PostCopy.ALWAYS)[0] == 1
    above, said = _validated_live(PostCopy.NEVER)
    assert above is None and "spec.postCopy Never" in said
    above, said = _validated_live(runtime_class=None)
    assert above is None and "does not run under RuntimeClass lpm" in said
    target = {**LIVE_CAPS, "lazy_pages_supported": False, "problems": ["post-copy: fs.pipe-max-size is 1048576"]}
    above, said = _validated_live(target_caps=target)
    assert above is None and "target node-b: post-copy: fs.pipe-max-size is 1048576" in said
    # A pod that keeps its name loses its source before the restore: nothing would serve the pages.
    above, said = _validated_live(keep=True)
    assert above is None and "keeps its name" in said


def _streaming(pc_phase, reason=None, pages=None, outcomes=None, running=True):
    """A post-copy migration in Checkpointing whose replacement runs (or not); the target's agent answers that
    its page stream is `pages` (None: not asked yet)."""
    m = migration(MigrationPhase.CHECKPOINTING, engine=Engine.LIVE, source_frozen=True, post_copy_above_bytes=1)
    pc = _ready_checkpoint()
    pc.status.phase, pc.status.reason, pc.status.message = pc_phase, reason, "container app: pages"
    replacement = replace(
        pod(name="web-12345", uid="cc", node="node-b", annotations={c.ANNOTATION_MIGRATION_UID: MUID}),
        started=("app",) if running else (),
    )
    outcomes = dict(outcomes or {})
    if pages is not None:
        ask = GetRestoreState(
            "node-b", pb.RestoreStateRequest(checkpoint_id="20260101t115950z-aaaaaaaa", container_names=["app"])
        )
        state = {"container_name": "app", "state": "RESTORE_STATE_RESTORED", "pages": f"PAGE_STREAM_{pages}"}
        if pages == "BROKEN":
            state["pages_message"] = "criu lazy-pages exited with 1; lpm-runc killed the restored process (pid 7)"
        outcomes[ask.key] = Outcome.success({"containers": [state]})
    return decide(obs(m, source_pod=pod(), restored_pod=replacement, pod_checkpoint=pc, outcomes=outcomes))


def test_a_post_copy_migration_keeps_its_source_until_the_target_says_every_page_arrived():
    asking = _streaming(CheckpointPhase.IN_PROGRESS)
    (ask,) = (a for a in asking if isinstance(a, GetRestoreState))
    assert ask.node == "node-b" and not any(isinstance(a, DeletePod) for a in asking)
    waiting = _streaming(CheckpointPhase.IN_PROGRESS, pages="STREAMING")
    assert not any(isinstance(a, DeletePod) for a in waiting)
    st = status(waiting)
    assert (st.phase, st.reason) == (MigrationPhase.CHECKPOINTING, "StreamingPages")
    # Every page arrived: the source goes, even if the source's agent never said so (it died mid-stream, its
    # retry was refused and the checkpoint failed).
    for pc_phase, reason in ((CheckpointPhase.STREAMED, None), (CheckpointPhase.FAILED, c.REASON_POST_COPY_FAILED)):
        done = _streaming(pc_phase, reason, pages="COMPLETE")
        assert status(done).phase is MigrationPhase.CLEANING, status(done).message
        (delete,) = (a for a in done if isinstance(a, DeletePod))
        assert delete.name == "web" and delete.grace_period_seconds == 0
    # The condition says post-copy whether or not the source's agent has reported it yet.
    for pc_phase in (CheckpointPhase.STREAMED, CheckpointPhase.IN_PROGRESS):
        done = _streaming(pc_phase, pages="COMPLETE", outcomes={delete.key: Outcome.success()})
        st = status(done)
        assert st.phase is MigrationPhase.COMPLETED
        (cond,) = (x for x in st.conditions if x.type == c.CONDITION_DURABLE_COPY)
        assert (cond.status, cond.reason) == (ConditionStatus.FALSE, "PostCopy"), (pc_phase, cond)


def test_a_broken_page_stream_rolls_back_to_the_whole_source_even_with_the_replacement_running():
    st = status(_streaming(CheckpointPhase.IN_PROGRESS, pages="BROKEN"))
    assert (st.phase, st.reason) == (MigrationPhase.ROLLING_BACK, c.REASON_POST_COPY_FAILED)
    assert "the source, still whole, thawed" in st.message and "killed the restored process" in st.message


def test_a_failed_post_copy_checkpoint_without_a_running_replacement_rolls_back_without_asking_the_target():
    for reason in (c.REASON_POST_COPY_FAILED, "AgentUnavailable"):
        actions = _streaming(CheckpointPhase.FAILED, reason, running=False)
        st = status(actions)
        assert (st.phase, st.reason) == (MigrationPhase.ROLLING_BACK, reason)
        assert not any(isinstance(a, GetRestoreState) for a in actions), "a verified copy on the target lacks memory"
    # Without post-copy, a failure once the replacement runs is only its durable copy's (unchanged).
    m = migration(MigrationPhase.CHECKPOINTING, engine=Engine.LIVE, source_frozen=True)
    running = replace(
        pod(name="web-12345", uid="cc", node="node-b", annotations={c.ANNOTATION_MIGRATION_UID: MUID}),
        started=("app",),
    )
    st = status(decide(obs(m, source_pod=pod(), restored_pod=running, pod_checkpoint=_failed_checkpoint())))
    assert st.phase is MigrationPhase.CLEANING
