"""Which pods a drain live-migrates, where to, and which it leaves alone (pure; no I/O). Used by
`kubectl lpm drain NODE`, `kubectl lpm migrate POD` without --to, and the eviction webhook (`kubectl drain`).

A node drained for maintenance holds four kinds of pods:
- pods LPM can move (Running, and bare or owned by a ReplicaSet, Job or StatefulSet that opted in with label
  lpm.my.domain/migratable=true): each gets a PodMigration to a target node;
- pods with nothing to move: DaemonSet pods (their DaemonSet runs one on every node), mirror pods of static
  manifests (the kubelet owns them), finished or terminating pods;
- pods their owner moves: owned pods that have not opted in, or that share their node's network, PID or IPC
  namespace, which LPM leaves to `kubectl drain`: it evicts them and the owner starts them elsewhere, empty;
- pods that should move but cannot: not Running yet, bare pods sharing their node's namespaces, or no node can
  take them. These fail the drain.

Targets: `--to NODE`, or else the Ready, schedulable nodes (not the drained one) whose NoSchedule/NoExecute
taints the pod tolerates, spread round-robin by how many pods this drain already sent to each.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lpm.api import constants as c
from lpm.api.views import NodeView, PodView

# Owner kinds whose pods LPM hands over (lpm.controller.podmigration.handover).
HANDED_OVER_KINDS = frozenset({"ReplicaSet", "Job", "StatefulSet"})

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
_BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str

    @classmethod
    def all_from_api(cls, node: Mapping[str, Any]) -> tuple[Taint, ...]:
        return tuple(
            cls(str(t.get("key", "")), str(t.get("value") or ""), str(t.get("effect", "")))
            for t in (node.get("spec") or {}).get("taints") or []
        )


def tolerates(tolerations: Sequence[Mapping[str, Any]], taint: Taint) -> bool:
    """The scheduler's rule (k8s.io/api/core/v1 Toleration.ToleratesTaint)."""
    for tol in tolerations:
        effect = tol.get("effect") or ""
        if effect and effect != taint.effect:
            continue
        key = tol.get("key") or ""
        operator = tol.get("operator") or "Equal"
        if operator == "Exists":
            if not key or key == taint.key:
                return True
        elif key == taint.key and (tol.get("value") or "") == taint.value:
            return True
    return False


@dataclass(frozen=True)
class Move:
    pod: PodView
    target: str


@dataclass(frozen=True)
class Left:
    pod: PodView
    why: str


@dataclass
class DrainPlan:
    node: str
    moves: list[Move] = field(default_factory=list)
    skipped: list[Left] = field(default_factory=list)  # nothing to move
    owned: list[Left] = field(default_factory=list)  # their owner moves them (kubectl drain)
    blocked: list[Left] = field(default_factory=list)  # should move, cannot: the drain fails

    @property
    def ok(self) -> bool:
        return not self.blocked


def plan_drain(
    node: str,
    pods: Sequence[PodView],
    nodes: Sequence[NodeView],
    taints: Mapping[str, Sequence[Taint]],
    to: str | None = None,
) -> DrainPlan:
    """Sort the pods bound to `node` into moves, skips, owner-moved and blocked (see the module docstring)."""
    plan = DrainPlan(node)
    by_name = {n.name: n for n in nodes}
    explicit_problem = _target_problem(by_name.get(to), to, node) if to else None
    candidates = sorted(n.name for n in nodes if _target_problem(n, n.name, node) is None)
    sent: Counter[str] = Counter()
    for pod in sorted(pods, key=lambda p: (p.namespace, p.name)):
        if pod.node_name != node:
            continue
        if pod.controller and pod.controller.startswith("DaemonSet/"):
            plan.skipped.append(Left(pod, f"managed by {pod.controller}, which runs a copy on every node"))
        elif MIRROR_ANNOTATION in pod.annotations:
            plan.skipped.append(Left(pod, "mirror pod of a static manifest (the kubelet owns it)"))
        elif pod.deleting or pod.phase in ("Succeeded", "Failed"):
            plan.skipped.append(Left(pod, "terminating" if pod.deleting else f"{pod.phase}: nothing running"))
        elif pod.controller and not handed_over(pod):
            plan.owned.append(
                Left(pod, f"managed by {pod.controller}: kubectl drain evicts it and its owner starts it elsewhere")
            )
        elif pod.host_namespaces and pod.controller:
            plan.owned.append(
                Left(pod, f"{_shares(pod)}; kubectl drain evicts it and {pod.controller} starts it elsewhere")
            )
        elif pod.host_namespaces:
            plan.blocked.append(Left(pod, f"{_shares(pod)}: it cannot be migrated; delete it or move it by hand"))
        elif not pod.running:
            plan.blocked.append(Left(pod, f"{pod.phase}: only Running pods can be migrated"))
        elif explicit_problem:
            plan.blocked.append(Left(pod, explicit_problem))
        elif to:
            plan.moves.append(Move(pod, to))
        else:
            tolerations = (pod.raw.get("spec") or {}).get("tolerations") or []
            fits = [
                n
                for n in candidates
                if all(t.effect not in _BLOCKING_EFFECTS or tolerates(tolerations, t) for t in taints.get(n, ()))
            ]
            if not fits:
                plan.blocked.append(Left(pod, "no other node is Ready, schedulable and tolerated by the pod"))
                continue
            target = min(fits, key=lambda n: (sent[n], n))
            sent[target] += 1
            plan.moves.append(Move(pod, target))
    return plan


def _shares(pod: PodView) -> str:
    return f"shares its node's namespaces ({', '.join(pod.host_namespaces)})"


def handed_over(pod: PodView) -> bool:
    """An owned pod whose owner hands it over to its restored copy: opted in, and of a kind LPM hands over."""
    kind = (pod.controller or "").split("/", 1)[0]
    return pod.labels.get(c.LABEL_MIGRATABLE) == "true" and kind in HANDED_OVER_KINDS


def _target_problem(node: NodeView | None, name: str | None, source: str) -> str | None:
    if node is None:
        return f"node {name} does not exist"
    if node.name == source:
        return f"node {name} is the node being drained"
    if node.deleting or not node.ready:
        return f"node {name} is not Ready ({node.ready_message})"
    if node.unschedulable:
        return f"node {name} is cordoned"
    return None
