"""ContainerCheckpoint shell: read the pod and the content; run `decide`; write one status."""

from __future__ import annotations

from typing import Any

from lpm.api import constants as c
from lpm.api.codec import decode
from lpm.api.models import ContainerCheckpoint, ContainerCheckpointContent, PodCheckpoint
from lpm.api.views import PodView
from lpm.controller.containercheckpoint.decide import Observed, container_content_name, decide, decide_finalize
from lpm.controller.cycle import Runtime, read_owner, reconcile_object
from lpm.controller.effects import Effect

PLURAL = c.PLURAL_CONTAINER_CHECKPOINTS


def observe(rt: Runtime, obj: dict[str, Any]) -> Observed:
    cc = decode(ContainerCheckpoint, obj)
    ns, name, uid = (str(cc.metadata.get(k)) for k in ("namespace", "name", "uid"))
    raw_pod = rt.kube.get("pods", ns, cc.spec.pod_name)
    raw_content = rt.kube.get(c.PLURAL_CONTAINER_CHECKPOINT_CONTENTS, None, container_content_name(ns, name, uid))
    owner_name, owner = read_owner(rt, cc.metadata, PodCheckpoint)
    return Observed(
        container_checkpoint=cc,
        now=rt.now(),
        pod=PodView.from_api(raw_pod) if raw_pod else None,
        content=decode(ContainerCheckpointContent, raw_content) if raw_content else None,
        owner_name=owner_name,
        owner=owner,
    )


def reconcile(rt: Runtime, namespace: str, name: str) -> None:
    reconcile_object(rt, PLURAL, namespace, name, ContainerCheckpoint, observe, decide)


def finalize(rt: Runtime, namespace: str, name: str) -> bool:
    obj = rt.kube.get(PLURAL, namespace, name)
    if obj is None:
        return True
    ok = True
    for effect in decide_finalize(decode(ContainerCheckpoint, obj)):
        assert isinstance(effect, Effect)
        out = rt.execute(effect)
        ok = ok and (out.ok or not out.retryable)
    return ok
