"""The restored pod: a copy of the source pod bound to the target node.

- Live engine (`images` is None): the pod keeps its own images and runs under RuntimeClass lpm; annotations
  name the checkpoint and the containers lpm-runc restores from it (containerd hands `lpm.my.domain/*` pod
  annotations to the runtime). Init containers are not named, so they run as in any new pod.
- Image engine: each container is started from its checkpoint image (CONTEXT.md section 2: restore = OCI
  checkpoint image, not the seed's annotation).

Bare pods: the controller creates the restored pod itself. It never carries ownerReferences, not even to the
PodMigration: deleting a finished PodMigration must never delete the pod it moved.

Owned pods (opted in with label lpm.my.domain/migratable=true; see `handover`): the owner creates it. The
migration releases the source from its owner, the owner creates a new pod, and LPM's admission webhook turns that
create into the restored pod (`build_handover_pod`), so the owner counts it as its own replica.
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


def _placed_spec(spec_in: Mapping[str, Any], target_node: str, images: Mapping[str, str] | None) -> dict[str, Any]:
    """The pod spec bound to the target node, restoring under lpm-runc (`images` None) or from images."""
    spec = copy.deepcopy(dict(spec_in))
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
    return spec


def _restore_metadata(
    source: Mapping[str, Any],
    labels_in: Mapping[str, str],
    annotations_in: Mapping[str, str],
    spec: Mapping[str, Any],
    *,
    live: bool,
    migration_name: str,
    migration_uid: str,
    pod_checkpoint_name: str,
    checkpoint_id: str,
) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) of a restored pod: the given ones plus what names the migration and checkpoint."""
    meta = source.get("metadata") or {}
    labels = dict(labels_in)
    labels[c.LABEL_RESTORED] = "true"
    labels[c.LABEL_MIGRATION] = migration_name
    # A source that was itself restored carries the last migration's restore annotations: never copied.
    dropped = {
        "kubectl.kubernetes.io/last-applied-configuration",
        c.ANNOTATION_RESTORE_CHECKPOINT,
        c.ANNOTATION_RESTORE_CONTAINERS,
        c.ANNOTATION_RELEASED,
    }
    annotations = {k: v for k, v in annotations_in.items() if k not in dropped}
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
    if live:
        annotations[c.ANNOTATION_RESTORE_CHECKPOINT] = checkpoint_id
        annotations[c.ANNOTATION_RESTORE_CONTAINERS] = ",".join(ctr["name"] for ctr in spec.get("containers") or [])
    return labels, annotations


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
    spec = _placed_spec(source.get("spec") or {}, target_node, images)
    labels, annotations = _restore_metadata(
        source,
        meta.get("labels") or {},
        meta.get("annotations") or {},
        spec,
        live=images is None,
        migration_name=migration_name,
        migration_uid=migration_uid,
        pod_checkpoint_name=pod_checkpoint_name,
        checkpoint_id=checkpoint_id,
    )
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


def build_handover_pod(
    incoming: Mapping[str, Any],
    source: Mapping[str, Any],
    *,
    name: str,
    target_node: str,
    migration_name: str,
    migration_uid: str,
    pod_checkpoint_name: str,
    checkpoint_id: str,
) -> dict[str, Any]:
    """An owner's new pod (as its create request arrives at the admission webhook) turned into the live restore
    target of a migration of `source`, one of the owner's pods: bound to the target, under lpm-runc, named as the
    migration names its restored pod. The owner's own labels, ownerReferences and spec (with the service account
    volume the API server injected for it) are kept, so the owner counts it as its replica."""
    meta = incoming.get("metadata") or {}
    spec = _placed_spec(incoming.get("spec") or {}, target_node, None)
    labels, annotations = _restore_metadata(
        source,
        meta.get("labels") or {},
        meta.get("annotations") or {},
        spec,
        live=True,
        migration_name=migration_name,
        migration_uid=migration_uid,
        pod_checkpoint_name=pod_checkpoint_name,
        checkpoint_id=checkpoint_id,
    )
    out = copy.deepcopy(dict(incoming))
    out["metadata"] = {**copy.deepcopy(dict(meta)), "name": name, "labels": labels, "annotations": annotations}
    out["metadata"].pop("generateName", None)
    out["spec"] = spec
    return out
