"""LPM's two admission webhooks, served by the controller (kopf's webhook server; wired in kopf_wiring). Both are
registered with failurePolicy Ignore, so an LPM outage never blocks a pod create or an eviction.

- **lpm-replacement** (mutating, pods CREATE, objectSelector lpm.my.domain/migratable=true): when the owner of
  a pod that a migration released (`podmigration.handover`) creates its new pod, the webhook turns that create
  into the migration's restore target (`restore.build_handover_pod`). A dry-run probe pod is only marked, so the
  migration can prove the webhook is called before it releases anything.
- **lpm-eviction** (validating, pods/eviction CREATE): the eviction of an opted-in pod (`kubectl drain`, the
  eviction API) is answered 429 (retry later) and a PodMigration to a node the drain's rules pick is started;
  kubectl drain retries, and the eviction goes through once the source is gone. Pods that have not opted in, or
  whose migration failed, are evicted as usual.

The decisions here are pure; the kopf handlers feed them what they read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lpm.api import constants as c
from lpm.api.codec import encode
from lpm.api.models import MigrationPhase, PodMigration, PodMigrationSpec
from lpm.api.names import child_name
from lpm.app import clock
from lpm.controller.podmigration.handover import controller_ref, keeps_name, opted_in, plan_handover, released_by
from lpm.controller.podmigration.restore import build_handover_pod

LABEL_EVICTION: str = f"{c.GROUP}/eviction"
# For this long after an eviction's migration moved a pod that kept its name, an eviction of that name (kubectl
# drain retries every 5 s) is answered "gone" when the pod now runs on a node that is not being drained.
MOVED_ANSWER_SECONDS = 120.0


def merge_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """What turns `old` into `new` as a merge patch: changed values, None for removed keys (nested maps by key,
    lists whole)."""
    out: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        out[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            inner = merge_diff(before, value)
            if inner:
                out[key] = inner
        elif value != before or key not in old:
            out[key] = value
    return out


# ------------------------------------------------------------------------------------ lpm-replacement


def probe_mark(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The patch that marks a migration's dry-run probe pod, or None when this is not one."""
    probe = ((pod.get("metadata") or {}).get("annotations") or {}).get(c.ANNOTATION_WEBHOOK_PROBE)
    if not probe:
        return None
    return {"metadata": {"annotations": {c.ANNOTATION_WEBHOOK_SEEN: probe}}}


# Phases in which a migration's released source may still need its owner's replacement. Rolling back too: the
# owner may create it after the rollback began and before the source is given back; made a restore target, it
# only waits in lpm-runc (the rollback aborted the restore) until the owner, with its source back, scales it away;
# left alone, it would start empty.
HANDOVER_PHASES = frozenset(
    {
        MigrationPhase.PREPARING,
        MigrationPhase.FREEZING,
        MigrationPhase.CHECKPOINTING,
        MigrationPhase.TRANSFERRING,
        MigrationPhase.RESTORING,
        MigrationPhase.ROLLING_BACK,
    }
)


def waiting_for(pod: Mapping[str, Any], migrations: Sequence[PodMigration]) -> list[PodMigration]:
    """Migrations that may have released one of this pod's owner's pods and have no replacement yet, oldest
    first. The first whose source is released and whose replacement does not exist gets this pod."""
    ref = controller_ref(pod)
    if ref is None:
        return []
    found = [
        m
        for m in migrations
        if m.status.phase in HANDOVER_PHASES
        and m.status.handover is not None
        and m.status.handover.uid == ref.get("uid")
        and m.status.restored_pod_name
        and not m.metadata.get("deletionTimestamp")
    ]
    return sorted(found, key=lambda m: (str(m.metadata.get("creationTimestamp")), str(m.metadata.get("name"))))


def replacement(incoming: Mapping[str, Any], migration: PodMigration, source: Mapping[str, Any] | None) -> dict | None:
    """The owner's new pod as the restore target of `migration` (whose source is `source`, None once gone), or
    None when it cannot be: the source is not that migration's pod any more, has not been released yet (the owner
    made this pod for another reason, e.g. another migration's release or a scale-up), or the owner's template
    has other containers. A StatefulSet's pod keeps its name: its owner re-creates it once the migration deleted
    the source (Restoring), and only that pod, by that name, becomes the restore target."""
    st = migration.status
    if keeps_name(st.handover):
        if (incoming.get("metadata") or {}).get("name") != st.restored_pod_name:
            return None
        if migration.status.phase is not MigrationPhase.RESTORING:
            return None
        if source is not None and (source.get("metadata") or {}).get("uid") == st.pod_uid:
            return None  # not deleted yet (the owner cannot have made a pod of this name)
        # The source is gone: what the restored pod records of it comes from the migration. Its containers are
        # the StatefulSet's template, as the source's were: there is nothing left to compare them with.
        namespace = (incoming.get("metadata") or {}).get("namespace")
        gone = {
            "metadata": {"name": migration.spec.pod_name, "namespace": namespace},
            "spec": {"nodeName": st.source_node},
        }
        return _restore_target(incoming, migration, gone)
    if source is None or (source.get("metadata") or {}).get("uid") != st.pod_uid:
        return None
    if released_by(source, str(migration.metadata.get("uid"))) is None:
        return None
    names = [ctr.get("name") for ctr in (incoming.get("spec") or {}).get("containers") or []]
    if names != [ctr.get("name") for ctr in (source.get("spec") or {}).get("containers") or []]:
        return None
    return _restore_target(incoming, migration, source)


def _restore_target(incoming: Mapping[str, Any], migration: PodMigration, source: Mapping[str, Any]) -> dict:
    st = migration.status
    return build_handover_pod(
        incoming,
        source,
        name=st.restored_pod_name or "",
        target_node=migration.spec.target_node,
        migration_name=str(migration.metadata.get("name")),
        migration_uid=str(migration.metadata.get("uid")),
        pod_checkpoint_name=st.pod_checkpoint_name or "",
        checkpoint_id=st.checkpoint_id or "",
    )


# --------------------------------------------------------------------------------------- lpm-eviction


@dataclass(frozen=True)
class Verdict:
    """allow: evict as usual. wait: answer 429 with `message`. migrate: create `migration`, then answer 429.
    moved: answer 404, the evicted pod is gone (its name lives on in the pod it moved to)."""

    action: str
    message: str = ""
    migration: Mapping[str, Any] | None = None


def leaving(migrations: Sequence[PodMigration], node: str) -> int:
    """Unfinished migrations away from `node`: by their status once validated, and before that by the drain label
    the eviction webhook and `kubectl lpm drain` give them (a migration just created has no status yet)."""
    return sum(
        1
        for m in migrations
        if not m.status.phase.terminal
        and (m.status.source_node == node or (m.metadata.get("labels") or {}).get(c.LABEL_DRAIN) == node)
    )


def eviction_migration_name(pod_name: str, pod_uid: str) -> str:
    """One migration per evicted pod, whichever replica of the webhook answers and however often drain retries."""
    return child_name(f"evict-{pod_name}", hashlib.sha256(pod_uid.encode()).hexdigest()[:5])


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector against labels (an empty selector matches everything, a missing one nothing)."""
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def budget_problem(
    pod: Mapping[str, Any], budgets: Sequence[Mapping[str, Any]], migrating: Sequence[Mapping[str, Any]]
) -> str | None:
    """Why a PodDisruptionBudget forbids moving `pod` now, or None. A migration freezes its source for a moment,
    so it spends one disruption of every budget that selects the pod, for as long as it runs: `migrating` are the
    namespace's pods with an unfinished migration (they count against the budgets that select them)."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    for pdb in budgets:
        selector = (pdb.get("spec") or {}).get("selector")
        if not selector_matches(selector, labels):
            continue
        allowed = int((pdb.get("status") or {}).get("disruptionsAllowed") or 0)
        busy = sum(1 for p in migrating if selector_matches(selector, (p.get("metadata") or {}).get("labels") or {}))
        if allowed - busy < 1:
            name = (pdb.get("metadata") or {}).get("name")
            return (
                f"PodDisruptionBudget {name} allows {allowed} disruption(s) now and {busy} pod(s) it covers are "
                "being migrated"
            )
    return None


def judge_eviction(
    pod: Mapping[str, Any] | None,
    migrations: Sequence[PodMigration],
    leaving_node: int,
    max_per_node: int,
    target: str | None,
    target_problem: str,
    budget: str | None = None,
    node_cordoned: bool = False,
    now: datetime | None = None,
) -> Verdict:
    """What to answer to the eviction of `pod`: `migrations` are this namespace's PodMigrations; `leaving_node`
    counts unfinished migrations away from the pod's node; `target` is where the drain's rules would send it (or
    None, and `target_problem` says why there is no such node); `budget` is why a PodDisruptionBudget forbids a
    disruption now (`budget_problem`); `node_cordoned`: the pod's node is unschedulable (being drained).

    kubectl drain retries an eviction by name, without the pod's UID. A pod that kept its name (a StatefulSet's)
    is, at the next retry, its own replacement: while it is restored the answer is 429, and once an eviction's
    migration moved it off a node being drained to one that is not, 404 (the evicted pod is gone) ends that
    drain's wait instead of starting the move again."""
    if pod is None or not opted_in(pod):
        return Verdict("allow")
    meta = pod.get("metadata") or {}
    name, uid = str(meta.get("name")), str(meta.get("uid"))
    made_by = (meta.get("annotations") or {}).get(c.ANNOTATION_MIGRATION_UID)
    maker = next((m for m in migrations if made_by and m.metadata.get("uid") == made_by), None)
    if maker is not None and not maker.status.phase.terminal:
        return Verdict(
            "wait",
            f"pod {name} is being restored by PodMigration {maker.metadata.get('name')} "
            f"({maker.status.phase.value}); evict it once that is done",
        )
    since = clock.seconds_between(maker.status.completion_time, now) if maker is not None and now else None
    if (
        maker is not None
        and maker.status.phase is MigrationPhase.COMPLETED
        and (maker.metadata.get("labels") or {}).get(LABEL_EVICTION) == "true"
        and not node_cordoned
        and since is not None
        and since < MOVED_ANSWER_SECONDS
    ):
        drained = (maker.metadata.get("labels") or {}).get(c.LABEL_DRAIN) or maker.status.source_node
        return Verdict(
            "moved",
            f"pod {name} was live-migrated off node {drained} by PodMigration {maker.metadata.get('name')}; the pod "
            f"of that name now runs on {(pod.get('spec') or {}).get('nodeName')}, which is not being drained",
        )
    if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") != "Running":
        return Verdict("allow")
    mine = [m for m in migrations if m.spec.pod_name == name]
    for m in mine:
        if not m.status.phase.terminal and (m.status.pod_uid in (None, uid)):
            return Verdict(
                "wait",
                f"LPM is migrating pod {name} to {m.spec.target_node} (PodMigration {m.metadata.get('name')}, "
                f"{m.status.phase.value}); the eviction completes once the source is gone",
            )
    ours = eviction_migration_name(name, uid)
    if any(
        m.status.phase is MigrationPhase.FAILED and (m.status.pod_uid == uid or m.metadata.get("name") == ours)
        for m in mine
    ):
        # A migration of this very pod was tried and failed (in validation its pod UID is not recorded, but the
        # eviction's own migration is named after it): the drain must still finish.
        return Verdict("allow")
    problem = plan_handover(pod, "")
    if isinstance(problem, tuple):
        return Verdict("allow")  # e.g. a DaemonSet's pod: evicted as usual (the PodMigration would say why)
    if target is None:
        return Verdict("wait", f"LPM cannot move pod {name}: {target_problem}")
    if budget is not None:
        return Verdict("wait", f"pod {name} moves once its budget allows: {budget}")
    if leaving_node >= max_per_node:
        return Verdict(
            "wait",
            f"{leaving_node} migrations are leaving node {(pod.get('spec') or {}).get('nodeName')} already (at most "
            f"{max_per_node}); pod {name} moves after them",
        )
    body = encode(PodMigration(spec=PodMigrationSpec(pod_name=name, target_node=target)))
    body["metadata"] = {
        "name": eviction_migration_name(name, uid),
        "namespace": meta.get("namespace"),
        "labels": {LABEL_EVICTION: "true", c.LABEL_DRAIN: str((pod.get("spec") or {}).get("nodeName") or "")},
        "annotations": {c.ANNOTATION_SOURCE_POD: f"{meta.get('namespace')}/{name}"},
    }
    return Verdict(
        "migrate",
        f"LPM live-migrates pod {name} to {target} instead of evicting it (PodMigration "
        f"{body['metadata']['name']}); the eviction completes once the source is gone",
        body,
    )
