"""PodMigration shell: what a cycle reads (`observe`), the kind's registration, and the TTL deletion."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from lpm.api import constants as c
from lpm.api.codec import decode
from lpm.api.models import PodCheckpoint, PodMigration
from lpm.api.views import NodeView, PodView
from lpm.controller import metrics
from lpm.controller.podmigration.decide import (
    Observed,
    decide,
    decide_finalize,
    is_active,
    reads_for,
    ttl_remaining,
)
from lpm.controller.podmigration.restore import original_name, pod_checkpoint_name, restored_pod_name
from lpm.controller.reconciler import Reader, Reconciler
from lpm.controller.runtime import Runtime

log = logging.getLogger(__name__)
PLURAL = c.PLURAL_POD_MIGRATIONS


def observe(read: Reader, obj: dict[str, Any], now: datetime) -> Observed:
    m = decode(PodMigration, obj)
    meta = m.metadata
    ns, name, uid = str(meta.get("namespace")), str(meta.get("name")), str(meta.get("uid"))
    reads = reads_for(m.status.phase) | ({"restored_pod"} if meta.get("deletionTimestamp") else set())
    pod = target = pc = restored = None
    older: tuple[str, ...] = ()
    if "source_pod" in reads:
        raw = read.get("pods", ns, m.spec.pod_name)
        pod = PodView.from_api(raw) if raw else None
    if "nodes" in reads:
        raw = read.get("nodes", None, m.spec.target_node)
        target = NodeView.from_api(raw) if raw else None
    if "migrations" in reads:
        mine = (str(meta.get("creationTimestamp")), name)
        older = tuple(
            other["metadata"]["name"]
            for other in read.list(PLURAL, ns)
            if (other.get("spec") or {}).get("podName") == m.spec.pod_name
            and other["metadata"]["uid"] != uid
            and (str(other["metadata"].get("creationTimestamp")), other["metadata"]["name"]) < mine
            and is_active(decode(PodMigration, other))
        )
    if "pod_checkpoint" in reads or meta.get("deletionTimestamp"):
        raw = read.get(c.PLURAL_POD_CHECKPOINTS, ns, m.status.pod_checkpoint_name or pod_checkpoint_name(name))
        pc = decode(PodCheckpoint, raw) if raw else None
    if "restored_pod" in reads:
        # Named as Validating names it (from the original pod's name), for when that status write was lost.
        first_name = (original_name(pod.raw) if pod else None) or m.spec.pod_name
        raw = read.get("pods", ns, m.status.restored_pod_name or restored_pod_name(first_name, uid))
        restored = PodView.from_api(raw) if raw else None
    return Observed(
        migration=m,
        now=now,
        source_pod=pod,
        target_node=target,
        older_active_migrations=older,
        pod_checkpoint=pc,
        restored_pod=restored,
    )


PODMIGRATIONS: Reconciler[Observed] = Reconciler(
    plural=PLURAL,
    model=PodMigration,
    observe=observe,
    decide=decide,
    finalize=decide_finalize,
    on_written=metrics.migration_status_written,
)


def expire(rt: Runtime, obj: dict[str, Any]) -> None:
    """Delete a finished migration whose ttlSecondsAfterFinished has run out (the finalizer then cleans up).
    Judged from the watched object, so waiting costs no API call; the delete is guarded by the UID."""
    m = decode(PodMigration, obj)
    remaining = ttl_remaining(m, rt.now())
    if remaining is None or remaining > 0:
        return
    ns, name = str(m.metadata.get("namespace")), str(m.metadata.get("name"))
    outcome = rt.kube.delete(PLURAL, ns, name, str(m.metadata.get("uid")))
    log.info("PodMigration %s/%s: ttlSecondsAfterFinished ran out, deleted: %s", ns, name, outcome)
