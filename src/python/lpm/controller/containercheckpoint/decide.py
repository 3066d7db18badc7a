"""ContainerCheckpoint: what to do next. Pure: no I/O, `now` comes in.

Pending/InProgress -> agent(pod's node).Checkpoint -> ContainerCheckpointContent (cluster-scoped, deterministic
name, bound to this object by UID; this object's status names it) -> Ready=True. Failures end Failed with
Ready=False and the agent's reason. Agent outages are retried until DEADLINE_SECONDS after creation; a CRIU
refusal (CheckpointRefused), a fenced checkpoint ID, a full repository, or a kubelet the agent already retried
with the seed's backoff (KubeletUnavailable) is not retried. A ContainerCheckpoint whose owning
PodCheckpoint is gone or has failed ends Failed (Abandoned) without another agent call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration

from lpm.api import constants as c
from lpm.api.agent.v1 import agent_pb2 as pb
from lpm.api.codec import encode
from lpm.api.conditions import set_condition
from lpm.api.models import (
    CheckpointPhase,
    ConditionStatus,
    ContainerCheckpoint,
    ContainerCheckpointContent,
    ContainerCheckpointContentSpec,
    DeletionPolicy,
    ObjectRef,
    PodCheckpoint,
)
from lpm.api.names import checkpoint_id_for, content_name
from lpm.api.views import PodView
from lpm.app import clock
from lpm.controller.effects import (
    Action,
    CallCheckpoint,
    CreateContent,
    DeleteObject,
    MarkContentReady,
    Outcome,
)
from lpm.controller.plan import Plan

CP = CheckpointPhase
# An agent that is restarting is back within seconds (measured: ~10 s on infra/local); a source may be frozen
# while its checkpoint waits for it, so an outage longer than this fails the checkpoint (and rolls back).
DEADLINE_SECONDS = 180.0


def container_content_name(namespace: str, name: str, uid: str) -> str:
    return content_name("ccpc", namespace, name, uid)


@dataclass(frozen=True)
class Observed:
    container_checkpoint: ContainerCheckpoint
    now: datetime
    pod: PodView | None = None
    content: ContainerCheckpointContent | None = None
    outcomes: Mapping[str, Outcome] = field(default_factory=dict)
    # The PodCheckpoint named as controller in ownerReferences (None: none named, or it is gone).
    owner_name: str | None = None
    owner: PodCheckpoint | None = None


def _seconds(duration: Duration, reported: bool) -> float | None:
    return duration.ToTimedelta().total_seconds() if reported else None


def decide(obs: Observed) -> list[Action]:
    cc = obs.container_checkpoint
    if cc.status.phase.terminal or cc.metadata.get("deletionTimestamp"):
        return []
    plan = Plan(cc.status, obs.outcomes)
    st = plan.status
    ns, name, uid = (str(cc.metadata.get(k, "")) for k in ("namespace", "name", "uid"))
    now = clock.fmt(obs.now)
    ctr = cc.spec.container_name

    def finish(phase: CheckpointPhase, reason: str, message: str) -> list[Action]:
        st.phase, st.reason, st.message = phase, reason, message
        ready = ConditionStatus.TRUE if phase is CP.READY else ConditionStatus.FALSE
        st.conditions = set_condition(st.conditions, c.CONDITION_READY, ready, reason, message, now)
        plan.emit("Normal" if phase in (CP.READY, CP.STREAMED) else "Warning", reason, message)
        return plan.actions()

    def ready(spec: ContainerCheckpointContentSpec) -> list[Action]:
        st.bound_content_name = cname
        st.artifact_uri = spec.artifact_uri
        st.sha256 = spec.sha256
        st.compressed_size_bytes = spec.compressed_size_bytes
        st.raw_size_bytes = spec.raw_size_bytes
        st.pod_uid, st.checkpoint_id, st.node_name = spec.pod_uid, spec.checkpoint_id, spec.node_name
        return finish(CP.READY, "Ready", f"stored as {spec.artifact_uri}")

    cname = container_content_name(ns, name, uid)
    content = obs.content
    if content is not None:
        if content.spec.container_checkpoint_ref.uid != uid:
            return finish(CP.FAILED, "ContentConflict", f"ContainerCheckpointContent {cname} is bound elsewhere")
        # Stored and bound already (a previous cycle died before recording it): adopt it.
        if not content.status.ready_to_use:
            if plan.outcome(MarkContentReady(c.PLURAL_CONTAINER_CHECKPOINT_CONTENTS, cname)) is None:
                return plan.actions()
        return ready(content.spec)

    owner = obs.owner
    if obs.owner_name and (owner is None or owner.metadata.get("deletionTimestamp") or owner.status.phase is CP.FAILED):
        why = "is gone" if owner is None else ("is being deleted" if owner.status.phase is not CP.FAILED else "failed")
        return finish(
            CP.FAILED, "Abandoned", f"PodCheckpoint {obs.owner_name} {why}; this container is not checkpointed"
        )
    pod = obs.pod
    if pod is None or (st.pod_uid and pod.uid != st.pod_uid):
        return finish(CP.FAILED, "PodNotFound", f"pod {ns}/{cc.spec.pod_name} no longer exists")
    if not pod.running or not pod.node_name:
        return finish(CP.FAILED, "PodNotRunning", f"pod {cc.spec.pod_name} is {pod.phase}; it must be Running")
    if ctr not in pod.containers:
        return finish(
            CP.FAILED,
            "ContainerNotFound",
            f"pod {cc.spec.pod_name} has no container {ctr} ({', '.join(pod.containers)})",
        )
    if st.phase is CP.PENDING:
        st.phase = CP.IN_PROGRESS
        st.pod_uid, st.node_name = pod.uid, pod.node_name
        st.checkpoint_id = cc.spec.checkpoint_id or checkpoint_id_for(
            str(cc.metadata.get("creationTimestamp") or now), uid
        )
        st.conditions = set_condition(
            st.conditions, c.CONDITION_READY, ConditionStatus.FALSE, "InProgress", f"checkpointing {ctr}", now
        )
    request = pb.CheckpointRequest(
        pod_namespace=ns,
        pod_name=cc.spec.pod_name,
        container_name=ctr,
        pod_uid=st.pod_uid or "",
        checkpoint_id=st.checkpoint_id or "",
        options=pb.CheckpointOptions(
            tcp_established=cc.spec.options.tcp_established,
            leave_running=cc.spec.leave_running,
            stage_on_node=cc.spec.stage_on_node or "",
            lazy_pages_above_bytes=cc.spec.post_copy_above_bytes or 0,
            await_freeze=cc.spec.await_freeze and not cc.spec.leave_running,
        ),
    )
    called = plan.outcome(CallCheckpoint(st.node_name or "", request))
    if called is None:
        return plan.actions()
    if not called.ok:
        age = clock.seconds_between(str(cc.metadata.get("creationTimestamp") or ""), obs.now) or 0.0
        if called.retryable and age < DEADLINE_SECONDS:
            st.reason, st.message = called.reason, called.message
            return plan.actions()
        return finish(CP.FAILED, called.reason or "CheckpointFailed", called.message)
    reply = json_format.ParseDict(called.value, pb.CheckpointResponse())  # the agent's reply, typed again
    art = reply.artifact
    st.kubelet_seconds = _seconds(reply.kubelet_duration, reply.HasField("kubelet_duration"))
    st.dumped_by = reply.dumped_by or None
    st.store_seconds = _seconds(reply.store_duration, reply.HasField("store_duration"))
    st.attempts = reply.attempts or 1
    if reply.memory_streamed:
        # Post-copy: the images held no memory, and nothing was stored (there is no content to bind).
        return finish(
            CP.STREAMED,
            "Streamed",
            f"the memory went to node {cc.spec.stage_on_node} page by page after its restore there (post-copy: "
            f"{reply.pages_message or 'done'}); nothing was stored",
        )
    spec = ContainerCheckpointContentSpec(
        container_checkpoint_ref=ObjectRef(name=name, namespace=ns, uid=uid),
        artifact_uri=art.artifact_uri,
        container_name=ctr,
        pod_uid=st.pod_uid or "",
        checkpoint_id=st.checkpoint_id or "",
        node_name=st.node_name or "",
        sha256=art.sha256 or None,
        compressed_size_bytes=art.compressed_size_bytes or None,
        raw_size_bytes=art.raw_size_bytes or None,
        deletion_policy=cc.spec.deletion_policy,
    )
    body = encode(ContainerCheckpointContent(spec=spec))
    body["metadata"] = {"name": cname, "labels": {c.LABEL_POD_CHECKPOINT: name}}
    created = plan.outcome(CreateContent(c.PLURAL_CONTAINER_CHECKPOINT_CONTENTS, None, body))
    if created is None:
        return plan.actions()
    if not created.ok:
        if created.retryable:
            st.reason, st.message = created.reason, created.message
            return plan.actions()
        return finish(CP.FAILED, "ContentInvalid", f"agent result rejected: {created.message}")
    if plan.outcome(MarkContentReady(c.PLURAL_CONTAINER_CHECKPOINT_CONTENTS, cname)) is None:
        return plan.actions()
    return ready(spec)


def decide_finalize(obs: Observed) -> list[Action]:
    """On deletion with deletionPolicy Delete: its Content goes too (the files go with the PodCheckpoint's)."""
    cc = obs.container_checkpoint
    plan = Plan(cc.status, obs.outcomes)
    name = cc.status.bound_content_name
    if cc.spec.deletion_policy is DeletionPolicy.DELETE and name:
        if not plan.settled(DeleteObject(c.PLURAL_CONTAINER_CHECKPOINT_CONTENTS, None, name)):
            plan.hold(f"ContainerCheckpointContent {name} is not deleted yet")
    return plan.actions()
