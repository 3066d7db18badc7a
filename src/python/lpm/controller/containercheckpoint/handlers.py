"""ContainerCheckpoint shell: what a cycle reads (the pod, the content, the owner), and the kind's
registration."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from lpm.api import constants as c
from lpm.api.codec import decode
from lpm.api.models import ContainerCheckpoint, ContainerCheckpointContent, PodCheckpoint
from lpm.api.views import PodView
from lpm.controller.containercheckpoint.decide import Observed, container_content_name, decide, decide_finalize
from lpm.controller.reconciler import Reader, Reconciler, read_owner

PLURAL = c.PLURAL_CONTAINER_CHECKPOINTS


def observe(read: Reader, obj: dict[str, Any], now: datetime) -> Observed:
    cc = decode(ContainerCheckpoint, obj)
    ns, name, uid = (str(cc.metadata.get(k)) for k in ("namespace", "name", "uid"))
    raw_pod = read.get("pods", ns, cc.spec.pod_name)
    raw_content = read.get(c.PLURAL_CONTAINER_CHECKPOINT_CONTENTS, None, container_content_name(ns, name, uid))
    owner_name, owner = read_owner(read, cc.metadata, PodCheckpoint)
    return Observed(
        container_checkpoint=cc,
        now=now,
        pod=PodView.from_api(raw_pod) if raw_pod else None,
        content=decode(ContainerCheckpointContent, raw_content) if raw_content else None,
        owner_name=owner_name,
        owner=owner,
    )


CONTAINERCHECKPOINTS: Reconciler[Observed] = Reconciler(
    plural=PLURAL, model=ContainerCheckpoint, observe=observe, decide=decide, finalize=decide_finalize
)
