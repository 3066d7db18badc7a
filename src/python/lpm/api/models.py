"""Typed models of LPM's custom resources (group lpm.my.domain, version v1).

These dataclasses are the single source of truth: `lpm.api.crds` renders the CRD manifests (OpenAPI v3
schemas, CEL rules, printer columns) from them, and `lpm.api.codec` converts them to and from the JSON the
API server speaks. Field descriptions here become `kubectl explain` text.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from lpm.api import constants as c
from lpm.api.fields import spec_field
from lpm.api.names import DNS1123_LABEL_PATTERN, DNS1123_SUBDOMAIN_PATTERN, UID_PATTERN

ARTIFACT_URI_PATTERN = (
    r"^shared://[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"/[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9]*[a-z0-9])?/dump\.tar\.zst$"
)
IMMUTABLE = [{"rule": "self == oldSelf", "message": "is immutable"}]


class MigrationPhase(str, enum.Enum):
    PENDING = "Pending"
    VALIDATING = "Validating"
    PREPARING = "Preparing"  # live engine: the replacement pod comes up, its containers wait in lpm-runc
    FREEZING = "Freezing"
    CHECKPOINTING = "Checkpointing"
    TRANSFERRING = "Transferring"  # live engine: the checkpoint is staged, verified, on the target node
    CONVERTING = "Converting"  # image engine: the checkpoint becomes an OCI checkpoint image on the target
    RESTORING = "Restoring"
    CLEANING = "Cleaning"
    ROLLING_BACK = "RollingBack"
    COMPLETED = "Completed"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        return self in (MigrationPhase.COMPLETED, MigrationPhase.FAILED)


class CheckpointPhase(str, enum.Enum):
    PENDING = "Pending"
    IN_PROGRESS = "InProgress"
    READY = "Ready"
    FAILED = "Failed"
    # Post-copy: the memory went to the migration's target page by page and nothing was stored. Not restorable.
    STREAMED = "Streamed"

    @property
    def terminal(self) -> bool:
        return self in (CheckpointPhase.READY, CheckpointPhase.FAILED, CheckpointPhase.STREAMED)


class SourcePolicy(str, enum.Enum):
    """What happens to the source pod's processes from the checkpoint on."""

    FREEZE = "Freeze"  # a migration: the source stops changing state, so nothing is lost or done twice
    KEEP_RUNNING = "KeepRunning"  # a clone: the source goes on, updates after the checkpoint stay there


class SourceCleanup(str, enum.Enum):
    DELETE = "Delete"
    RETAIN = "Retain"


class EligibilityPolicy(str, enum.Enum):
    """What a failed eligibility check (run before anything is frozen) does to the migration."""

    ENFORCE = "Enforce"  # refuse: the dump or the restore would fail for certain
    WARN = "Warn"  # record it as a warning and go on (the rollback still protects the source)


class Engine(str, enum.Enum):
    """How the pod is restored on the target node."""

    AUTO = "Auto"  # Live where the target can, else Image
    LIVE = "Live"  # replacement pod first (RuntimeClass lpm), restored in place by lpm-runc
    IMAGE = "Image"  # OCI checkpoint image, restored by the runtime's restore-via-create (or CRI-O)


class PostCopy(str, enum.Enum):
    """Whether a Live migration moves the pod's memory after its restore (CRIU lazy pages)."""

    AUTO = "Auto"  # for containers with at least POST_COPY_ABOVE_BYTES resident, where both nodes can
    ALWAYS = "Always"  # any size, where both nodes can
    NEVER = "Never"  # every page is copied while the source is frozen


POST_COPY_ABOVE_BYTES = 256 << 20


class DeletionPolicy(str, enum.Enum):
    """Whether the stored checkpoint outlives the objects that made it."""

    RETAIN = "Retain"
    DELETE = "Delete"


class ConditionStatus(str, enum.Enum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


@dataclass
class Condition:
    type: str = spec_field("Condition type, e.g. Ready.", required=True)
    status: ConditionStatus = spec_field("True, False or Unknown.", required=True)
    reason: str = spec_field("Machine-readable CamelCase reason.", default="")
    message: str = spec_field("What happened, for a human.", default="")
    last_transition_time: str | None = spec_field("When status last changed.", format="date-time")
    observed_generation: int | None = spec_field("Generation the condition was computed from.")


@dataclass
class CheckpointOptions:
    tcp_established: bool = spec_field(
        "Move a pod that holds established TCP connections (the default). Connections with both ends in the "
        "pod come back intact; those to peers outside it are aborted on the target, so the application and "
        "its peers see an error at once and reconnect. false: refuse such a pod, before anything is frozen. "
        "Needs LPM's CRIU configuration on the nodes (tcp-established in /etc/criu/runc.conf).",
        default=True,
    )


@dataclass
class ObjectRef:
    name: str = spec_field("Name of the object.", required=True)
    namespace: str | None = spec_field("Namespace of the object.")
    uid: str | None = spec_field("UID of the object.", pattern=UID_PATTERN)


# --------------------------------------------------------------------------------------------- PodMigration


@dataclass
class PodMigrationSpec:
    pod_name: str = spec_field(
        "Pod to migrate, in the PodMigration's namespace.",
        required=True,
        pattern=DNS1123_SUBDOMAIN_PATTERN,
        maxLength=253,
        x_kubernetes_validations=IMMUTABLE,
    )
    target_node: str = spec_field(
        "Node to move the pod to; must be Ready, schedulable and not the pod's current node.",
        required=True,
        pattern=DNS1123_SUBDOMAIN_PATTERN,
        maxLength=253,
        x_kubernetes_validations=IMMUTABLE,
    )
    source_policy: SourcePolicy = spec_field(
        "Freeze (default): the source stops at the checkpoint, a true migration. KeepRunning: a clone; "
        "the source keeps running and its later updates are not carried over.",
        default=SourcePolicy.FREEZE,
        x_kubernetes_validations=IMMUTABLE,
    )
    source_cleanup: SourceCleanup = spec_field(
        "Delete (default) removes the source pod once the restored pod runs; Retain leaves it.",
        default=SourceCleanup.DELETE,
    )
    checkpoint_retention: DeletionPolicy = spec_field(
        "Retain (default) keeps the stored checkpoint after the migration; Delete removes it with the " "PodMigration.",
        default=DeletionPolicy.RETAIN,
    )
    options: CheckpointOptions = spec_field("Checkpoint options.", default_factory=CheckpointOptions)
    timeout_seconds: int = spec_field(
        "Give up (and roll back) if the migration is not done within this many seconds.",
        default=600,
        minimum=30,
        maximum=86400,
    )
    ttl_seconds_after_finished: int | None = spec_field(
        "Delete this PodMigration this many seconds after it Completed or Failed (as a Job's field of the same "
        "name); with checkpointRetention Delete its stored checkpoint goes too. Unset: kept until deleted.",
        minimum=0,
        maximum=31536000,
    )
    eligibility: EligibilityPolicy = spec_field(
        "Enforce (default): refuse, before anything is frozen, a pod whose dump or restore would fail for "
        "certain (established TCP connections without options.tcpEstablished, a tty or stdin container, files "
        "open in an emptyDir). Warn: record those findings and migrate anyway.",
        default=EligibilityPolicy.ENFORCE,
        x_kubernetes_validations=IMMUTABLE,
    )
    engine: Engine = spec_field(
        "Auto (default): Live when the target node's runtime has the lpm handler (Node "
        "status.runtimeHandlers) and its agent can stage checkpoints, else Image. Live: the replacement pod is "
        "created first under RuntimeClass lpm and waits in lpm-runc, which restores the checkpoint into it "
        "(no checkpoint image, no restore-via-create). Image: the checkpoint becomes an OCI checkpoint image "
        "that the runtime restores (containerd 2.0-2.3 with enable_experimental_restore_via_create, or CRI-O).",
        default=Engine.AUTO,
        x_kubernetes_validations=IMMUTABLE,
    )
    keep_name: bool = spec_field(
        "Restore under the pod's own name, as a StatefulSet does (a StatefulSet's pod always keeps it). The name is "
        "free only once the source is gone, so the replacement's sandbox is made inside the freeze (longer "
        "downtime), and deleting the frozen source, once its checkpoint is staged on the target, is the commit "
        "point: after it a failed restore cannot roll back (the checkpoint is kept). Needs sourcePolicy Freeze.",
        default=False,
        x_kubernetes_validations=IMMUTABLE,
    )
    post_copy: PostCopy = spec_field(
        "Live engine. Auto (default): a container holding at least 256 MiB of memory moves it after its restore "
        "(post-copy, CRIU lazy pages): the source is frozen only while the rest is dumped and sent, the pod runs on "
        "the target at once, and the source's agent serves the pages it faults on and streams the others. Always: "
        "for any size. Never: every page is copied while the source is frozen. Used only where both nodes' agents "
        "report lazy-pages support and the source pod runs under RuntimeClass lpm (lpm-runc dumps it); otherwise "
        "the pod is dumped whole and status says why. After the target's restore the memory is split between the "
        "nodes: no durable copy is stored, and a broken page stream fails the replacement, which is then deleted "
        "and the (still whole, frozen) source thawed.",
        default=PostCopy.AUTO,
        x_kubernetes_validations=IMMUTABLE,
    )
    dry_run: bool = spec_field(
        "Only validate: check the pod, the nodes, the agents and eligibility, record the findings in "
        "status.eligibility, and end (Completed with reason DryRunPassed, or Failed) without freezing anything.",
        default=False,
        x_kubernetes_validations=IMMUTABLE,
    )


@dataclass
class ContainerImage:
    container_name: str = spec_field("Container name.", required=True)
    image_ref: str = spec_field("Checkpoint image on the target node.", required=True)


@dataclass
class Handover:
    """How an owned pod's controller hands its replica over: the source is released from the owner by one selector
    label, and the owner's next pod becomes the restore target (LPM's admission webhook)."""

    kind: str = spec_field("The owner's kind (ReplicaSet, Job or StatefulSet).", required=True)
    name: str = spec_field("The owner's name.", required=True)
    uid: str = spec_field("The owner's UID: the replacement must be its pod.", required=True)
    label: str = spec_field(
        "The owner's selector label that releases the source when changed (empty for a StatefulSet, which re-creates "
        "its pod under the same name once the source is deleted).",
        default="",
    )
    value: str = spec_field("That label's value on the source before it was released.", default="")
    released: bool = spec_field("Whether the source was released from its owner.", default=False)


@dataclass
class MigrationProgress:
    """The checkpoint's data in flight, as the source's agent reports it (refreshed about once a second)."""

    stage: str = spec_field(
        "dumping (CRIU writes the memory), sending (to the target's agent), storing (the durable copy), done.",
        required=True,
    )
    updated_at: str = spec_field("When the agent was asked.", required=True, format="date-time")
    bytes_done: int = spec_field("Bytes moved so far in this stage, all containers.", default=0)
    bytes_total: int = spec_field("Bytes this stage moves (0 while not known, as during the dump).", default=0)
    bytes_per_second: float = spec_field("Rate since the previous report.", default=0.0)
    eta_seconds: float | None = spec_field("Seconds left at that rate (unset while not known).")


@dataclass
class PodMigrationStatus:
    phase: MigrationPhase = spec_field("Where the migration is.", default=MigrationPhase.PENDING)
    source_node: str | None = spec_field("Node the pod ran on when the migration started.")
    pod_uid: str | None = spec_field("UID of the source pod.")
    pod_checkpoint_name: str | None = spec_field("The PodCheckpoint made for this migration.")
    checkpoint_id: str | None = spec_field("Checkpoint ID shared by all containers of the checkpoint.")
    restored_pod_name: str | None = spec_field(
        "The pod created on the target node (the pod's own name when it keeps it: spec.keepName, StatefulSets)."
    )
    replacement_manifest: str | None = spec_field(
        "A pod that keeps its name (spec.keepName, no owner): the replacement the controller creates once the "
        "source is gone, as JSON; recorded before the source is deleted, cleared once the migration ends."
    )
    container_images: list[ContainerImage] = spec_field(
        "Checkpoint image per container on the target node.", default_factory=list
    )
    source_frozen: bool = spec_field("Whether the source pod's containers are frozen now.", default=False)
    progress: MigrationProgress | None = spec_field(
        "While the checkpoint is taken and sent: its stage, bytes moved, rate and ETA."
    )
    handover: Handover | None = spec_field(
        "Set for a pod with a controller owner (opted in with label lpm.my.domain/migratable=true): how the owner "
        "hands the replica over to the restored pod."
    )
    engine: Engine | None = spec_field(
        "The engine this migration uses (Live or Image), chosen in Validating from spec.engine and the target."
    )
    post_copy_above_bytes: int | None = spec_field(
        "Post-copy is asked for containers holding at least this many bytes of memory (chosen in Validating from "
        "spec.postCopy and both nodes); unset: never."
    )
    dump_waits_for_freeze: bool = spec_field(
        "The checkpoint is created before the freeze, and its calls wait at the source's agent for it, so the "
        "dump starts the moment the pod is frozen (chosen in Validating: the source's agent can).",
        default=False,
    )
    reason: str | None = spec_field("CamelCase reason of the current state or failure.")
    message: str | None = spec_field("What a user can do about the current state or failure.")
    start_time: str | None = spec_field("When the migration started.", format="date-time")
    completion_time: str | None = spec_field("When it reached Completed or Failed.", format="date-time")
    phase_started_at: str | None = spec_field("When the current phase began.", format="date-time")
    phase_durations_seconds: dict[str, float] = spec_field(
        "Seconds spent in each finished phase. Pending counts from metadata.creationTimestamp, which the API "
        "server keeps to the second: it reads up to 1 s long.",
        default_factory=dict,
    )
    frozen_at: str | None = spec_field("When the source was frozen.", format="date-time")
    eligibility: list[str] = spec_field(
        "What was checked before anything was frozen, and what was found (one line each).", default_factory=list
    )
    source_state: str | None = spec_field(
        "The source's containers as their node's runtime last reported them after a rollback, e.g. "
        "'counter: THAWED (containerd task RUNNING, freezer cgroup THAWED)'. Set only from a check, never assumed."
    )
    observed_generation: int | None = spec_field("Generation last acted on.")
    conditions: list[Condition] = spec_field("Standard conditions.", default_factory=list)


@dataclass
class PodMigration:
    KIND: ClassVar[str] = c.KIND_POD_MIGRATION
    PLURAL: ClassVar[str] = c.PLURAL_POD_MIGRATIONS
    SHORT_NAMES: ClassVar[list[str]] = ["pmig", "lpm"]
    NAMESPACED: ClassVar[bool] = True
    DESCRIPTION: ClassVar[str] = "Moves a running pod, memory and all, to another node."
    PRINTER_COLUMNS: ClassVar[list[dict[str, str]]] = [
        {"name": "Pod", "type": "string", "jsonPath": ".spec.podName"},
        {"name": "Source", "type": "string", "jsonPath": ".status.sourceNode"},
        {"name": "Target", "type": "string", "jsonPath": ".spec.targetNode"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Restored", "type": "string", "jsonPath": ".status.restoredPodName", "priority": "1"},
        {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": "1"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]

    spec: PodMigrationSpec
    metadata: dict[str, Any] = field(default_factory=dict)
    status: PodMigrationStatus = field(default_factory=PodMigrationStatus)


# -------------------------------------------------------------------------------------------- PodCheckpoint


@dataclass
class PodCheckpointSpec:
    pod_name: str = spec_field(
        "Pod to checkpoint, in this namespace.",
        required=True,
        pattern=DNS1123_SUBDOMAIN_PATTERN,
        maxLength=253,
        x_kubernetes_validations=IMMUTABLE,
    )
    checkpoint_id: str | None = spec_field(
        "Checkpoint ID shared by all containers; derived from this object when empty. A PodMigration sets it to "
        "the ID it froze the source pod under.",
        pattern=DNS1123_LABEL_PATTERN,
        maxLength=63,
        x_kubernetes_validations=IMMUTABLE,
    )
    options: CheckpointOptions = spec_field("Checkpoint options.", default_factory=CheckpointOptions)
    leave_running: bool = spec_field(
        "Thaw the pod's containers after the checkpoint instead of leaving them frozen.", default=True
    )
    stage_on_node: str | None = spec_field(
        "Live engine: the node whose agent also receives the archive, node to node over mutual TLS, while it is "
        "stored (set by a PodMigration to its target). The store stays the durable copy.",
        pattern=DNS1123_SUBDOMAIN_PATTERN,
        maxLength=253,
        x_kubernetes_validations=IMMUTABLE,
    )
    post_copy_above_bytes: int | None = spec_field(
        "Live engine, post-copy: a container holding at least this many bytes of memory sends it to stageOnNode "
        "page by page after its restore there, and is not stored (phase Streamed). Unset: never.",
        minimum=1,
        x_kubernetes_validations=IMMUTABLE,
    )
    await_freeze: bool = spec_field(
        "Set by a PodMigration that freezes the pod itself and creates this before it does: the checkpoint waits "
        "for that freeze (and fails if the migration rolls back first) instead of freezing on its own.",
        default=False,
        x_kubernetes_validations=IMMUTABLE,
    )
    deletion_policy: DeletionPolicy = spec_field(
        "Retain (default) keeps the stored checkpoint when this object is deleted.", default=DeletionPolicy.RETAIN
    )


@dataclass
class ContainerCheckpointState:
    name: str = spec_field("Container name.", required=True)
    container_checkpoint_name: str | None = spec_field("The ContainerCheckpoint for this container.")
    phase: CheckpointPhase = spec_field("Phase of that ContainerCheckpoint.", default=CheckpointPhase.PENDING)
    artifact_uri: str | None = spec_field("Stored archive.")


@dataclass
class PodCheckpointStatus:
    phase: CheckpointPhase = spec_field("Where the checkpoint is.", default=CheckpointPhase.PENDING)
    pod_uid: str | None = spec_field("UID of the checkpointed pod.")
    node_name: str | None = spec_field("Node the pod ran on.")
    checkpoint_id: str | None = spec_field("Checkpoint ID shared by all containers.")
    bound_content_name: str | None = spec_field("The PodCheckpointContent bound to this object.")
    containers: list[ContainerCheckpointState] = spec_field("Per-container progress.", default_factory=list)
    reason: str | None = spec_field("CamelCase reason of a failure.")
    message: str | None = spec_field("What went wrong, naming the container.")
    start_time: str | None = spec_field("When checkpointing started.", format="date-time")
    completion_time: str | None = spec_field("When it reached Ready or Failed.", format="date-time")
    conditions: list[Condition] = spec_field("Standard conditions.", default_factory=list)


@dataclass
class PodCheckpoint:
    KIND: ClassVar[str] = c.KIND_POD_CHECKPOINT
    PLURAL: ClassVar[str] = c.PLURAL_POD_CHECKPOINTS
    SHORT_NAMES: ClassVar[list[str]] = ["pcp", "podckpt"]
    NAMESPACED: ClassVar[bool] = True
    DESCRIPTION: ClassVar[str] = "A checkpoint of every container of one pod, stored in shared storage."
    PRINTER_COLUMNS: ClassVar[list[dict[str, str]]] = [
        {"name": "Pod", "type": "string", "jsonPath": ".spec.podName"},
        {"name": "Node", "type": "string", "jsonPath": ".status.nodeName"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Content", "type": "string", "jsonPath": ".status.boundContentName", "priority": "1"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]

    spec: PodCheckpointSpec
    metadata: dict[str, Any] = field(default_factory=dict)
    status: PodCheckpointStatus = field(default_factory=PodCheckpointStatus)


# -------------------------------------------------------------------------------------- ContainerCheckpoint


@dataclass
class ContainerCheckpointSpec:
    pod_name: str = spec_field(
        "Pod whose container to checkpoint.",
        required=True,
        pattern=DNS1123_SUBDOMAIN_PATTERN,
        maxLength=253,
        x_kubernetes_validations=IMMUTABLE,
    )
    container_name: str = spec_field(
        "Container to checkpoint.",
        required=True,
        pattern=DNS1123_LABEL_PATTERN,
        maxLength=63,
        x_kubernetes_validations=IMMUTABLE,
    )
    checkpoint_id: str | None = spec_field(
        "Checkpoint ID shared with the pod's other containers; derived from this object when empty.",
        pattern=DNS1123_LABEL_PATTERN,
        maxLength=63,
        x_kubernetes_validations=IMMUTABLE,
    )
    options: CheckpointOptions = spec_field("Checkpoint options.", default_factory=CheckpointOptions)
    leave_running: bool = spec_field(
        "Let the container run on after the checkpoint; false keeps it frozen (a migration's source).", default=True
    )
    stage_on_node: str | None = spec_field(
        "Live engine: the node whose agent also receives the archive, node to node over mutual TLS, while it is "
        "stored (set by a PodMigration to its target). The store stays the durable copy.",
        pattern=DNS1123_SUBDOMAIN_PATTERN,
        maxLength=253,
        x_kubernetes_validations=IMMUTABLE,
    )
    post_copy_above_bytes: int | None = spec_field(
        "Live engine, post-copy: a container holding at least this many bytes of memory sends it to stageOnNode "
        "page by page after its restore there, and is not stored (phase Streamed). Unset: never.",
        minimum=1,
        x_kubernetes_validations=IMMUTABLE,
    )
    await_freeze: bool = spec_field(
        "Set by a PodMigration that freezes the pod itself and creates this before it does: the checkpoint waits "
        "for that freeze (and fails if the migration rolls back first) instead of freezing on its own.",
        default=False,
        x_kubernetes_validations=IMMUTABLE,
    )
    deletion_policy: DeletionPolicy = spec_field(
        "Retain (default) keeps the stored archive when this object is deleted.", default=DeletionPolicy.RETAIN
    )


@dataclass
class ContainerCheckpointStatus:
    phase: CheckpointPhase = spec_field("Where the checkpoint is.", default=CheckpointPhase.PENDING)
    pod_uid: str | None = spec_field("UID of the checkpointed pod.")
    node_name: str | None = spec_field("Node whose agent took the checkpoint.")
    checkpoint_id: str | None = spec_field("Checkpoint ID used.")
    bound_content_name: str | None = spec_field("The ContainerCheckpointContent bound to this object.")
    artifact_uri: str | None = spec_field("Stored archive.", pattern=ARTIFACT_URI_PATTERN)
    compressed_size_bytes: int | None = spec_field("Stored size.")
    raw_size_bytes: int | None = spec_field("Size of the kubelet's tar.")
    sha256: str | None = spec_field("sha256 of the stored archive.")
    kubelet_seconds: float | None = spec_field("Time dumping (CRIU, through the kubelet or containerd).")
    dumped_by: str | None = spec_field(
        "Who dumped the container: kubelet (its checkpoint API) or containerd (the Live engine's runtime dump)."
    )
    store_seconds: float | None = spec_field("Time compressing and storing.")
    attempts: int | None = spec_field("Agent calls made.")
    reason: str | None = spec_field("CamelCase reason of a failure.")
    message: str | None = spec_field("What went wrong.")
    conditions: list[Condition] = spec_field("Standard conditions.", default_factory=list)


@dataclass
class ContainerCheckpoint:
    KIND: ClassVar[str] = c.KIND_CONTAINER_CHECKPOINT
    PLURAL: ClassVar[str] = c.PLURAL_CONTAINER_CHECKPOINTS
    SHORT_NAMES: ClassVar[list[str]] = ["ccp", "ctrckpt"]
    NAMESPACED: ClassVar[bool] = True
    DESCRIPTION: ClassVar[str] = "A checkpoint of one container, taken by the agent on the pod's node."
    PRINTER_COLUMNS: ClassVar[list[dict[str, str]]] = [
        {"name": "Pod", "type": "string", "jsonPath": ".spec.podName"},
        {"name": "Container", "type": "string", "jsonPath": ".spec.containerName"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Size", "type": "integer", "jsonPath": ".status.compressedSizeBytes", "priority": "1"},
        {"name": "Artifact", "type": "string", "jsonPath": ".status.artifactURI", "priority": "1"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]

    spec: ContainerCheckpointSpec
    metadata: dict[str, Any] = field(default_factory=dict)
    status: ContainerCheckpointStatus = field(default_factory=ContainerCheckpointStatus)


# ----------------------------------------------------------------------------------------------- *Content


@dataclass
class ContentStatus:
    ready_to_use: bool = spec_field("The stored checkpoint is complete and verified.", default=False)


@dataclass
class PodCheckpointContentSpec:
    pod_checkpoint_ref: ObjectRef = spec_field(
        "The PodCheckpoint this content is bound to.", required=True, x_kubernetes_validations=IMMUTABLE
    )
    pod_uid: str = spec_field("UID of the checkpointed pod.", required=True, pattern=UID_PATTERN)
    pod_namespace: str = spec_field("Namespace of the checkpointed pod.", required=True)
    pod_name: str = spec_field("Name of the checkpointed pod.", required=True)
    node_name: str = spec_field("Node the pod ran on.", required=True)
    checkpoint_id: str = spec_field("Checkpoint ID.", required=True, pattern=DNS1123_LABEL_PATTERN)
    container_checkpoint_contents: list[str] = spec_field(
        "ContainerCheckpointContent names, one per container.", default_factory=list
    )
    deletion_policy: DeletionPolicy = spec_field("Retain or Delete the stored files.", default=DeletionPolicy.RETAIN)


@dataclass
class PodCheckpointContent:
    KIND: ClassVar[str] = c.KIND_POD_CHECKPOINT_CONTENT
    PLURAL: ClassVar[str] = c.PLURAL_POD_CHECKPOINT_CONTENTS
    SHORT_NAMES: ClassVar[list[str]] = ["pcpc"]
    NAMESPACED: ClassVar[bool] = False
    DESCRIPTION: ClassVar[str] = "A stored pod checkpoint (cluster-scoped), bound to one PodCheckpoint."
    PRINTER_COLUMNS: ClassVar[list[dict[str, str]]] = [
        {"name": "Namespace", "type": "string", "jsonPath": ".spec.podCheckpointRef.namespace"},
        {"name": "PodCheckpoint", "type": "string", "jsonPath": ".spec.podCheckpointRef.name"},
        {"name": "CheckpointID", "type": "string", "jsonPath": ".spec.checkpointID"},
        {"name": "Ready", "type": "boolean", "jsonPath": ".status.readyToUse"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]

    spec: PodCheckpointContentSpec
    metadata: dict[str, Any] = field(default_factory=dict)
    status: ContentStatus = field(default_factory=ContentStatus)


@dataclass
class ContainerCheckpointContentSpec:
    container_checkpoint_ref: ObjectRef = spec_field(
        "The ContainerCheckpoint this content is bound to.", required=True, x_kubernetes_validations=IMMUTABLE
    )
    artifact_uri: str = spec_field(
        "shared://<podUID>/<checkpointID>/<container>/dump.tar.zst",
        required=True,
        pattern=ARTIFACT_URI_PATTERN,
        x_kubernetes_validations=IMMUTABLE,
    )
    container_name: str = spec_field("Container name.", required=True, pattern=DNS1123_LABEL_PATTERN)
    pod_uid: str = spec_field("UID of the checkpointed pod.", required=True, pattern=UID_PATTERN)
    checkpoint_id: str = spec_field("Checkpoint ID.", required=True, pattern=DNS1123_LABEL_PATTERN)
    node_name: str = spec_field("Node the checkpoint was taken on.", required=True)
    sha256: str | None = spec_field("sha256 of the stored archive.", pattern=r"^[0-9a-f]{64}$")
    compressed_size_bytes: int | None = spec_field("Stored size.", minimum=0)
    raw_size_bytes: int | None = spec_field("Size of the kubelet's tar.", minimum=0)
    deletion_policy: DeletionPolicy = spec_field("Retain or Delete the stored files.", default=DeletionPolicy.RETAIN)


@dataclass
class ContainerCheckpointContent:
    KIND: ClassVar[str] = c.KIND_CONTAINER_CHECKPOINT_CONTENT
    PLURAL: ClassVar[str] = c.PLURAL_CONTAINER_CHECKPOINT_CONTENTS
    SHORT_NAMES: ClassVar[list[str]] = ["ccpc"]
    NAMESPACED: ClassVar[bool] = False
    DESCRIPTION: ClassVar[str] = "A stored container checkpoint (cluster-scoped) holding the artifact URI."
    PRINTER_COLUMNS: ClassVar[list[dict[str, str]]] = [
        {"name": "Namespace", "type": "string", "jsonPath": ".spec.containerCheckpointRef.namespace"},
        {"name": "ContainerCheckpoint", "type": "string", "jsonPath": ".spec.containerCheckpointRef.name"},
        {"name": "Artifact", "type": "string", "jsonPath": ".spec.artifactURI"},
        {"name": "Ready", "type": "boolean", "jsonPath": ".status.readyToUse"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]

    spec: ContainerCheckpointContentSpec
    metadata: dict[str, Any] = field(default_factory=dict)
    status: ContentStatus = field(default_factory=ContentStatus)


class Resource(Protocol):
    """What every custom resource class above declares: the CRD generator and the controller read these."""

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    SHORT_NAMES: ClassVar[list[str]]
    NAMESPACED: ClassVar[bool]
    DESCRIPTION: ClassVar[str]
    PRINTER_COLUMNS: ClassVar[list[dict[str, str]]]
    metadata: dict[str, Any]


RESOURCES: tuple[type[Resource], ...] = (
    PodMigration,
    PodCheckpoint,
    ContainerCheckpoint,
    PodCheckpointContent,
    ContainerCheckpointContent,
)
