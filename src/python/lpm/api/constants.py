"""Names shared by the controller, the agent, the CLI and the CRD manifests: one vocabulary everywhere."""

from __future__ import annotations

from typing import Final

GROUP: Final = "lpm.my.domain"
VERSION: Final = "v1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

KIND_POD_MIGRATION: Final = "PodMigration"
KIND_POD_CHECKPOINT: Final = "PodCheckpoint"
KIND_CONTAINER_CHECKPOINT: Final = "ContainerCheckpoint"
KIND_POD_CHECKPOINT_CONTENT: Final = "PodCheckpointContent"
KIND_CONTAINER_CHECKPOINT_CONTENT: Final = "ContainerCheckpointContent"

PLURAL_POD_MIGRATIONS: Final = "podmigrations"
PLURAL_POD_CHECKPOINTS: Final = "podcheckpoints"
PLURAL_CONTAINER_CHECKPOINTS: Final = "containercheckpoints"
PLURAL_POD_CHECKPOINT_CONTENTS: Final = "podcheckpointcontents"
PLURAL_CONTAINER_CHECKPOINT_CONTENTS: Final = "containercheckpointcontents"

# Labels and annotations LPM puts on objects it creates.
LABEL_MIGRATION: Final = f"{GROUP}/migration"
LABEL_POD_CHECKPOINT: Final = f"{GROUP}/pod-checkpoint"
LABEL_RESTORED: Final = f"{GROUP}/restored"
# Opt-in of an owned pod (set it in the pod template): its migrations hand the replica over to the owner's next
# pod, which LPM's admission webhook turns into the restore target; its evictions become migrations.
LABEL_MIGRATABLE: Final = f"{GROUP}/migratable"
# The value of the owner's selector label on a source that a migration released from its owner.
RELEASED_LABEL_VALUE: Final = "lpm-released"
# A dry-run pod create carrying this annotation asks LPM's mutating webhook to prove it is called.
# On a released source: JSON naming the migration and how to give the pod back to its owner on rollback.
ANNOTATION_RELEASED: Final = f"{GROUP}/released"
ANNOTATION_WEBHOOK_PROBE: Final = f"{GROUP}/webhook-probe"
ANNOTATION_WEBHOOK_SEEN: Final = f"{GROUP}/webhook-seen"
# PodMigrations made by `kubectl lpm drain`: the node drained, and one value per drain run.
LABEL_DRAIN: Final = f"{GROUP}/drain-node"
LABEL_DRAIN_ID: Final = f"{GROUP}/drain-id"
ANNOTATION_SOURCE_POD: Final = f"{GROUP}/source-pod"
ANNOTATION_SOURCE_NODE: Final = f"{GROUP}/source-node"
ANNOTATION_MIGRATION: Final = f"{GROUP}/migration"
ANNOTATION_CHECKPOINT: Final = f"{GROUP}/checkpoint"
ANNOTATION_CHECKPOINT_ID: Final = f"{GROUP}/checkpoint-id"
# The name the pod had before its first migration: every move names the replacement `<original>-<5 hex>`, so a
# pod moved any number of times keeps a name of the same length.
ANNOTATION_ORIGINAL_NAME: Final = f"{GROUP}/original-name"
# UID of the PodMigration that made a restored pod: how the controller knows the pod is its own.
ANNOTATION_MIGRATION_UID: Final = f"{GROUP}/migration-uid"
# Live engine: the replacement pod's containers named here are restored from this checkpoint by lpm-runc (the
# runtime behind RuntimeClass RUNTIME_CLASS_LIVE; containerd hands it pod annotations matching lpm.my.domain/*).
ANNOTATION_RESTORE_CHECKPOINT: Final = f"{GROUP}/restore-checkpoint"
ANNOTATION_RESTORE_CONTAINERS: Final = f"{GROUP}/restore-containers"
RUNTIME_CLASS_LIVE: Final = "lpm"

FINALIZER: Final = f"{GROUP}/cleanup"

# The agent DaemonSet's pods carry this label; the controller finds "the agent on node X" with it.
AGENT_LABEL_SELECTOR: Final = "app.kubernetes.io/name=lpm-agent"
AGENT_PORT: Final = 50051

# Image annotations the runtimes read to restore instead of starting fresh (CRI-O and containerd).
IMAGE_ANNOTATION_CRIO_CHECKPOINT_NAME: Final = "io.kubernetes.cri-o.annotations.checkpoint.name"
IMAGE_ANNOTATION_CRIU_CONTAINER_NAME: Final = "org.criu.checkpoint.container.name"

CONDITION_READY: Final = "Ready"
CONDITION_SOURCE_FROZEN: Final = "SourceFrozen"
CONDITION_VALIDATED: Final = "Validated"
CONDITION_BOUND: Final = "Bound"
CONDITION_ELIGIBLE: Final = "Eligible"
CONDITION_REPLACEMENT_READY: Final = "ReplacementReady"
# PodMigration, Live engine: False once the checkpoint's durable copy failed and the migration went on without it.
CONDITION_DURABLE_COPY: Final = "DurableCopy"
# Agent Capabilities.problems: the entry that says why pre-copy cannot run on the node.
PRECOPY_PROBLEM_PREFIX: Final = "pre-copy: "
# Agent Capabilities.problems: the entry that says why post-copy (lazy pages) cannot run on the node.
POSTCOPY_PROBLEM_PREFIX: Final = "post-copy: "
# The agent's reason when a post-copy checkpoint's pages did not all reach the target (a PodMigration rolls back).
REASON_POST_COPY_FAILED: Final = "PostCopyFailed"
