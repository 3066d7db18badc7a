"""PodMigration: what to do next, decided from what was observed. Pure: no I/O, `now` comes in.

    Live engine (the default where the target has lpm-runc):
    Pending -> Validating -> Preparing -> Freezing -> Checkpointing -> Transferring -> Restoring -> Cleaning
            -> Completed
    Image engine (OCI checkpoint image, restore-via-create):
    Pending -> Validating -> Freezing -> Checkpointing -> Converting -> Restoring -> Cleaning -> Completed
                   |            any failure (or timeout) from Preparing to Restoring -> RollingBack -> Failed
                   +-> Failed (nothing was touched: includes a pod that is not eligible)
                   +-> Completed (DryRunPassed: spec.dryRun, nothing was touched)

Owned pods (a ReplicaSet's or Job's, opted in; `handover`) take the live path, but in Preparing the controller
does not create the replacement: Validating proves the admission webhook answers and records Preparing first,
then Preparing releases the source from its owner, and the owner's new pod becomes the replacement (the webhook).
A rollback gives the source back to its owner before it deletes the replacement.

The commit point is entering Cleaning: the restored pod was observed running (live engine: every container
restored by lpm-runc). Before it any failure rolls back; after it nothing does. With post-copy
(status.postCopyAboveBytes) the replacement runs before its memory has arrived, so Cleaning waits until the
target's agent reports every page in (lpm-runc's record); a page stream it reports BROKEN rolls back (lpm-runc
killed the replacement's process, and the source, dumped with leave-running, is whole and still frozen).

Freezing creates the PodCheckpoint before it freezes, where the source's agent can meet it there
(status.dumpWaitsForFreeze): each container's Checkpoint call reaches the agent and waits, the Freeze waits
(at most FREEZE_AWAITS_CHECKPOINT) until they do, and the dump starts as the pod freezes instead of after the
API round trips from the freeze to the Checkpoint call (~0.1 s here). Those calls dump nothing unless this
freeze came: a rollback before it fences them.

A pod that keeps its name (spec.keepName, or a StatefulSet's pod) has no replacement before the freeze: the name
is free only once the source is gone. It skips Preparing; once its checkpoint is staged on the target, Restoring
deletes the frozen source, and that deletion is its commit point. Then the replacement is created under the same
name (by the controller from `status.replacementManifest`, or by the StatefulSet through the admission webhook)
and lpm-runc restores it. A failure after the commit point cannot thaw anything: the replacement is removed (a
StatefulSet then starts its pod afresh), the migration ends Failed with reason FailedAfterCommit, and the
checkpoint stays with the PodMigration.

Safety rules the property tests check, and how this module keeps them:
- at most one restored pod: its name is a function of the migration UID, created with AlreadyExists = success;
- the source is deleted only in Cleaning, which is entered only once the restored pod is observed Running (a pod
  that keeps its name: in Restoring, once every container's checkpoint is staged on the target);
- rollback deletes the restored pod and waits until it is *gone* before thawing the source, so two unfrozen
  copies never run at once; on the live engine it first aborts the restore on the target (final: a container
  waiting in lpm-runc fails, none is restored from that checkpoint later);
- a rollback is recorded (RollingBack) before anything is undone, so it is final: a cycle that thawed the source
  and lost its status write cannot be followed by one that migrates on from the stale checkpoint;
- terminal phases return no actions at all;
- nothing is frozen before the source's agent found nothing that makes the dump or restore fail for certain
  (spec.eligibility Enforce), and a rollback reports the source running only once its agent checked it with the
  runtime (status.sourceState); a thaw that cannot be verified ends Failed with reason SourceStillFrozen.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from google.protobuf.duration_pb2 import Duration

from lpm.api import constants as c
from lpm.api.agent.v1 import agent_pb2 as pb
from lpm.api.codec import encode
from lpm.api.conditions import set_condition
from lpm.api.messages import scrub_paths
from lpm.api.models import (
    POST_COPY_ABOVE_BYTES,
    CheckpointPhase,
    ConditionStatus,
    ContainerImage,
    DeletionPolicy,
    EligibilityPolicy,
    Engine,
    Handover,
    MigrationPhase,
    MigrationProgress,
    PodCheckpoint,
    PodCheckpointSpec,
    PodMigration,
    PodMigrationSpec,
    PodMigrationStatus,
    PostCopy,
    SourceCleanup,
    SourcePolicy,
)
from lpm.api.names import checkpoint_id_for
from lpm.api.views import NodeView, PodView
from lpm.app import clock
from lpm.controller.effects import (
    AbortRestore,
    Action,
    CheckEligibility,
    ConvertImage,
    CreatePodCheckpoint,
    CreateRestoredPod,
    DeleteObject,
    DeletePod,
    DescribeRestoreFailure,
    FreezeSource,
    GetProgress,
    GetRestoreState,
    Outcome,
    PatchPod,
    ProbeAgent,
    ProbeWebhook,
    StageRestore,
    ThawSource,
)
from lpm.controller.plan import Plan
from lpm.controller.podmigration.handover import (
    adopted,
    keeps_name,
    plan_handover,
    readopt_patch,
    release_patch,
    released_by,
)
from lpm.controller.podmigration.restore import (
    build_restored_pod,
    original_name,
    pod_checkpoint_name,
    restored_pod_name,
)

P = MigrationPhase
# Phases in which the migration has touched the source and a failure must roll back.
ROLLBACK_PHASES = frozenset({P.PREPARING, P.FREEZING, P.CHECKPOINTING, P.TRANSFERRING, P.CONVERTING, P.RESTORING})
# Agents that are down get this long (or the migration's timeout, if shorter) before validation gives up.
AGENT_WAIT_SECONDS = 120.0
# A rollback that cannot thaw (agent unreachable) ends Failed after this long; the agent's own auto-thaw
# deadline (set on Freeze) still thaws the source.
ROLLBACK_THAW_SECONDS = 120.0
# The agent thaws by itself this long after the migration's deadline if nobody calls Thaw.
AUTO_THAW_MARGIN_SECONDS = 120
# An owner gets this long to create the replacement of a released source before the migration rolls back.
OWNER_WAIT_SECONDS = 60.0
# After giving a released source back, a rollback waits this long for its owner to adopt it before deleting the
# replacement: deleted earlier, the owner would see a replica missing and start a fresh one.
READOPT_WAIT_SECONDS = 30.0
# While Checkpointing, the source's agent is asked for the data in flight at most this often.
PROGRESS_EVERY_SECONDS = 1.0
PROGRESS_STAGES = ("dumping", "sending", "streaming pages", "storing", "done")
# Preparing asks the target's agent to answer as soon as the replacement's first container waits in lpm-runc.
REPLACEMENT_POLL = Duration(seconds=1, nanos=500_000_000)
# How long the source's agent holds the Freeze until the checkpoint's calls (created just before it) wait there:
# they come within a few API round trips; past this it freezes all the same and they find the pod frozen.
FREEZE_AWAITS_CHECKPOINT = Duration(seconds=3)


@dataclass(frozen=True)
class Observed:
    """Everything the decider may look at. The shell fills in what `reads_for(phase)` names."""

    migration: PodMigration
    now: datetime
    source_pod: PodView | None = None
    source_node: NodeView | None = None
    target_node: NodeView | None = None
    older_active_migrations: tuple[str, ...] = ()
    pod_checkpoint: PodCheckpoint | None = None
    restored_pod: PodView | None = None
    outcomes: Mapping[str, Outcome] = field(default_factory=dict)
    # When this pass runs (later than `now` once the cycle's effects took time): only for recording phase
    # changes and their durations, never for decisions or requests (see cycle.to_fixed_point).
    recorded_at: datetime | None = None


def reads_for(phase: MigrationPhase) -> frozenset[str]:
    """Which parts of the world a phase looks at, so the shell reads no more than needed."""
    if phase in (P.PENDING, P.VALIDATING):
        # The restored pod too: a replacement created in Preparing whose status write was lost is found again
        # here, and a validation failure must remove it (`MigrationPlan.fail`).
        return frozenset({"source_pod", "nodes", "migrations", "restored_pod"})
    if phase in ROLLBACK_PHASES or phase in (P.CLEANING, P.ROLLING_BACK):
        # The restored pod is read in every phase that may roll back: a rollback must see it to remove it.
        return frozenset({"source_pod", "pod_checkpoint", "restored_pod"})
    return frozenset()


def is_active(migration: PodMigration) -> bool:
    return not migration.status.phase.terminal


class MigrationPlan(Plan[PodMigrationStatus]):
    """One answer for a PodMigration (`Plan`), with the migration's own vocabulary: phases entered with their
    durations, conditions and events, and who is who (source pod, restored pod)."""

    def __init__(self, obs: Observed) -> None:
        super().__init__(obs.migration.status, obs.outcomes)
        self.obs = obs
        self.m = obs.migration
        self.now = clock.fmt(obs.now)
        self.recorded = obs.recorded_at or obs.now
        self.stamp = clock.fmt(self.recorded)

    # ----------------------------------------------------------------------------------------- helpers
    def note(self, reason: str, message: str) -> None:
        self.status.reason, self.status.message = reason, message

    def enter(self, phase: MigrationPhase, reason: str, message: str) -> None:
        st = self.status
        old = st.phase
        spent = clock.seconds_between(st.phase_started_at, self.recorded)
        if spent is not None:
            st.phase_durations_seconds[old.value] = round(st.phase_durations_seconds.get(old.value, 0.0) + spent, 6)
        st.phase = phase
        st.phase_started_at = self.stamp
        st.reason, st.message = reason, message
        if phase.terminal:
            st.completion_time = self.stamp
        gen = self.m.metadata.get("generation")
        if phase is P.COMPLETED:
            ready = (ConditionStatus.TRUE, reason, message)
        elif phase is P.FAILED:
            ready = (ConditionStatus.FALSE, reason, message)
        else:
            ready = (ConditionStatus.FALSE, phase.value, message)
        st.conditions = set_condition(st.conditions, c.CONDITION_READY, *ready, self.now, gen)
        st.observed_generation = gen
        warning = phase in (P.FAILED, P.ROLLING_BACK)
        self.emit("Warning" if warning else "Normal", phase.value, message)

    def fail(self, reason: str, message: str) -> None:
        """Failed in validation. Nothing was frozen then, but a replacement pod of ours may exist: Preparing
        created it and the status write that recorded Preparing was lost. Such a failure rolls back, which
        deletes the replacement and waits until it is gone before the migration may end Failed."""
        self.status.conditions = set_condition(
            self.status.conditions, c.CONDITION_VALIDATED, ConditionStatus.FALSE, reason, message, self.now
        )
        if self.restored_is_ours():
            return _rollback(self, reason, message)
        self.enter(P.FAILED, reason, message)

    # ---------------------------------------------------------------------------------------- identity
    @property
    def ns(self) -> str:
        return str(self.m.metadata.get("namespace", ""))

    @property
    def uid(self) -> str:
        return str(self.m.metadata.get("uid", ""))

    def source(self) -> PodView | None:
        """The source pod, but only the very pod this migration started with (names can be reused)."""
        pod = self.obs.source_pod
        if pod is None or (self.status.pod_uid and pod.uid != self.status.pod_uid):
            return None
        return pod

    def restored_is_ours(self) -> bool:
        rp = self.obs.restored_pod
        return rp is not None and rp.annotations.get(c.ANNOTATION_MIGRATION_UID) == self.uid

    def keeps_name(self) -> bool:
        """The replacement takes the source's own name (spec.keepName, StatefulSets): see the module doc."""
        st = self.status
        return bool(st.restored_pod_name) and st.restored_pod_name == self.m.spec.pod_name

    def committed(self) -> bool:
        """A pod that keeps its name passed its commit point: Restoring, and the source is gone (deleted there)."""
        src = self.source()
        return self.keeps_name() and self.status.phase is P.RESTORING and (src is None or src.deleting)

    def containers(self) -> list[str]:
        pod = self.source()
        return list(pod.containers) if pod else []

    def _source_containers(self) -> dict[str, Any]:
        """The fields that name the source's containers in a Freeze or a Thaw (both messages have them)."""
        st = self.status
        return {
            "pod_namespace": self.ns,
            "pod_name": self.m.spec.pod_name,
            "pod_uid": st.pod_uid or "",
            "container_names": self.containers(),
            "checkpoint_id": st.checkpoint_id or "",
        }

    def freeze_request(self, auto_thaw_after: Duration) -> pb.FreezeRequest:
        request = pb.FreezeRequest(auto_thaw_after=auto_thaw_after, **self._source_containers())
        if self.status.dump_waits_for_freeze:
            request.await_checkpoints.CopyFrom(FREEZE_AWAITS_CHECKPOINT)
        return request

    def thaw_request(self) -> pb.ThawRequest:
        return pb.ThawRequest(**self._source_containers())


def _distinct(obs: Observed) -> Observed:
    """The restored pod is read by its name, which is the source's own when the pod keeps its name: the source
    itself is never taken for its replacement."""
    rp, uid = obs.restored_pod, obs.migration.status.pod_uid
    return replace(obs, restored_pod=None) if rp is not None and uid and rp.uid == uid else obs


def decide(obs: Observed) -> list[Action]:
    obs = _distinct(obs)
    plan = MigrationPlan(obs)
    phase = plan.status.phase
    if phase.terminal or obs.migration.metadata.get("deletionTimestamp"):
        return []
    elapsed = clock.seconds_between(plan.status.start_time, obs.now) or 0.0
    timeout = obs.migration.spec.timeout_seconds
    if phase in ROLLBACK_PHASES and elapsed > timeout:
        _rollback(
            plan,
            "Timeout",
            f"the migration did not finish within spec.timeoutSeconds={timeout}s (it was {phase.value}). Check the "
            "agents' logs, or raise timeoutSeconds.",
        )
        return plan.actions()
    {
        P.PENDING: _pending,
        P.VALIDATING: _validating,
        P.PREPARING: _preparing,
        P.FREEZING: _freezing,
        P.CHECKPOINTING: _checkpointing,
        P.TRANSFERRING: _transferring,
        P.CONVERTING: _converting,
        P.RESTORING: _restoring,
        P.CLEANING: _cleaning,
        P.ROLLING_BACK: _rolling_back,
    }[phase](plan)
    return plan.actions()


# ------------------------------------------------------------------------------------------------ phases


def _pending(plan: MigrationPlan) -> None:
    plan.status.start_time = plan.now
    # Time spent Pending is the wait for a controller to pick the migration up.
    plan.status.phase_started_at = str(plan.m.metadata.get("creationTimestamp") or plan.now)
    plan.enter(P.VALIDATING, "Validating", f"checking pod {plan.m.spec.pod_name} and node {plan.m.spec.target_node}")
    _validating(plan)


@dataclass(frozen=True)
class _Subject:
    """What validation looks at before asking any agent. `pod` and `node` are for checks that come after the
    ones that found them missing."""

    spec: PodMigrationSpec
    ns: str
    uid: str
    found_pod: PodView | None
    found_node: NodeView | None
    older: tuple[str, ...]

    @property
    def pod(self) -> PodView:
        assert self.found_pod is not None, "a check on the pod comes after PodNotFound"
        return self.found_pod

    @property
    def node(self) -> NodeView:
        assert self.found_node is not None, "a check on the node comes after TargetNodeNotFound"
        return self.found_node


@dataclass(frozen=True)
class Check:
    reason: str
    fails: Callable[[_Subject], bool]
    message: Callable[[_Subject], str]


def _owner_problem(s: _Subject) -> tuple[str, str] | None:
    found = plan_handover(s.pod.raw, s.uid)
    return found if isinstance(found, tuple) else None


def _owner_fails(reason: str) -> Callable[[_Subject], bool]:
    return lambda s: (_owner_problem(s) or ("", ""))[0] == reason


def _owner_message(s: _Subject) -> str:
    return (_owner_problem(s) or ("", ""))[1]


_HOST_PARTS = {"hostNetwork": "address, ports and connections", "hostPID": "process IDs", "hostIPC": "shared memory"}


def _host_parts(keys: tuple[str, ...]) -> str:
    return "; ".join(f"its {_HOST_PARTS[k]}" for k in keys)


# What makes a migration fail validation before any agent is asked, in order: a check may assume that every
# check above it passed. The first that fails names the reason.
CHECKS: tuple[Check, ...] = (
    Check(
        "FrozenSourceRetained",
        lambda s: s.spec.source_policy is SourcePolicy.FREEZE and s.spec.source_cleanup is SourceCleanup.RETAIN,
        lambda s: "sourcePolicy Freeze with sourceCleanup Retain would leave a frozen source pod that its agent "
        "thaws later, running next to the restored copy; use sourceCleanup Delete, or sourcePolicy KeepRunning "
        "for a clone",
    ),
    Check(
        "PodNotFound",
        lambda s: s.found_pod is None,
        lambda s: f"pod {s.ns}/{s.spec.pod_name} does not exist; check spec.podName",
    ),
    Check(
        "PodNotRunning",
        lambda s: not s.pod.running,
        lambda s: f"pod {s.spec.pod_name} is {'terminating' if s.pod.deleting else s.pod.phase}; only Running "
        "pods can be migrated",
    ),
    Check(
        "PodUsesHostNamespaces",
        lambda s: bool(s.pod.host_namespaces),
        lambda s: f"pod {s.spec.pod_name} shares its node's namespaces ({', '.join(s.pod.host_namespaces)}): "
        f"{_host_parts(s.pod.host_namespaces)} belong to node {s.pod.node_name} and cannot move with it; LPM "
        "migrates pods that have their own network, PID and IPC namespaces",
    ),
    *(
        Check(reason, _owner_fails(reason), _owner_message)
        for reason in ("PodHasController", "OwnerNotSupported", "OwnerSelectorUnknown")
    ),
    Check(
        "OwnedPodClone",
        lambda s: isinstance(plan_handover(s.pod.raw, s.uid), Handover)
        and s.spec.source_policy is SourcePolicy.KEEP_RUNNING,
        lambda s: f"pod {s.spec.pod_name} has an owner, and a running clone would be a replica its owner does not "
        "know; owned pods migrate with sourcePolicy Freeze",
    ),
    Check(
        "KeepNameNeedsFreeze",
        lambda s: s.spec.keep_name and s.spec.source_policy is SourcePolicy.KEEP_RUNNING,
        lambda s: f"spec.keepName: a clone of pod {s.spec.pod_name} cannot have its name while it runs; keepName "
        "needs sourcePolicy Freeze",
    ),
    Check(
        "KeepNameOwned",
        lambda s: s.spec.keep_name
        and isinstance(found := plan_handover(s.pod.raw, s.uid), Handover)
        and not keeps_name(found),
        lambda s: f"spec.keepName: pod {s.spec.pod_name} belongs to {s.pod.controller}, which names its pods "
        "itself (the restored pod is its next one); keepName is for bare pods (a StatefulSet's pod keeps its "
        "name anyway)",
    ),
    Check(
        "PodNotScheduled",
        lambda s: not s.pod.node_name,
        lambda s: f"pod {s.spec.pod_name} is not bound to a node yet",
    ),
    Check(
        "TargetIsSourceNode",
        lambda s: s.spec.target_node == s.pod.node_name,
        lambda s: f"pod {s.spec.pod_name} already runs on {s.spec.target_node}; choose another node",
    ),
    Check(
        "TargetNodeNotFound",
        lambda s: s.found_node is None,
        lambda s: f"node {s.spec.target_node} does not exist (kubectl get nodes)",
    ),
    Check(
        "TargetNodeNotReady",
        lambda s: s.node.deleting or not s.node.ready,
        lambda s: f"target node {s.spec.target_node} is NotReady: {s.node.ready_message}",
    ),
    Check(
        "TargetNodeUnschedulable",
        lambda s: s.node.unschedulable,
        lambda s: f"target node {s.spec.target_node} is cordoned; uncordon it or choose another node",
    ),
    Check(
        "AnotherMigrationActive",
        lambda s: bool(s.older),
        lambda s: f"PodMigration {s.older[0]} is already migrating pod {s.spec.pod_name}; wait for it to finish "
        "or delete it",
    ),
)


def validation_problem(obs: Observed) -> tuple[str, str] | None:
    """(reason, message) of the first check in CHECKS that fails; None when all pass."""
    m = obs.migration
    subject = _Subject(
        m.spec,
        str(m.metadata.get("namespace", "")),
        str(m.metadata.get("uid", "")),
        obs.source_pod,
        obs.target_node,
        obs.older_active_migrations,
    )
    return next(((ch.reason, ch.message(subject)) for ch in CHECKS if ch.fails(subject)), None)


def _validating(plan: MigrationPlan) -> None:
    """CHECKS, then the agents: both must be up and able (the source to checkpoint, and to freeze if asked),
    the target decides the engine, and the source's agent checks the pod's eligibility."""
    obs, m = plan.obs, plan.m
    problem = validation_problem(obs)
    if problem is not None:
        return plan.fail(*problem)
    pod, node = obs.source_pod, obs.target_node
    assert pod is not None and pod.node_name and node is not None, "CHECKS found them"
    pod_name, target = m.spec.pod_name, m.spec.target_node
    waited = clock.seconds_between(plan.status.start_time, obs.now) or 0.0
    freeze = m.spec.source_policy is SourcePolicy.FREEZE
    pending_probe = False
    target_caps: Mapping[str, Any] = {}
    source_caps: Mapping[str, Any] = {}
    for role, node_name in (("source", pod.node_name), ("target", target)):
        out = plan.outcome(ProbeAgent(node_name))
        if out is None:
            pending_probe = True
            continue
        if not out.ok:
            if out.retryable and waited < min(AGENT_WAIT_SECONDS, m.spec.timeout_seconds):
                plan.note(out.reason or "AgentUnavailable", out.message)
                pending_probe = True
                continue
            return plan.fail(out.reason or "AgentUnavailable", out.message)
        caps = out.value
        missing = []
        if role == "source" and not caps.get("checkpoint_supported"):
            missing.append("checkpoint")
        if role == "source" and freeze and not caps.get("freeze_supported"):
            missing.append("freeze")
        if role == "target":
            target_caps = caps
        else:
            source_caps = caps
        if missing:
            problems = "; ".join(str(p) for p in caps.get("problems") or []) or "no details reported"
            return plan.fail(
                "AgentNotCapable",
                f"the agent on {role} node {node_name} cannot {', '.join(missing)}: {problems}",
            )
    if pending_probe:
        return None
    handover = plan_handover(pod.raw, plan.uid)
    assert not isinstance(handover, tuple), "CHECKS refused it"
    engine = _choose_engine(plan, pod, node, target_caps, owned=handover)
    if engine is None:
        return None
    eligible = _eligible(plan, pod, waited, engine)
    if eligible is not True:
        return None
    if handover is not None and not handover.released and _webhook_answers(plan, pod, handover) is not True:
        return None
    st = plan.status
    if m.spec.dry_run:
        st.conditions = set_condition(
            st.conditions,
            c.CONDITION_VALIDATED,
            ConditionStatus.TRUE,
            "Validated",
            "pod, nodes and agents ok",
            plan.now,
        )
        return plan.enter(
            P.COMPLETED,
            "DryRunPassed",
            f"pod {pod_name} can be migrated from {pod.node_name} to {target} with the {engine.value} engine; "
            "dry run, nothing was frozen",
        )
    st.pod_uid = pod.uid
    st.source_node = pod.node_name
    st.checkpoint_id = checkpoint_id_for(str(m.metadata.get("creationTimestamp") or plan.now), plan.uid or pod.uid)
    st.pod_checkpoint_name = pod_checkpoint_name(str(m.metadata.get("name")))
    keep = m.spec.keep_name or keeps_name(handover)
    st.restored_pod_name = pod_name if keep else restored_pod_name(original_name(pod.raw) or pod_name, plan.uid)
    st.engine = engine
    st.handover = handover
    st.dump_waits_for_freeze = freeze and bool(source_caps.get("freeze_hand_off"))
    validated = "pod, nodes and agents ok"
    if st.dump_waits_for_freeze:
        validated += "; the checkpoint is created first and waits at the source's agent, which dumps as it freezes"
    if engine is Engine.LIVE:
        said = [str(p) for p in source_caps.get("problems") or [] if str(p).startswith(c.PRECOPY_PROBLEM_PREFIX)]
        why = (
            "pre-copy rounds are not used yet"
            if source_caps.get("memory_dirty_tracking")
            else f"on {pod.node_name}, {said[0] if said else 'pre-copy: its agent reports no dirty page tracking'}"
        )
        validated += f"; the source is dumped in one pass while frozen ({why})"
        st.post_copy_above_bytes, post_copy = _post_copy(plan, pod, source_caps, target_caps, keep)
        validated += f"; {post_copy}"
    st.conditions = set_condition(
        st.conditions, c.CONDITION_VALIDATED, ConditionStatus.TRUE, "Validated", validated, plan.now
    )
    if keep:
        # Its name is free only once the source is gone: no replacement before the freeze (see the module doc).
        return _begin_checkpoint(plan)
    if handover is not None:
        # Write-ahead: the admission webhook makes the owner's next pod the restore target only for a migration
        # it sees in Preparing, so Preparing is recorded before the source is released.
        return plan.enter(
            P.PREPARING,
            "Preparing",
            f"releasing pod {pod_name} from {handover.kind}/{handover.name}; the owner's next pod becomes "
            f"{st.restored_pod_name} on {target}, and its containers will wait in lpm-runc for the checkpoint (the "
            "source keeps running meanwhile)",
        )
    if engine is Engine.LIVE:
        plan.enter(
            P.PREPARING,
            "Preparing",
            f"starting replacement pod {st.restored_pod_name} on {target}; its containers will wait in lpm-runc "
            "for the checkpoint (the source keeps running meanwhile)",
        )
        return _preparing(plan)
    return _begin_checkpoint(plan)


def _post_copy(
    plan: MigrationPlan, pod: PodView, source_caps: Mapping[str, Any], target_caps: Mapping[str, Any], keep: bool
) -> tuple[int | None, str]:
    """Live engine: the memory size above which a container moves its memory after the restore (None: never),
    and what the Validated condition says about it."""
    want = plan.m.spec.post_copy
    if want is PostCopy.NEVER:
        return None, "post-copy: off (spec.postCopy Never)"
    if keep:
        return None, (
            "post-copy: not used (the pod keeps its name, so its source is deleted before the restore, and the "
            "pages it would serve with it)"
        )
    why_not = []
    for role, node_name, caps in (
        ("source", pod.node_name, source_caps),
        ("target", plan.m.spec.target_node, target_caps),
    ):
        if not caps.get("lazy_pages_supported"):
            said = [str(p) for p in caps.get("problems") or [] if str(p).startswith(c.POSTCOPY_PROBLEM_PREFIX)]
            why_not.append(f"{role} {node_name}: {said[0] if said else 'its agent reports no lazy-pages support'}")
    if (pod.raw.get("spec") or {}).get("runtimeClassName") != c.RUNTIME_CLASS_LIVE:
        why_not.append(
            f"pod {pod.name} does not run under RuntimeClass {c.RUNTIME_CLASS_LIVE} (lpm-runc dumps it then)"
        )
    if why_not:
        return None, f"post-copy: not used ({'; '.join(why_not)})"
    above = 1 if want is PostCopy.ALWAYS else POST_COPY_ABOVE_BYTES
    size = "any size" if above == 1 else f"{above >> 20} MiB or more"
    return above, (
        f"post-copy for containers holding {size}: their memory moves after the restore, which is the commit point"
    )


def _webhook_answers(plan: MigrationPlan, pod: PodView, handover: Handover) -> bool | None:
    """An owned pod is released only once LPM's admission webhook is seen to answer: otherwise (it is registered
    with failurePolicy Ignore) the owner's next pod would start empty. A dry-run create proves it; nothing is
    stored. True once proven; None while waiting; False once the plan failed."""
    first = ((pod.raw.get("spec") or {}).get("containers") or [{}])[0]
    probe = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": restored_pod_name("lpm-webhook-probe", plan.uid),
            "labels": {c.LABEL_MIGRATABLE: "true"},
            "annotations": {c.ANNOTATION_WEBHOOK_PROBE: plan.uid},
        },
        "spec": {"containers": [{"name": "probe", "image": str(first.get("image") or "probe")}]},
    }
    out = plan.outcome(ProbeWebhook(plan.ns, probe))
    if out is None:
        return None
    seen = (
        ((out.value.get("metadata") or {}).get("annotations") or {}).get(c.ANNOTATION_WEBHOOK_SEEN) if out.ok else None
    )
    if seen == plan.uid:
        return True
    why = out.message if not out.ok else "the pod came back without the webhook's mark"
    plan.fail(
        "AdmissionWebhookUnavailable",
        f"pod {pod.name} belongs to {handover.kind}/{handover.name}, and LPM's admission webhook, which turns the "
        f"owner's next pod into the restored pod, did not answer a dry-run create ({why}); nothing was changed. "
        "Check the lpm-controller pod and the MutatingWebhookConfiguration lpm-replacement.",
    )
    return False


def _begin_checkpoint(plan: MigrationPlan) -> None:
    pod_name, node = plan.m.spec.pod_name, plan.status.source_node
    if plan.m.spec.source_policy is SourcePolicy.FREEZE:
        # Write-ahead: Freezing is recorded before the agent is asked to freeze, so a controller killed right
        # after the Freeze call finds a phase that knows it must thaw on failure.
        plan.enter(P.FREEZING, "Freezing", f"freezing pod {pod_name} on {node}")
        return None
    plan.enter(P.CHECKPOINTING, "Checkpointing", f"checkpointing pod {pod_name} (KeepRunning: a clone)")
    return _checkpointing(plan)


def _choose_engine(
    plan: MigrationPlan, pod: PodView, node: NodeView, target_caps: Mapping[str, Any], owned: Handover | None = None
) -> Engine | None:
    """spec.engine against what the target can do; None once the plan failed. An owned pod is handed over to the
    owner's replacement, which only the Live engine restores."""
    want, target = plan.m.spec.engine, plan.m.spec.target_node
    if owned is not None and want is Engine.IMAGE:
        plan.fail(
            "OwnedPodNeedsLiveEngine",
            f"pod {pod.name} belongs to {owned.kind}/{owned.name}, whose replacement is made by the owner and "
            "restored by lpm-runc: only the Live engine hands an owned pod over (spec.engine Auto or Live)",
        )
        return None
    why_not_live = []
    if not target_caps.get("live_restore_supported"):
        problems = "; ".join(str(p) for p in target_caps.get("problems") or []) or "no details reported"
        why_not_live.append(f"its agent cannot stage checkpoints ({problems})")
    if node.runtime_handlers is not None and c.RUNTIME_CLASS_LIVE not in node.runtime_handlers:
        why_not_live.append(
            f"its runtime has no '{c.RUNTIME_CLASS_LIVE}' handler (status.runtimeHandlers: "
            f"{', '.join(node.runtime_handlers) or 'none'}); install lpm-runc there (deploy/README.md)"
        )
    own_class = (pod.raw.get("spec") or {}).get("runtimeClassName")
    if own_class and own_class != c.RUNTIME_CLASS_LIVE:
        why_not_live.append(f"pod {pod.name} runs under RuntimeClass {own_class}, which lpm-runc does not wrap")
    image_ok = bool(target_caps.get("convert_supported"))
    if want is Engine.LIVE or owned is not None or (want is Engine.AUTO and not why_not_live):
        if not why_not_live:
            return Engine.LIVE
        hint = (
            f"pod {pod.name} belongs to {owned.kind}/{owned.name}, which only the Live engine hands over"
            if owned is not None
            else "Use spec.engine Auto or Image."
        )
        plan.fail(
            "LiveEngineUnavailable", f"target node {target} cannot restore live: {'; '.join(why_not_live)}. {hint}"
        )
        return None
    if image_ok:
        return Engine.IMAGE
    problems = "; ".join(str(p) for p in target_caps.get("problems") or []) or "no details reported"
    plan.fail("AgentNotCapable", f"the agent on target node {target} cannot convert to image: {problems}")
    return None


# Eligibility findings that make a dump or restore fail for certain, found in the pod spec itself.
def _spec_problems(pod: PodView) -> list[tuple[str, str]]:
    out = []
    for ctr in (pod.raw.get("spec") or {}).get("containers") or []:
        for field_name in ("tty", "stdin"):
            if ctr.get(field_name):
                out.append(
                    (
                        "TerminalAttached",
                        f"container {ctr.get('name')} has {field_name}: true; CRIU cannot carry a terminal or an "
                        "open stdin to another node (run it without)",
                    )
                )
                break
    return out


def _eligible(plan: MigrationPlan, pod: PodView, waited: float, engine: Engine) -> bool | None:
    """True once the source's agent found nothing that makes the dump or the restore fail for certain (or the
    policy is Warn); None while waiting for it; False once the plan failed. Nothing is frozen before True."""
    m, st = plan.m, plan.status
    request = pb.EligibilityRequest(
        pod_namespace=plan.ns,
        pod_name=m.spec.pod_name,
        pod_uid=pod.uid,
        container_names=list(pod.containers),
        tcp_established=m.spec.options.tcp_established,
        empty_dir_moves=engine is Engine.LIVE,
    )
    out = plan.outcome(CheckEligibility(pod.node_name or "", request))
    if out is None:
        return None
    blocking = _spec_problems(pod)
    lines: list[str] = []
    if out.ok:
        lines.extend(str(line) for line in out.value.get("checked") or [])
        for problem in out.value.get("problems") or []:
            where = f"container {problem.get('container_name')}: " if problem.get("container_name") else ""
            item = (str(problem.get("check") or "NotEligible"), where + str(problem.get("message") or ""))
            if problem.get("blocking"):
                blocking.append(item)
            else:
                lines.append(f"warning: {item[1]}")
    elif out.retryable and waited < min(AGENT_WAIT_SECONDS, m.spec.timeout_seconds):
        plan.note(out.reason or "AgentUnavailable", out.message)
        return None
    else:
        # An agent that cannot check (an older one) does not block: the rollback still protects the source.
        lines.append(f"warning: eligibility not checked on {pod.node_name}: {out.message}")
    lines.extend(
        f"{'refused' if m.spec.eligibility is EligibilityPolicy.ENFORCE else 'warning'}: {msg}" for _, msg in blocking
    )
    st.eligibility = lines
    if not blocking:
        st.conditions = set_condition(
            st.conditions,
            c.CONDITION_ELIGIBLE,
            ConditionStatus.TRUE,
            "Eligible",
            "nothing found that blocks a dump",
            plan.now,
        )
        return True
    found = "; ".join(msg for _, msg in blocking)
    if m.spec.eligibility is EligibilityPolicy.WARN:
        st.conditions = set_condition(
            st.conditions,
            c.CONDITION_ELIGIBLE,
            ConditionStatus.FALSE,
            "Warned",
            f"going on (eligibility: Warn): {found}",
            plan.now,
        )
        return True
    reason = blocking[0][0]
    st.conditions = set_condition(st.conditions, c.CONDITION_ELIGIBLE, ConditionStatus.FALSE, reason, found, plan.now)
    plan.fail(
        reason,
        f"pod {m.spec.pod_name} cannot be migrated as it is, and nothing was frozen: {found}. To try anyway, set "
        "spec.eligibility: Warn (kubectl lpm migrate --force); a failed dump or restore then rolls back.",
    )
    return False


def _freezing(plan: MigrationPlan) -> None:
    st, pc = plan.status, plan.obs.pod_checkpoint
    if st.dump_waits_for_freeze and pc is None:
        # The checkpoint first: its calls reach the source's agent and wait there while the Freeze below waits
        # for them, so the dump starts as the pod freezes (not a PodCheckpoint and a ContainerCheckpoint later).
        # They wait for this freeze and no other: a rollback now fences them before they dump anything.
        if not _create_checkpoint(plan):
            return None
    elif st.dump_waits_for_freeze and pc is not None and not _owned(pc.metadata, plan.uid):
        return _name_taken(plan, pc)  # before anything was frozen
    remaining = max(0.0, plan.m.spec.timeout_seconds - (clock.seconds_between(st.start_time, plan.obs.now) or 0.0))
    request = plan.freeze_request(auto_thaw_after=Duration(seconds=int(remaining) + AUTO_THAW_MARGIN_SECONDS))
    out = plan.outcome(FreezeSource(st.source_node or "", request))
    if out is None:
        return
    if not out.ok:
        if out.retryable:
            return plan.note(out.reason or "FreezeRetrying", out.message)
        return _rollback(plan, out.reason or "FreezeFailed", out.message)
    st.source_frozen = True
    st.frozen_at = plan.now  # when the freeze was asked for: its frozen time is counted in full
    st.conditions = set_condition(
        st.conditions, c.CONDITION_SOURCE_FROZEN, ConditionStatus.TRUE, "Frozen", "source containers frozen", plan.now
    )
    plan.enter(P.CHECKPOINTING, "Checkpointing", f"checkpointing pod {plan.m.spec.pod_name}")
    _checkpointing(plan)


def _pod_checkpoint_manifest(plan: MigrationPlan) -> dict[str, object]:
    m, st = plan.m, plan.status
    spec = PodCheckpointSpec(
        pod_name=m.spec.pod_name,
        checkpoint_id=st.checkpoint_id,
        options=m.spec.options,
        leave_running=m.spec.source_policy is SourcePolicy.KEEP_RUNNING,
        deletion_policy=m.spec.checkpoint_retention,
        stage_on_node=m.spec.target_node if st.engine is Engine.LIVE else None,
        post_copy_above_bytes=st.post_copy_above_bytes if st.engine is Engine.LIVE else None,
        await_freeze=st.dump_waits_for_freeze and m.spec.source_policy is SourcePolicy.FREEZE,
    )
    body = encode(PodCheckpoint(spec=spec))
    body["metadata"] = {
        "name": st.pod_checkpoint_name,
        "namespace": plan.ns,
        "labels": {c.LABEL_MIGRATION: str(m.metadata.get("name"))},
        "ownerReferences": [
            {
                "apiVersion": c.API_VERSION,
                "kind": c.KIND_POD_MIGRATION,
                "name": str(m.metadata.get("name")),
                "uid": plan.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    return body


def _create_checkpoint(plan: MigrationPlan) -> bool:
    """Asks for this migration's PodCheckpoint. True once it was made (or found made); False when the cycle ends
    here: its creation pending, a retryable refusal noted, or the migration rolling back."""
    if plan.source() is None:
        _rollback(plan, "SourcePodGone", f"pod {plan.m.spec.pod_name} disappeared before its checkpoint")
        return False
    out = plan.outcome(CreatePodCheckpoint(c.PLURAL_POD_CHECKPOINTS, plan.ns, _pod_checkpoint_manifest(plan)))
    if out is None:
        return False
    if not out.ok:
        if out.retryable:
            plan.note(out.reason, out.message)
        else:
            _rollback(plan, "CheckpointCreateFailed", out.message)
        return False
    return True


def _name_taken(plan: MigrationPlan, pc: PodCheckpoint) -> None:
    return _rollback(
        plan,
        "PodCheckpointNameTaken",
        f"PodCheckpoint {pc.metadata.get('name')} exists and does not belong to this migration; delete or "
        "rename it and create a new PodMigration",
    )


def _owned(metadata: Mapping[str, Any], uid: str) -> bool:
    refs = metadata.get("ownerReferences") or []
    return any(isinstance(ref, Mapping) and ref.get("uid") == uid for ref in refs)


def _replacement_runs(plan: MigrationPlan) -> bool:
    """Every container of our replacement pod runs (live engine: each was restored by lpm-runc)."""
    rp = plan.obs.restored_pod
    return (
        plan.restored_is_ours()
        and rp is not None
        and rp.running
        and not rp.problem
        and set(rp.started) >= set(rp.containers)
    )


def _restore_done(plan: MigrationPlan) -> bool:
    """The restored pod is up: on the Live engine every container restored by lpm-runc, on the Image engine the
    pod Running without a problem."""
    if plan.status.engine is Engine.LIVE:
        return _replacement_runs(plan)
    rp = plan.obs.restored_pod
    return plan.restored_is_ours() and rp is not None and rp.running and not rp.problem


def _seconds(duration: object) -> float:
    """A protobuf Duration as its JSON form ("1.500s") in seconds."""
    try:
        return float(str(duration).rstrip("s"))
    except ValueError:
        return 0.0


def _progress(plan: MigrationPlan) -> None:
    """status.progress from the source's agent, refreshed at most every PROGRESS_EVERY_SECONDS. Best effort: an
    agent that cannot answer (an older one) leaves it as it was, and never fails the migration."""
    st = plan.status
    if not st.checkpoint_id or not st.source_node:
        return
    prev = st.progress
    since = clock.seconds_between(prev.updated_at, plan.obs.now) if prev is not None else None
    if since is not None and since < PROGRESS_EVERY_SECONDS:
        return
    out = plan.outcome(GetProgress(st.source_node, pb.ProgressRequest(checkpoint_id=st.checkpoint_id)))
    ctrs = list(out.value.get("containers") or []) if out is not None and out.ok else []
    if not ctrs:
        return
    stages = [str(ctr.get("stage") or "dumping") for ctr in ctrs]
    stage = min(stages, key=lambda s: PROGRESS_STAGES.index(s) if s in PROGRESS_STAGES else 0)
    done = sum(int(ctr.get("bytes_done") or 0) for ctr in ctrs)
    total = sum(int(ctr.get("bytes_total") or 0) for ctr in ctrs)
    if prev is not None and prev.stage == stage and since:
        rate = max(0.0, (done - prev.bytes_done) / since)
    else:
        elapsed = max((_seconds(ctr.get("elapsed")) for ctr in ctrs), default=0.0)
        rate = done / elapsed if elapsed > 0 else 0.0
    eta = round((total - done) / rate, 1) if rate > 0 and total >= done and stage != "done" else None
    st.progress = MigrationProgress(
        stage=stage,
        updated_at=plan.now,
        bytes_done=done,
        bytes_total=total,
        bytes_per_second=round(rate, 1),
        eta_seconds=eta,
    )


def _checkpointing(plan: MigrationPlan) -> None:
    pc = plan.obs.pod_checkpoint
    st = plan.status
    if st.engine is Engine.LIVE and st.post_copy_above_bytes:
        if _replacement_runs(plan):
            # Post-copy's commit point is the last page, and the target is the one that knows: the source's
            # agent may have died while its page server went on serving.
            return _pages_arrived(plan)
        if pc is not None and pc.status.phase is CheckpointPhase.FAILED:
            reason = pc.status.reason or "CheckpointFailed"
            return _rollback(
                plan,
                reason,
                f"checkpoint failed with post-copy ({reason}: {pc.status.message or 'no details'}); the target's "
                "copy holds no memory, so the replacement is deleted and the source, still whole, thawed",
            )
    if plan.status.engine is Engine.LIVE and _replacement_runs(plan):
        # The source's agent pushed each archive node to node and lpm-runc restored them, verified, before the
        # durable copy was sealed: the commit point is passed, and nothing about the store undoes it now.
        durable = pc.status.phase.value if pc is not None else "not started"
        plan.enter(
            P.CLEANING,
            "Cleaning",
            f"pod {plan.status.restored_pod_name} runs on {plan.m.spec.target_node}, restored from the checkpoint "
            f"its agent received node to node (durable copy: {durable}); removing the source",
        )
        return _cleaning(plan)
    if pc is None:
        _create_checkpoint(plan)
        return None
    if not _owned(pc.metadata, plan.uid):
        return _name_taken(plan, pc)
    if pc.status.phase is CheckpointPhase.FAILED:
        kept = _staged_without_durable_copy(plan) if plan.status.engine is Engine.LIVE else False
        if kept is None:
            return None
        if kept:
            return _restore_without_durable_copy(plan, pc)
        return _rollback(
            plan, pc.status.reason or "CheckpointFailed", f"checkpoint failed: {pc.status.message or 'no details'}"
        )
    if pc.status.phase is not CheckpointPhase.READY:
        # Only here, while the agent works on it: never an extra call in a cycle that moves the frozen source on.
        return _progress(plan)
    # Recorded before the agent is asked, so the conversion's time is counted as Converting (the clock of a
    # cycle stands still while its effects run) and a restarted controller resumes at the right step.
    if plan.status.engine is Engine.LIVE:
        plan.enter(P.TRANSFERRING, "Transferring", f"staging the checkpoint for lpm-runc on {plan.m.spec.target_node}")
        return None
    plan.enter(P.CONVERTING, "Converting", f"converting the checkpoint to images on {plan.m.spec.target_node}")


def _pages_arrived(plan: MigrationPlan) -> None:
    """Post-copy, the replacement runs: every page arrived (the target's lpm-runc says so) → Cleaning, which
    deletes the source; the stream broke (lpm-runc killed the replacement's process) → rollback to the source,
    whole and frozen; else wait, showing the stream."""
    st, target = plan.status, plan.m.spec.target_node
    request = pb.RestoreStateRequest(
        checkpoint_id=st.checkpoint_id or "",
        container_names=list(plan.obs.restored_pod.containers) if plan.obs.restored_pod else [],
    )
    out = plan.outcome(GetRestoreState(target, request))
    if out is None:
        return None
    if not out.ok:
        return plan.note(
            out.reason or "TargetAgentUnavailable", f"cannot ask {target}'s agent about the pages: {out.message}"
        )
    states = {str(x.get("container_name")): x for x in out.value.get("containers") or []}
    broken = [
        f"{n}: {x.get('pages_message') or 'no details'}"
        for n, x in states.items()
        if str(x.get("pages", "")).endswith("BROKEN")
    ]
    if broken:
        return _rollback(
            plan,
            c.REASON_POST_COPY_FAILED,
            f"the page stream to {target} broke after the restore ({'; '.join(broken)}); the replacement is "
            "deleted and the source, still whole, thawed: whatever the replacement did since its restore is lost",
        )
    streaming = [n for n, x in states.items() if str(x.get("pages", "")).endswith("STREAMING")]
    if streaming or len(states) < len(request.container_names):
        plan.note(
            "StreamingPages",
            f"pod {st.restored_pod_name} runs on {target}; the memory it has not faulted on yet still comes from "
            f"the source (container(s) {', '.join(streaming) or 'unknown'}); the source is deleted once every page "
            "arrived",
        )
        return _progress(plan)
    lazy = [n for n, x in states.items() if str(x.get("pages", "")).endswith("COMPLETE")]
    if lazy:
        # Said now: the source's agent may still be on its way to reporting it (or have died), and the
        # PodCheckpoint is not yet Streamed when the migration completes.
        st.conditions = set_condition(
            st.conditions,
            c.CONDITION_DURABLE_COPY,
            ConditionStatus.FALSE,
            "PostCopy",
            f"the memory of container(s) {', '.join(sorted(lazy))} moved to {target} after the restore (post-copy); "
            "no durable copy of this checkpoint is stored",
            plan.now,
        )
    durable = plan.obs.pod_checkpoint.status.phase.value if plan.obs.pod_checkpoint else "not started"
    plan.enter(
        P.CLEANING,
        "Cleaning",
        f"pod {st.restored_pod_name} runs on {target} and every page of its memory arrived (post-copy; checkpoint: "
        f"{durable}); removing the source",
    )
    return _cleaning(plan)


def _staged_without_durable_copy(plan: MigrationPlan) -> bool | None:
    """Live engine, the PodCheckpoint failed: did only its durable copy fail? True when the target's agent holds
    every container's checkpoint, verified (pushed node to node before the durable copy started), and no
    rollback aborted it; None while asking. A dump or a push that failed leaves a container WAITING or ABSENT."""
    names, target = plan.containers(), plan.m.spec.target_node
    if not names:
        return False  # the source is gone: nothing says what the checkpoint held
    request = pb.RestoreStateRequest(checkpoint_id=plan.status.checkpoint_id or "", container_names=names)
    out = plan.outcome(GetRestoreState(target, request))
    if out is None:
        return None
    if not out.ok or out.value.get("aborted"):
        return False
    states = {str(s.get("container_name")): str(s.get("state", "")) for s in out.value.get("containers") or []}
    return all(states.get(n, "").endswith(("STAGED", "RESTORED")) for n in names)


def _restore_without_durable_copy(plan: MigrationPlan, pc: PodCheckpoint) -> None:
    """The durable copy is off the Live engine's path: its failure (a full or unreachable repository) does not
    undo a migration whose target verified the checkpoint itself. Said in a condition and an Event, since no
    stored copy of this checkpoint exists."""
    st, target = plan.status, plan.m.spec.target_node
    why = f"{pc.status.reason or 'CheckpointFailed'}: {pc.status.message or 'no details'}"
    message = (
        f"the durable copy of checkpoint {st.checkpoint_id} was not stored ({why}); the migration goes on from the "
        f"copy {target}'s agent received node to node and verified, and no stored copy of this checkpoint exists"
    )
    st.conditions = set_condition(
        st.conditions, c.CONDITION_DURABLE_COPY, ConditionStatus.FALSE, "NotStored", message, plan.now
    )
    plan.emit("Warning", "DurableCopyFailed", message)
    return _enter_restoring(plan, f"lpm-runc restores pod {st.restored_pod_name} on {target} (durable copy failed)")


def _converting(plan: MigrationPlan) -> None:
    pc = plan.obs.pod_checkpoint
    if pc is None or pc.status.phase is not CheckpointPhase.READY:
        return _rollback(plan, "CheckpointGone", "the PodCheckpoint disappeared or is no longer Ready")
    st = plan.status
    done = {ci.container_name for ci in st.container_images}
    for ctr in pc.status.containers:
        if ctr.name in done:
            continue
        request = pb.ConvertRequest(artifact_uri=ctr.artifact_uri or "", container_name=ctr.name)
        out = plan.outcome(ConvertImage(plan.m.spec.target_node, request))
        if out is None:
            continue
        if out.ok and out.value.get("image_ref"):
            st.container_images.append(ContainerImage(ctr.name, str(out.value["image_ref"])))
        elif out.retryable:
            plan.note(out.reason or "ConvertRetrying", out.message)
        else:
            return _rollback(plan, out.reason or "ConvertFailed", out.message or "the agent returned no image")
    if {ci.container_name for ci in st.container_images} >= {ctr.name for ctr in pc.status.containers}:
        # Write-ahead again: the restored pod is created only in a recorded Restoring phase.
        _enter_restoring(plan, f"starting pod {st.restored_pod_name} on {plan.m.spec.target_node}")


def _replacement_body(plan: MigrationPlan, source: PodView) -> dict[str, Any]:
    st = plan.status
    live = st.engine is Engine.LIVE
    return build_restored_pod(
        source.raw,
        name=st.restored_pod_name or restored_pod_name(plan.m.spec.pod_name, plan.uid),
        target_node=plan.m.spec.target_node,
        images=None if live else {ci.container_name: ci.image_ref for ci in st.container_images},
        migration_name=str(plan.m.metadata.get("name")),
        migration_uid=plan.uid,
        pod_checkpoint_name=st.pod_checkpoint_name or "",
        checkpoint_id=st.checkpoint_id or "",
    )


def _hand_over(plan: MigrationPlan, handover: Handover, name: str) -> None:
    """Owned pod, no replacement yet: release the source from its owner, then wait for the owner's new pod, which
    the admission webhook names `name` and binds to the target."""
    source, owner = plan.source(), f"{handover.kind}/{handover.name}"
    if source is None:
        return _rollback(plan, "SourcePodGone", f"pod {plan.m.spec.pod_name} disappeared before the migration")
    if not handover.released:
        out = plan.outcome(PatchPod(plan.ns, source.name, release_patch(source.uid, handover, plan.uid)))
        if out is None:
            return None
        if not out.ok:
            if out.retryable:
                return plan.note(out.reason, out.message)
            return _rollback(plan, "ReleaseFailed", f"could not release pod {source.name} from {owner}: {out.message}")
        handover.released = True
        return plan.note(
            "WaitingForOwner",
            f"released pod {source.name} from {owner} (label {handover.label}={c.RELEASED_LABEL_VALUE}); waiting for "
            f"the owner to create its replacement, which becomes {name} on {plan.m.spec.target_node}",
        )
    waited = clock.seconds_between(plan.status.phase_started_at, plan.obs.now) or 0.0
    if waited > OWNER_WAIT_SECONDS:
        return _rollback(
            plan,
            "OwnerDidNotReplace",
            f"{owner} created no replacement for the released pod {source.name} within {OWNER_WAIT_SECONDS:.0f}s "
            "(is it scaled down, paused or being deleted?); the pod goes back to its owner",
        )
    return None


def _preparing(plan: MigrationPlan) -> None:
    """Live engine: the replacement pod comes up on the target before anything is frozen; its first container
    then waits in lpm-runc (kubelet starts a pod's containers one after another)."""
    st, rp, target = plan.status, plan.obs.restored_pod, plan.m.spec.target_node
    name = st.restored_pod_name or restored_pod_name(plan.m.spec.pod_name, plan.uid)
    _note_release(plan)
    if rp is None and st.handover is not None:
        return _hand_over(plan, st.handover, name)
    if rp is None:
        source = plan.source()
        if source is None:
            return _rollback(plan, "SourcePodGone", f"pod {plan.m.spec.pod_name} disappeared before the migration")
        # Once created (this cycle), the next cycle observes it.
        out = plan.outcome(CreateRestoredPod("pods", plan.ns, _replacement_body(plan, source)))
        if out is not None and not out.ok:
            if out.retryable:
                return plan.note(out.reason, out.message)
            return _rollback(plan, "ReplacementFailed", f"could not create pod {name}: {out.message}")
        return None
    if not plan.restored_is_ours():
        return _rollback(
            plan, "RestoredPodNameTaken", f"a pod named {name} exists and was not made by this migration; delete it"
        )
    if rp.deleting or rp.phase in ("Failed", "Succeeded") or rp.problem:
        detail = scrub_paths(rp.problem or f"it is {'terminating' if rp.deleting else rp.phase}")
        return _rollback(plan, "ReplacementFailed", f"replacement pod {name} could not start on {target}: {detail}")
    first = plan.containers()[:1]
    request = pb.RestoreStateRequest(checkpoint_id=st.checkpoint_id or "", container_names=first, wait=REPLACEMENT_POLL)
    out = plan.outcome(GetRestoreState(target, request))
    if out is None:
        return None
    if not out.ok:
        if out.retryable:
            return plan.note(out.reason or "AgentRetrying", out.message)
        return _rollback(plan, out.reason or "ReplacementFailed", out.message)
    if out.value.get("aborted"):
        return _rollback(plan, "RestoreAborted", f"the restore on {target} was aborted: {out.value['aborted']}")
    states = {str(s.get("container_name")): s for s in out.value.get("containers") or []}
    waiting = [n for n in first if str(states.get(n, {}).get("state", "")).endswith("WAITING")]
    if waiting != first:
        return plan.note(
            "WaitingForReplacement",
            f"pod {name} is starting on {target} (sandbox, network, volumes, image); its containers will wait in "
            "lpm-runc",
        )
    st.conditions = set_condition(
        st.conditions,
        c.CONDITION_REPLACEMENT_READY,
        ConditionStatus.TRUE,
        "WaitingInRuntime",
        f"pod {name} is up on {target} and container {first[0]} waits in lpm-runc for the checkpoint",
        plan.now,
    )
    return _begin_checkpoint(plan)


def _transferring(plan: MigrationPlan) -> None:
    """Live engine: the target's agent reads each container's checkpoint, verifies it, and stages it for
    lpm-runc; a container whose staging is not verified is never restored."""
    pc = plan.obs.pod_checkpoint
    if pc is None or pc.status.phase is not CheckpointPhase.READY:
        return _rollback(plan, "CheckpointGone", "the PodCheckpoint disappeared or is no longer Ready")
    target, staged = plan.m.spec.target_node, 0
    for ctr in pc.status.containers:
        request = pb.StageRestoreRequest(
            checkpoint_id=plan.status.checkpoint_id or "", container_name=ctr.name, artifact_uri=ctr.artifact_uri or ""
        )
        out = plan.outcome(StageRestore(target, request))
        if out is None:
            continue
        if out.ok:
            staged += 1
        elif out.retryable:
            plan.note(out.reason or "TransferRetrying", out.message)
        else:
            return _rollback(plan, out.reason or "TransferFailed", out.message)
    if staged == len(pc.status.containers):
        _enter_restoring(plan, f"lpm-runc restores pod {plan.status.restored_pod_name} on {target}")


def _enter_restoring(plan: MigrationPlan, message: str) -> None:
    """Recorded before anything is restored; for a pod that keeps its name, also before its source is deleted,
    with the replacement the controller will create (the source's spec is gone then)."""
    st, source = plan.status, plan.source()
    if not plan.keeps_name():
        return plan.enter(P.RESTORING, "Restoring", message)
    if source is None:
        return _rollback(plan, "SourcePodGone", f"pod {plan.m.spec.pod_name} disappeared before its restore")
    if st.handover is None:
        st.replacement_manifest = json.dumps(_replacement_body(plan, source), sort_keys=True)
    maker = f"{st.handover.kind}/{st.handover.name}" if st.handover else "the controller"
    return plan.enter(
        P.RESTORING,
        "Restoring",
        f"the checkpoint is staged on {plan.m.spec.target_node}; deleting the frozen source so that its name "
        f"passes to the replacement, which {maker} creates there (the commit point: after it, no rollback)",
    )


def _pass_name(plan: MigrationPlan, src: PodView) -> None:
    """Delete the frozen source whose checkpoint is staged on the target: its name passes to the replacement.
    Once this delete may have landed there is no way back (`MigrationPlan.committed`)."""
    st = plan.status
    out = plan.outcome(DeletePod(namespace=plan.ns, name=src.name, uid=src.uid, grace_period_seconds=0))
    if out is None:
        return None
    if not out.ok:
        if out.retryable:
            return plan.note(out.reason or "SourceDeleteRetrying", f"could not delete the source pod: {out.message}")
        return _rollback(plan, "SourceDeleteFailed", f"could not delete the frozen source pod: {out.message}")
    st.source_frozen = False
    st.conditions = set_condition(
        st.conditions,
        c.CONDITION_SOURCE_FROZEN,
        ConditionStatus.FALSE,
        "SourceDeleted",
        f"the source pod was deleted while frozen (the commit point); its state is in the checkpoint staged on "
        f"{plan.m.spec.target_node}",
        plan.now,
    )
    return plan.note("SourceDeleted", f"deleted the frozen source; pod {src.name} is being re-created on the target")


def _restore_under_name(plan: MigrationPlan) -> None:
    """The source is gone (committed) and its replacement does not exist yet: the controller creates it, or waits
    for the StatefulSet to (the webhook makes it the restore target)."""
    st, name = plan.status, plan.m.spec.pod_name
    if st.handover is not None:
        waited = clock.seconds_between(st.phase_started_at, plan.obs.now) or 0.0
        if waited > OWNER_WAIT_SECONDS:
            return _rollback(
                plan,
                "OwnerDidNotReplace",
                f"{st.handover.kind}/{st.handover.name} did not re-create pod {name} within "
                f"{OWNER_WAIT_SECONDS:.0f}s of its source's deletion",
            )
        return plan.note("WaitingForOwner", f"waiting for {st.handover.kind}/{st.handover.name} to re-create {name}")
    try:
        body = json.loads(st.replacement_manifest or "")
    except ValueError:
        return _rollback(plan, "ReplacementManifestLost", "status.replacementManifest is missing or not JSON")
    out = plan.outcome(CreateRestoredPod("pods", plan.ns, body))
    if out is not None and not out.ok:
        if out.retryable:
            return plan.note(out.reason, out.message)
        return _rollback(plan, "RestoreFailed", f"could not create pod {name}: {out.message}")
    return None


def _restoring(plan: MigrationPlan) -> None:
    st, rp = plan.status, plan.obs.restored_pod
    name = st.restored_pod_name or restored_pod_name(plan.m.spec.pod_name, plan.uid)
    src = plan.source()
    if plan.keeps_name() and src is not None and not src.deleting:
        return _pass_name(plan, src)
    if rp is None and plan.keeps_name():
        return _restore_under_name(plan)
    if rp is None and st.engine is Engine.LIVE:
        return _rollback(plan, "ReplacementGone", f"replacement pod {name} disappeared before it was restored")
    if rp is None:
        source = plan.source()
        if source is None:
            return _rollback(plan, "SourcePodGone", f"pod {plan.m.spec.pod_name} disappeared before it was restored")
        # Once created (this cycle), the next cycle observes it.
        out = plan.outcome(CreateRestoredPod("pods", plan.ns, _replacement_body(plan, source)))
        if out is not None and not out.ok:
            if out.retryable:
                return plan.note(out.reason, out.message)
            return _rollback(plan, "RestoreFailed", f"could not create pod {name}: {out.message}")
        return None
    if not plan.restored_is_ours():
        return _rollback(
            plan, "RestoredPodNameTaken", f"a pod named {name} exists and was not made by this migration; delete it"
        )
    if _restore_done(plan):
        plan.enter(P.CLEANING, "Cleaning", f"pod {name} runs on {plan.m.spec.target_node}; removing the source")
        return _cleaning(plan)
    if rp.deleting or rp.phase in ("Failed", "Succeeded") or rp.problem:
        detail = scrub_paths(rp.problem or f"it is {'terminating' if rp.deleting else rp.phase}")
        if "criu failed" not in detail.lower():
            return _rollback(plan, "RestoredPodFailed", f"restored pod {name} did not come up: {detail}")
        # CRIU failed the restore: its own words are with the target's agent (the runtime deleted its log).
        request = pb.RestoreFailureRequest(
            pod_uid=rp.uid, container_names=list(rp.containers), checkpoint_id=st.checkpoint_id or ""
        )
        said = plan.outcome(DescribeRestoreFailure(plan.m.spec.target_node, request))
        if said is None:
            return None
        reports = list(said.value.get("containers") or []) if said.ok else []
        words = "; ".join(_criu_words(r) for r in reports) or (
            f"{detail}; CRIU's log was not kept ({said.message if not said.ok else 'the target agent saw none'})"
        )
        return _rollback(
            plan, "RestoreFailed", f"CRIU could not restore pod {name} on {plan.m.spec.target_node}: {words}"
        )
    plan.note("WaitingForRestoredPod", f"waiting for pod {name} to run on {plan.m.spec.target_node}")
    return None


def _cleaning(plan: MigrationPlan) -> None:
    st, m = plan.status, plan.m
    src = plan.source()
    # The replacement exists: its manifest (the pod spec, env values included) need not stay in the status.
    st.replacement_manifest = None
    done_msg = f"pod {m.spec.pod_name} now runs as {st.restored_pod_name} on {m.spec.target_node}"
    if m.spec.source_cleanup is SourceCleanup.DELETE and src is not None and not src.deleting:
        # A frozen source cannot shut down gracefully, and must not: its state now lives in the restored pod.
        grace = 0 if st.source_frozen else None
        out = plan.outcome(DeletePod(namespace=plan.ns, name=src.name, uid=src.uid, grace_period_seconds=grace))
        if out is None:
            return None
        if not out.ok:
            return plan.note(out.reason or "SourceDeleteRetrying", f"could not delete the source pod: {out.message}")
    if m.spec.source_cleanup is SourceCleanup.DELETE:
        if st.source_frozen:
            st.conditions = set_condition(
                st.conditions,
                c.CONDITION_SOURCE_FROZEN,
                ConditionStatus.FALSE,
                "SourceDeleted",
                f"the source pod was deleted while frozen; its state lives on in {st.restored_pod_name}",
                plan.now,
            )
        st.source_frozen = False
    if st.engine is Engine.LIVE:
        _note_durable_copy(plan)
    plan.enter(P.COMPLETED, "Completed", done_msg)


def _note_durable_copy(plan: MigrationPlan) -> None:
    """Live engine: the durable copy is written once the restore is done and may still be under way at the end; the
    DurableCopy condition says what was seen then (the PodCheckpoint says how it ended)."""
    st, pc = plan.status, plan.obs.pod_checkpoint
    old = next((x for x in st.conditions if x.type == c.CONDITION_DURABLE_COPY), None)
    if old is not None and old.status is ConditionStatus.FALSE:
        return  # said when the migration went on without it
    name = st.pod_checkpoint_name
    if pc is not None and pc.status.phase is CheckpointPhase.READY:
        status, reason, message = ConditionStatus.TRUE, "Stored", f"PodCheckpoint {name} holds the durable copy"
    elif pc is not None and pc.status.phase is CheckpointPhase.STREAMED:
        status, reason = ConditionStatus.FALSE, "PostCopy"
        message = f"post-copy moved the memory straight to the target and nothing was stored ({pc.status.message})"
    elif pc is not None and pc.status.phase is CheckpointPhase.FAILED:
        why = f"{pc.status.reason or 'CheckpointFailed'}: {pc.status.message or 'no details'}"
        status, reason, message = ConditionStatus.FALSE, "NotStored", f"the durable copy was not stored ({why})"
    else:
        status, reason = ConditionStatus.UNKNOWN, "Storing"
        message = f"the durable copy was still being written when the pod ran on the target; see PodCheckpoint {name}"
    st.conditions = set_condition(st.conditions, c.CONDITION_DURABLE_COPY, status, reason, message, plan.now)


# ---------------------------------------------------------------------------------------------- rollback


def _rollback(plan: MigrationPlan, reason: str, message: str) -> None:
    """Write-ahead: RollingBack is recorded before anything is undone (the next cycle, which the status write
    itself triggers, does it), so a rollback is final. Undone in the same cycle, a thaw whose status write was
    lost would leave a migration that goes on from a checkpoint the running source has left behind (found by the
    machine: an Image-engine restore next to the thawed source)."""
    if plan.committed():
        return _failed_after_commit(plan, reason, message)
    plan.enter(P.ROLLING_BACK, reason, message)


def _failed_after_commit(plan: MigrationPlan, reason: str, message: str) -> None:
    """A pod that kept its name failed after its source was deleted: nothing to thaw. The restore is aborted and
    the replacement removed (it could only fail; a StatefulSet then starts its pod afresh, which the webhook
    leaves alone once this migration has failed). Ends Failed; the checkpoint stays with the PodMigration."""
    st, rp = plan.status, plan.obs.restored_pod
    if _restore_done(plan):
        # The restore made it (a timeout that struck as it did): the pod runs, with its state.
        plan.enter(P.CLEANING, "Cleaning", f"pod {rp.name if rp else ''} runs on {plan.m.spec.target_node}")
        return _cleaning(plan)
    abort = _abort_restore(plan)
    if abort is not None:
        plan.outcome(abort)
    if plan.restored_is_ours() and rp is not None and not rp.deleting:
        out = plan.outcome(DeletePod(namespace=plan.ns, name=rp.name, uid=rp.uid, grace_period_seconds=0))
        if out is None or (not out.ok and out.retryable):
            return plan.note(reason, message)
    st.replacement_manifest = None  # nothing will be created from it any more
    again = f"; {st.handover.kind} {st.handover.name} starts it afresh" if st.handover else ""
    plan.enter(
        P.FAILED,
        "FailedAfterCommit",
        f"{reason}: {message}. Pod {plan.m.spec.pod_name} kept its name, so its frozen source was deleted at the "
        f"commit point and cannot run again: ITS MEMORY STATE IS LOST{again}. The checkpoint stays in PodCheckpoint "
        f"{st.pod_checkpoint_name} as long as this PodMigration exists.",
    )


def _abort_restore(plan: MigrationPlan) -> AbortRestore | None:
    st = plan.status
    if st.engine is not Engine.LIVE or not st.checkpoint_id:
        return None
    return AbortRestore(
        plan.m.spec.target_node, pb.AbortRestoreRequest(checkpoint_id=st.checkpoint_id, reason=st.message or "")
    )


def _runs(plan: MigrationPlan) -> bool:
    rp = plan.obs.restored_pod
    return plan.restored_is_ours() and rp is not None and rp.phase == "Running" and not rp.deleting


def _note_release(plan: MigrationPlan) -> None:
    """status.handover.released from the source itself: the status write that recorded the release, or the
    release's reply, may have been lost, while the source still says this migration released it."""
    handover, src = plan.status.handover, plan.source()
    if handover is None or handover.released or src is None:
        return
    if released_by(src.raw, plan.uid) is not None or src.labels.get(handover.label) == c.RELEASED_LABEL_VALUE:
        handover.released = True


def _give_back(plan: MigrationPlan) -> bool | None:
    """Owned pod released by this migration: its label goes back and its owner adopts it again *before* the
    replacement is deleted (the owner, seeing a replica more, scales the waiting replacement away itself; deleted
    first, it would start a fresh, empty pod). True once done (or nothing to do), None while waiting."""
    st, src = plan.status, plan.source()
    handover = st.handover
    if handover is None or src is None or src.deleting:
        return True
    _note_release(plan)
    if not handover.released:
        return True
    if src.labels.get(handover.label) != handover.value:
        out = plan.outcome(PatchPod(plan.ns, src.name, readopt_patch(src.uid, handover)))
        if out is None or out.ok or out.retryable:
            return None  # the next cycle sees the label back (or asks again)
        # Refused for good (e.g. Forbidden): the source keeps running as a bare pod; the rollback goes on.
    elif not adopted(src.raw, handover):
        waited = clock.seconds_between(st.phase_started_at, plan.obs.now) or 0.0
        if waited < READOPT_WAIT_SECONDS:
            return None
        # Its owner did not adopt it (deleted, or its selector changed): the rollback goes on, and the source
        # keeps running as a bare pod.
    handover.released = False
    return True


def _rolling_back(plan: MigrationPlan) -> None:
    st, rp = plan.status, plan.obs.restored_pod
    abort = _abort_restore(plan)
    if abort is not None:
        # Best effort and first: a waiting lpm-runc fails at once. What guarantees that no replacement runs next
        # to the thawed source is the delete below, awaited until the pod is gone.
        plan.outcome(abort)
    # An owned source goes back to its owner before a waiting replacement is deleted (the owner scales the waiting
    # one away; deleted first, it would make another). A replacement that already runs is deleted first: given
    # two running pods, the owner might scale away the frozen source, whose state then lives nowhere else.
    if not _runs(plan) and _give_back(plan) is not True:
        return None
    if plan.restored_is_ours() and rp is not None:
        plan.outcome(
            DeletePod(namespace=plan.ns, name=rp.name, uid=rp.uid, grace_period_seconds=0),
        )
        return None  # wait until it is gone: only then may the source run again
    if _give_back(plan) is not True:
        return None
    src = plan.source()
    message = st.message or "the migration failed"
    if plan.m.spec.source_policy is SourcePolicy.FREEZE and src is not None:
        out = plan.outcome(ThawSource(st.source_node or src.node_name or "", plan.thaw_request()))
        if out is None:
            return None
        thawed, seen = thaw_verdict(out)
        if not thawed:
            waited = clock.seconds_between(st.phase_started_at, plan.obs.now) or 0.0
            if waited < ROLLBACK_THAW_SECONDS:
                return None  # asked again next cycle
            st.source_state = seen
            st.conditions = set_condition(
                st.conditions, c.CONDITION_SOURCE_FROZEN, ConditionStatus.TRUE, "ThawNotVerified", seen, plan.now
            )
            plan.enter(
                P.FAILED,
                "SourceStillFrozen",
                f"{message}. THE SOURCE POD {plan.m.spec.pod_name} MAY STILL BE FROZEN: its thaw was not confirmed "
                f"by the runtime ({seen}). Its agent thaws it by itself at the freeze deadline; check the pod now.",
            )
            return None
        st.source_frozen = False
        st.source_state = seen
        st.conditions = set_condition(
            st.conditions, c.CONDITION_SOURCE_FROZEN, ConditionStatus.FALSE, "ThawVerified", seen, plan.now
        )
        message += f". The source pod runs again (checked: {seen})"
    plan.enter(P.FAILED, st.reason or "Failed", message)


def _criu_words(report: Mapping[str, Any]) -> str:
    said = "; ".join(str(line) for line in report.get("lines") or [])
    hint = f". Hint: {report['advice']}" if report.get("advice") else ""
    return f"container {report.get('container_name')}: CRIU: {said}{hint}"


def thaw_verdict(out: Outcome) -> tuple[bool, str]:
    """Whether a Thaw outcome shows every container running (thawed, or gone), and what the agent saw."""
    if not out.ok:
        return False, f"thaw failed: {out.message}"
    states = list(out.value.get("containers") or [])
    if not states:
        return False, "the agent reported no container"
    seen, thawed = [], True
    for ctr in states:
        state = str(ctr.get("state") or "FREEZE_STATE_UNSPECIFIED").removeprefix("FREEZE_STATE_")
        thawed = thawed and state in ("THAWED", "GONE")
        evidence = ctr.get("evidence")
        seen.append(f"{ctr.get('container_name')}: {state}" + (f" ({evidence})" if evidence else ""))
    return thawed, "; ".join(seen)


# -------------------------------------------------------------------------------------------- finalizer


def ttl_remaining(m: PodMigration, now: datetime) -> float | None:
    """Seconds until a finished migration's spec.ttlSecondsAfterFinished runs out (<= 0: delete it now); None
    while it runs, without a TTL, or once it is being deleted."""
    ttl = m.spec.ttl_seconds_after_finished
    if ttl is None or not m.status.phase.terminal or m.metadata.get("deletionTimestamp"):
        return None
    finished = m.status.completion_time or m.status.phase_started_at or m.metadata.get("creationTimestamp")
    elapsed = clock.seconds_between(finished, now)
    return float(ttl) - (elapsed if elapsed is not None else 0.0)


def decide_finalize(obs: Observed) -> list[Action]:
    """A PodMigration is being deleted: undo what an unfinished migration made; never touch the source pod
    beyond thawing it, never the restored pod of a migration that got as far as Cleaning."""
    plan = MigrationPlan(_distinct(obs))
    st = plan.status
    if plan.committed():
        pass  # past its commit point: the replacement restores from the staged checkpoint, left alone
    elif st.phase in ROLLBACK_PHASES or st.phase is P.ROLLING_BACK:
        abort = _abort_restore(plan)
        if abort is not None:
            plan.outcome(abort)
        rp = obs.restored_pod
        if not _runs(plan) and _give_back(plan) is not True:  # in _rolling_back's order
            plan.hold(f"source pod {plan.m.spec.pod_name} is not adopted by its owner again yet")
        elif plan.restored_is_ours() and rp is not None:
            plan.outcome(DeletePod(namespace=plan.ns, name=rp.name, uid=rp.uid, grace_period_seconds=0))
            plan.hold(f"restored pod {rp.name} is being deleted")
        elif _give_back(plan) is not True:
            plan.hold(f"source pod {plan.m.spec.pod_name} is not adopted by its owner again yet")
        elif plan.m.spec.source_policy is SourcePolicy.FREEZE and plan.source() is not None:
            if not plan.settled(ThawSource(st.source_node or "", plan.thaw_request())):
                plan.hold(f"source pod {plan.m.spec.pod_name} is not thawed yet")
    if st.phase is P.CLEANING and plan.m.spec.source_cleanup is SourceCleanup.DELETE:
        # The restored pod already runs: finish the move rather than leave a frozen source behind.
        src = plan.source()
        if src is not None and not src.deleting:
            grace = 0 if st.source_frozen else None
            plan.outcome(DeletePod(namespace=plan.ns, name=src.name, uid=src.uid, grace_period_seconds=grace))
    if plan.m.spec.checkpoint_retention is DeletionPolicy.DELETE and st.pod_checkpoint_name:
        plan.outcome(DeleteObject(c.PLURAL_POD_CHECKPOINTS, plan.ns, st.pod_checkpoint_name))
    return plan.actions()
