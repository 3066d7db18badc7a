"""Owned pods: how a pod's controller hands its replica over to the restored pod. Pure: no I/O.

A ReplicaSet (so a Deployment) or a Job keeps its pods by label selector. The migration changes one selector label
on the source (`release_patch`); the owner lets go of the source (it drops the ownerReference) and creates a new
pod from its template, and LPM's mutating admission webhook turns that create into the migration's restore target
(`restore.build_handover_pod`): bound to the target node, under lpm-runc, named as the migration names its
restored pod. The owner therefore never runs more replicas than its spec, apart from the released source during
the hand-over, and never starts a fresh, empty pod in the source's place. On rollback the label goes back
(`readopt_patch`), the owner adopts the source again and the waiting replacement is deleted.

A StatefulSet's pod is not released: its owner re-creates it under the same name (web-0), which is free only once
the source is gone. Such a migration keeps the name (`PodMigrationSpec.keep_name`): the frozen source's checkpoint
is staged on the target, the source is deleted (the commit point), and the StatefulSet's new web-0 becomes the
restore target through the same webhook, so its sandbox is made inside the freeze. A DaemonSet's pod belongs to
its node.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lpm.api import constants as c
from lpm.api.models import Handover
from lpm.api.placement import HANDED_OVER_KINDS

# The selector label each owner kind sets on its pods itself, so changing it releases the pod whatever the rest
# of the selector is: a Deployment's ReplicaSet selects on pod-template-hash, a Job on its controller UID.
RELEASE_LABELS: Mapping[str, tuple[str, ...]] = {  # every placement.HANDED_OVER_KINDS but StatefulSet
    "ReplicaSet": ("pod-template-hash",),
    "Job": ("batch.kubernetes.io/controller-uid", "controller-uid"),
}


def keeps_name(handover: Handover | None) -> bool:
    """The owner re-creates the pod under its own name (a StatefulSet): nothing to release, the name passes."""
    return handover is not None and handover.kind == "StatefulSet"


def opted_in(pod: Mapping[str, Any]) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return labels.get(c.LABEL_MIGRATABLE) == "true"


def controller_ref(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    refs = (pod.get("metadata") or {}).get("ownerReferences") or []
    return next((r for r in refs if isinstance(r, Mapping) and r.get("controller")), None)


def released_by(pod: Mapping[str, Any], migration_uid: str) -> Handover | None:
    """The hand-over recorded on a source that this migration released (a status write may have been lost)."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(c.ANNOTATION_RELEASED)
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("migration") != migration_uid:
        return None
    try:
        return Handover(
            kind=str(data["kind"]),
            name=str(data["name"]),
            uid=str(data["uid"]),
            label=str(data["label"]),
            value=str(data["value"]),
            released=True,
        )
    except KeyError:
        return None


def plan_handover(pod: Mapping[str, Any], migration_uid: str) -> Handover | tuple[str, str] | None:
    """How this pod's owner hands it over; None for a bare pod; (reason, message) when it cannot be."""
    again = released_by(pod, migration_uid)
    if again is not None:
        return again
    ref = controller_ref(pod)
    if ref is None:
        return None
    name = (pod.get("metadata") or {}).get("name")
    kind, owner = str(ref.get("kind")), str(ref.get("name"))
    if not opted_in(pod):
        return (
            "PodHasController",
            f"pod {name} is managed by {kind}/{owner} and has not opted in: add label "
            f"{c.LABEL_MIGRATABLE}=true to its pod template, and the owner hands the replica over to the restored "
            f"pod; or detach it (kubectl delete {kind.lower()} {owner} --cascade=orphan) and retry",
        )
    if kind not in HANDED_OVER_KINDS:
        return (
            "OwnerNotSupported",
            f"pod {name} belongs to {kind}/{owner}; LPM hands over pods of ReplicaSets (Deployments), Jobs and "
            "StatefulSets only",
        )
    if kind == "StatefulSet":
        return Handover(kind=kind, name=owner, uid=str(ref.get("uid") or ""))
    labels = (pod.get("metadata") or {}).get("labels") or {}
    key = next((k for k in RELEASE_LABELS[kind] if labels.get(k)), None)
    if key is None:
        return (
            "OwnerSelectorUnknown",
            f"pod {name} belongs to {kind}/{owner} but has none of the labels {kind} selects its pods by "
            f"({', '.join(RELEASE_LABELS[kind])}); it cannot be released from its owner",
        )
    return Handover(kind=kind, name=owner, uid=str(ref.get("uid") or ""), label=key, value=str(labels[key]))


def release_patch(pod_uid: str, handover: Handover, migration_uid: str) -> dict[str, Any]:
    """Merge patch that releases the source from its owner; the UID makes it apply to this very pod only."""
    record = {
        "migration": migration_uid,
        "kind": handover.kind,
        "name": handover.name,
        "uid": handover.uid,
        "label": handover.label,
        "value": handover.value,
    }
    return {
        "metadata": {
            "uid": pod_uid,
            "labels": {handover.label: c.RELEASED_LABEL_VALUE},
            "annotations": {c.ANNOTATION_RELEASED: json.dumps(record, sort_keys=True)},
        }
    }


def readopt_patch(pod_uid: str, handover: Handover) -> dict[str, Any]:
    """Merge patch that gives the source back to its owner (which then adopts it again)."""
    return {
        "metadata": {
            "uid": pod_uid,
            "labels": {handover.label: handover.value},
            "annotations": {c.ANNOTATION_RELEASED: None},
        }
    }


def adopted(pod: Mapping[str, Any], handover: Handover) -> bool:
    ref = controller_ref(pod)
    return ref is not None and ref.get("uid") == handover.uid
