"""PodCheckpoint shell: what a cycle reads (the pod, the ContainerCheckpoints, the content), and the kind's
registration."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from lpm.api import constants as c
from lpm.api.codec import decode
from lpm.api.models import CheckpointPhase, ContainerCheckpoint, PodCheckpoint, PodCheckpointContent, PodMigration
from lpm.api.views import PodView
from lpm.controller.podcheckpoint.decide import Observed, decide, decide_finalize, pod_content_name
from lpm.controller.reconciler import Reader, Reconciler, read_owner

PLURAL = c.PLURAL_POD_CHECKPOINTS


def observe(read: Reader, obj: dict[str, Any], now: datetime) -> Observed:
    pc = decode(PodCheckpoint, obj)
    ns, name, uid = (str(pc.metadata.get(k)) for k in ("namespace", "name", "uid"))
    deleting = bool(pc.metadata.get("deletionTimestamp"))
    pod = None
    if pc.status.phase is CheckpointPhase.PENDING:
        raw = read.get("pods", ns, pc.spec.pod_name)
        pod = PodView.from_api(raw) if raw else None
    children: dict[str, ContainerCheckpoint | None] = {}
    if pc.status.containers or deleting:
        for item in read.list(c.PLURAL_CONTAINER_CHECKPOINTS, ns, label_selector=f"{c.LABEL_POD_CHECKPOINT}={name}"):
            cc = decode(ContainerCheckpoint, item)
            if any(ref.get("uid") == uid for ref in cc.metadata.get("ownerReferences") or []):
                children[cc.spec.container_name] = cc
    content = None
    ready = [children.get(s.name) for s in pc.status.containers]
    if ready and all(cc is not None and cc.status.phase is CheckpointPhase.READY for cc in ready):
        raw = read.get(c.PLURAL_POD_CHECKPOINT_CONTENTS, None, pod_content_name(ns, name, uid))
        content = decode(PodCheckpointContent, raw) if raw else None
    owner_name, owner = read_owner(read, pc.metadata, PodMigration) if not pc.status.phase.terminal else (None, None)
    return Observed(
        pod_checkpoint=pc,
        now=now,
        pod=pod,
        children=children,
        content=content,
        owner_name=owner_name,
        owner=owner,
    )


PODCHECKPOINTS: Reconciler[Observed] = Reconciler(
    plural=PLURAL, model=PodCheckpoint, observe=observe, decide=decide, finalize=decide_finalize
)
