"""PodCheckpoint: what to do next. Pure: no I/O, `now` comes in.

Pending -> InProgress (one owned ContainerCheckpoint per container, all under one checkpoint ID)
        -> every container Ready: agent.CompleteCheckpoint (writes .checkpoint-complete), create the
           PodCheckpointContent bound to this object (and this object to it) -> Ready
        -> any container Failed: Failed, naming the container.
        -> every container done and any Streamed (post-copy: its memory went to the target, unstored): Streamed,
           nothing sealed.
        -> its PodMigration rolling back, Failed, being deleted or gone: Failed (MigrationEnded), no further
           agent call. A Completed one does not stop it (the Live engine's durable copy ends after it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from lpm.api import constants as c
from lpm.api.agent.v1 import agent_pb2 as pb
from lpm.api.codec import encode
from lpm.api.conditions import set_condition
from lpm.api.models import (
    CheckpointPhase,
    ConditionStatus,
    ContainerCheckpoint,
    ContainerCheckpointSpec,
    ContainerCheckpointState,
    DeletionPolicy,
    MigrationPhase,
    ObjectRef,
    PodCheckpoint,
    PodCheckpointContent,
    PodCheckpointContentSpec,
    PodMigration,
)
from lpm.api.names import checkpoint_id_for, child_name, content_name
from lpm.api.views import PodView
from lpm.app import clock
from lpm.controller.effects import (
    Action,
    CompleteCheckpoint,
    CreateContainerCheckpoint,
    CreateContent,
    DeleteCheckpoint,
    DeleteObject,
    MarkContentReady,
    Outcome,
)
from lpm.controller.plan import Plan

CP = CheckpointPhase


def container_checkpoint_name(pod_checkpoint_name: str, container: str) -> str:
    return child_name(pod_checkpoint_name, container)


def pod_content_name(namespace: str, name: str, uid: str) -> str:
    return content_name("pcpc", namespace, name, uid)


@dataclass(frozen=True)
class Observed:
    pod_checkpoint: PodCheckpoint
    now: datetime
    pod: PodView | None = None
    # container name -> its ContainerCheckpoint (None when not created yet)
    children: Mapping[str, ContainerCheckpoint | None] = field(default_factory=dict)
    content: PodCheckpointContent | None = None
    outcomes: Mapping[str, Outcome] = field(default_factory=dict)
    # The PodMigration named as controller in ownerReferences (None: none named, or it is gone).
    owner_name: str | None = None
    owner: PodMigration | None = None


def _owner_ref(pc: PodCheckpoint) -> dict[str, object]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND_POD_CHECKPOINT,
        "name": pc.metadata.get("name"),
        "uid": pc.metadata.get("uid"),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def decide(obs: Observed) -> list[Action]:
    pc = obs.pod_checkpoint
    if pc.status.phase.terminal or pc.metadata.get("deletionTimestamp"):
        return []
    plan = Plan(pc.status, obs.outcomes)
    st = plan.status
    ns, name, uid = (str(pc.metadata.get(k, "")) for k in ("namespace", "name", "uid"))
    now = clock.fmt(obs.now)

    def finish(phase: CheckpointPhase, reason: str, message: str) -> list[Action]:
        st.phase, st.reason, st.message = phase, reason, message
        st.completion_time = now
        ready = ConditionStatus.TRUE if phase is CP.READY else ConditionStatus.FALSE
        st.conditions = set_condition(st.conditions, c.CONDITION_READY, ready, reason, message, now)
        plan.emit("Normal" if phase in (CP.READY, CP.STREAMED) else "Warning", reason, message)
        return plan.actions()

    owner = obs.owner
    if obs.owner_name and (
        owner is None
        or owner.metadata.get("deletionTimestamp")
        or owner.status.phase in (MigrationPhase.FAILED, MigrationPhase.ROLLING_BACK)
    ):
        # A Completed migration keeps its checkpoint going: the Live engine completes once the pod runs on the
        # target, and the durable copy may still be written then (it is sealed here once every container is).
        why = "is gone" if owner is None else f"is {owner.status.phase.value}"
        return finish(CP.FAILED, "MigrationEnded", f"PodMigration {obs.owner_name} {why}; checkpoint abandoned")
    if st.phase is CP.PENDING:
        pod = obs.pod
        if pod is None:
            return finish(CP.FAILED, "PodNotFound", f"pod {ns}/{pc.spec.pod_name} does not exist")
        if not pod.running or not pod.node_name:
            return finish(CP.FAILED, "PodNotRunning", f"pod {pc.spec.pod_name} is {pod.phase}; it must be Running")
        st.phase = CP.IN_PROGRESS
        st.pod_uid, st.node_name = pod.uid, pod.node_name
        st.checkpoint_id = pc.spec.checkpoint_id or checkpoint_id_for(
            str(pc.metadata.get("creationTimestamp") or now), uid
        )
        st.start_time = now
        st.containers = [
            ContainerCheckpointState(name=ctr, container_checkpoint_name=container_checkpoint_name(name, ctr))
            for ctr in pod.containers
        ]
        st.conditions = set_condition(
            st.conditions, c.CONDITION_READY, ConditionStatus.FALSE, "InProgress", "checkpointing containers", now
        )

    # InProgress: make sure every child exists, then follow them.
    for state in st.containers:
        child = obs.children.get(state.name)
        if child is None:
            spec = ContainerCheckpointSpec(
                pod_name=pc.spec.pod_name,
                container_name=state.name,
                checkpoint_id=st.checkpoint_id,
                options=pc.spec.options,
                leave_running=pc.spec.leave_running,
                stage_on_node=pc.spec.stage_on_node,
                post_copy_above_bytes=pc.spec.post_copy_above_bytes,
                await_freeze=pc.spec.await_freeze,
                deletion_policy=pc.spec.deletion_policy,
            )
            body = encode(ContainerCheckpoint(spec=spec))
            body["metadata"] = {
                "name": state.container_checkpoint_name,
                "namespace": ns,
                "labels": {c.LABEL_POD_CHECKPOINT: name},
                "ownerReferences": [_owner_ref(pc)],
            }
            plan.outcome(CreateContainerCheckpoint(c.PLURAL_CONTAINER_CHECKPOINTS, ns, body))
            continue
        state.phase = child.status.phase
        state.artifact_uri = child.status.artifact_uri
        if child.status.phase is CP.FAILED:
            why = child.status.message or child.status.reason or "no details"
            return finish(
                CP.FAILED, child.status.reason or "ContainerCheckpointFailed", f"container {state.name}: {why}"
            )
    if not st.containers or any(not s.phase.terminal for s in st.containers):
        return plan.actions()
    streamed = [s.name for s in st.containers if s.phase is CP.STREAMED]
    if streamed:
        # Post-copy: what went page by page was never stored, so the pod's checkpoint cannot be restored later.
        return finish(
            CP.STREAMED,
            "Streamed",
            f"container(s) {', '.join(streamed)} moved their memory to node {pc.spec.stage_on_node} after the restore "
            "(post-copy); nothing of this checkpoint was sealed",
        )

    # All containers stored: seal, then bind the content.
    cname = pod_content_name(ns, name, uid)
    content = obs.content
    if content is not None and content.spec.pod_checkpoint_ref.uid != uid:
        return finish(CP.FAILED, "ContentConflict", f"PodCheckpointContent {cname} is bound to another PodCheckpoint")
    sealed = plan.outcome(
        CompleteCheckpoint(
            st.node_name or "",
            pb.CompleteCheckpointRequest(
                pod_uid=st.pod_uid or "",
                checkpoint_id=st.checkpoint_id or "",
                container_names=[s.name for s in st.containers],
            ),
        )
    )
    if sealed is None:
        return plan.actions()
    if not sealed.ok:
        if sealed.retryable:
            st.reason, st.message = sealed.reason, sealed.message
            return plan.actions()
        return finish(CP.FAILED, sealed.reason or "CompleteFailed", sealed.message)
    if content is None:
        content_spec = PodCheckpointContentSpec(
            pod_checkpoint_ref=ObjectRef(name=name, namespace=ns, uid=uid),
            pod_uid=st.pod_uid or "",
            pod_namespace=ns,
            pod_name=pc.spec.pod_name,
            node_name=st.node_name or "",
            checkpoint_id=st.checkpoint_id or "",
            container_checkpoint_contents=[
                (child.status.bound_content_name if child else None) or ""
                for child in (obs.children.get(s.name) for s in st.containers)
            ],
            deletion_policy=pc.spec.deletion_policy,
        )
        body = encode(PodCheckpointContent(spec=content_spec))
        body["metadata"] = {"name": cname, "labels": {c.LABEL_POD_CHECKPOINT: name}}
        created = plan.outcome(CreateContent(c.PLURAL_POD_CHECKPOINT_CONTENTS, None, body))
        if created is None:
            return plan.actions()
        if not created.ok:
            st.reason, st.message = created.reason, created.message
            return plan.actions()
    if content is None or not content.status.ready_to_use:
        marked = plan.outcome(MarkContentReady(c.PLURAL_POD_CHECKPOINT_CONTENTS, cname))
        if marked is None or not marked.ok:
            return plan.actions()
    st.bound_content_name = cname
    st.conditions = set_condition(st.conditions, c.CONDITION_BOUND, ConditionStatus.TRUE, "Bound", cname, now)
    return finish(CP.READY, "Ready", f"{len(st.containers)} container(s) stored as {st.checkpoint_id}")


def decide_finalize(obs: Observed) -> list[Action]:
    """On deletion: the stored checkpoint goes only when deletionPolicy is Delete: its files, through the agent
    of the node that took it (any agent reaches the shared repository, that one is known to exist), then its
    Content. A checkpoint that never got an ID or a node stored nothing. Its ContainerCheckpoints go with it
    (the garbage collector deletes them too; deleting them here works without one)."""
    pc = obs.pod_checkpoint
    plan = Plan(pc.status, obs.outcomes)
    ns = str(pc.metadata.get("namespace", ""))
    if pc.spec.deletion_policy is DeletionPolicy.DELETE:
        st = pc.status
        if st.node_name and st.pod_uid and st.checkpoint_id:
            request = pb.DeleteCheckpointRequest(pod_uid=st.pod_uid, checkpoint_id=st.checkpoint_id)
            if not plan.settled(DeleteCheckpoint(st.node_name, request)):
                plan.hold(f"checkpoint {st.checkpoint_id} is not deleted yet")
        if st.bound_content_name and not plan.settled(
            DeleteObject(c.PLURAL_POD_CHECKPOINT_CONTENTS, None, st.bound_content_name)
        ):
            plan.hold(f"PodCheckpointContent {st.bound_content_name} is not deleted yet")
    for child in obs.children.values():
        if child is not None:
            meta = child.metadata
            plan.outcome(DeleteObject(c.PLURAL_CONTAINER_CHECKPOINTS, ns, str(meta.get("name")), meta.get("uid")))
    return plan.actions()
