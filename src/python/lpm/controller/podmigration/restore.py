"""The restored pod: a copy of the source pod bound to the target node.

- Live engine (`images` is None): the pod keeps its own images and runs under RuntimeClass lpm; annotations
  name the checkpoint and the containers lpm-runc restores from it (containerd hands `lpm.my.domain/*` pod
  annotations to the runtime). Init containers are not named, so they run as in any new pod.
- Image engine: each container is started from its checkpoint image (CONTEXT.md section 2: restore = OCI
  checkpoint image, not the seed's annotation).

Owned pods: LPM refuses to migrate a pod that has a controller (ReplicaSet, StatefulSet, Job, DaemonSet, ...)
during validation. Such a controller would recreate the source pod as soon as the migration deletes it, and it
would adopt the restored pod (same labels, no controller) and then scale one of the two copies away — possibly
the restored one. Detaching the pod first (`kubectl delete <kind> <name> --cascade=orphan`, or removing the
ownerReference) makes the ownership explicit. The restored pod never carries ownerReferences, not even to the
PodMigration: deleting a finished PodMigration must never delete the pod it moved.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from typing import Any

from lpm.api import constants as c
from lpm.api.names import DNS1123_LABEL_MAX, child_name, is_dns1123_label

_STRIP_SPEC = ("nodeName", "schedulingGates", "ephemeralContainers", "preemptionPolicy")
# Only used by whoever originally scheduled the pod; the migration binds the copy to the target itself.
_HOSTNAME_LABEL = "kubernetes.io/hostname"


def original_name(pod: Mapping[str, Any]) -> str:
    """The pod's name before its first migration (its annotation, when it is a valid name), else its name."""
    meta = pod.get("metadata") or {}
    kept = (meta.get("annotations") or {}).get(c.ANNOTATION_ORIGINAL_NAME)
    return kept if isinstance(kept, str) and is_dns1123_label(kept) else str(meta.get("name") or "")


def restored_pod_name(pod_name: str, migration_uid: str) -> str:
    """`<pod>-<5 hex of the migration UID>`: the same for every retry of one migration, different for the next.

    Kept to 63 characters so the pod's hostname equals its name.
    """
    tag = hashlib.sha256(migration_uid.encode()).hexdigest()[:5]
    return child_name(pod_name, tag, limit=DNS1123_LABEL_MAX)


def pod_checkpoint_name(migration_name: str) -> str:
    return child_name(migration_name, "checkpoint")


def build_restored_pod(
    source: Mapping[str, Any],
    *,
    name: str,
    target_node: str,
    images: Mapping[str, str] | None,
    migration_name: str,
    migration_uid: str,
    pod_checkpoint_name: str,
    checkpoint_id: str,
) -> dict[str, Any]:
    meta = source.get("metadata") or {}
    spec = copy.deepcopy(dict(source.get("spec") or {}))
    for key in _STRIP_SPEC:
        spec.pop(key, None)
    spec["nodeName"] = target_node
    selector = dict(spec.get("nodeSelector") or {})
    selector.pop(_HOSTNAME_LABEL, None)
    if selector:
        spec["nodeSelector"] = selector
    else:
        spec.pop("nodeSelector", None)
    affinity = dict(spec.get("affinity") or {})
    affinity.pop("nodeAffinity", None)
    if affinity:
        spec["affinity"] = affinity
    else:
        spec.pop("affinity", None)
    if images is None:
        spec["runtimeClassName"] = c.RUNTIME_CLASS_LIVE
    else:
        if spec.get("runtimeClassName") == c.RUNTIME_CLASS_LIVE:
            spec.pop("runtimeClassName")  # restore-via-create needs no wrapper
        for container in spec.get("containers") or []:
            container["image"] = images[container["name"]]
            container["imagePullPolicy"] = "Never"
    labels = dict(meta.get("labels") or {})
    labels[c.LABEL_RESTORED] = "true"
    labels[c.LABEL_MIGRATION] = migration_name
    # A source that was itself restored carries the last migration's restore annotations: never copied.
    dropped = {
        "kubectl.kubernetes.io/last-applied-configuration",
        c.ANNOTATION_RESTORE_CHECKPOINT,
        c.ANNOTATION_RESTORE_CONTAINERS,
    }
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in dropped}
    annotations.update(
        {
            c.ANNOTATION_SOURCE_POD: f"{meta.get('namespace')}/{meta.get('name')}",
            c.ANNOTATION_SOURCE_NODE: str((source.get("spec") or {}).get("nodeName") or ""),
            c.ANNOTATION_MIGRATION: migration_name,
            c.ANNOTATION_MIGRATION_UID: migration_uid,
            c.ANNOTATION_CHECKPOINT: pod_checkpoint_name,
            c.ANNOTATION_CHECKPOINT_ID: checkpoint_id,
            c.ANNOTATION_ORIGINAL_NAME: original_name(source),
        }
    )
    if images is None:
        annotations[c.ANNOTATION_RESTORE_CHECKPOINT] = checkpoint_id
        annotations[c.ANNOTATION_RESTORE_CONTAINERS] = ",".join(ctr["name"] for ctr in spec.get("containers") or [])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": meta.get("namespace"),
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec,
    }
