"""PodCheckpoint shell: read the pod, the ContainerCheckpoints and the content; run `decide`; write one status."""

from __future__ import annotations

from typing import Any

from lpm.api import constants as c
from lpm.api.codec import decode
from lpm.api.models import CheckpointPhase, ContainerCheckpoint, PodCheckpoint, PodCheckpointContent, PodMigration
from lpm.api.views import PodView
from lpm.controller.cycle import Runtime, read_owner, reconcile_object
from lpm.controller.effects import Effect
from lpm.controller.podcheckpoint.decide import Observed, decide, decide_finalize, pod_content_name

PLURAL = c.PLURAL_POD_CHECKPOINTS


def observe(rt: Runtime, obj: dict[str, Any]) -> Observed:
    pc = decode(PodCheckpoint, obj)
    ns, name, uid = (str(pc.metadata.get(k)) for k in ("namespace", "name", "uid"))
    pod = None
    if pc.status.phase is CheckpointPhase.PENDING:
        raw = rt.kube.get("pods", ns, pc.spec.pod_name)
        pod = PodView.from_api(raw) if raw else None
    children: dict[str, ContainerCheckpoint | None] = {}
    if pc.status.containers:
        for item in rt.kube.list(c.PLURAL_CONTAINER_CHECKPOINTS, ns, label_selector=f"{c.LABEL_POD_CHECKPOINT}={name}"):
            cc = decode(ContainerCheckpoint, item)
            if any(ref.get("uid") == uid for ref in cc.metadata.get("ownerReferences") or []):
                children[cc.spec.container_name] = cc
    content = None
    ready = [children.get(s.name) for s in pc.status.containers]
    if ready and all(cc is not None and cc.status.phase is CheckpointPhase.READY for cc in ready):
        raw = rt.kube.get(c.PLURAL_POD_CHECKPOINT_CONTENTS, None, pod_content_name(ns, name, uid))
        content = decode(PodCheckpointContent, raw) if raw else None
    owner_name, owner = read_owner(rt, pc.metadata, PodMigration) if not pc.status.phase.terminal else (None, None)
    return Observed(
        pod_checkpoint=pc,
        now=rt.now(),
        pod=pod,
        children=children,
        content=content,
        owner_name=owner_name,
        owner=owner,
    )


def reconcile(rt: Runtime, namespace: str, name: str) -> None:
    reconcile_object(rt, PLURAL, namespace, name, PodCheckpoint, observe, decide)


def finalize(rt: Runtime, namespace: str, name: str) -> bool:
    obj = rt.kube.get(PLURAL, namespace, name)
    if obj is None:
        return True
    pc = decode(PodCheckpoint, obj)
    ok = True
    for effect in decide_finalize(pc):
        assert isinstance(effect, Effect)
        out = rt.execute(effect)
        ok = ok and (out.ok or not out.retryable)
    # Children go with their owner (garbage collector); deleting them here too works without one.
    for item in rt.kube.list(
        c.PLURAL_CONTAINER_CHECKPOINTS, namespace, label_selector=f"{c.LABEL_POD_CHECKPOINT}={name}"
    ):
        rt.kube.delete(c.PLURAL_CONTAINER_CHECKPOINTS, namespace, item["metadata"]["name"], item["metadata"]["uid"])
    return ok
