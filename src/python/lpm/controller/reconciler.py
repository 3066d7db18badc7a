"""The reconciler kit: what a kind registers (`Reconciler`), and the one cycle every kind runs.

A cycle reads the object, `observe`s the world through a `Reader`, runs the kind's pure decider to a fixed
point (executing the effects it asks for and feeding their outcomes back), then applies its one status patch
and its events. A deletion runs the kind's finalizer decider through the same fixed point. Nothing here knows
Kubernetes clients, agents or kopf: `Runtime` hands the real ones in, the property tests a simulated cluster.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from prometheus_client import Counter as PromCounter

from lpm.api.codec import decode, encode
from lpm.api.models import Resource
from lpm.api.views import controller_owner, owner_if_same
from lpm.controller.effects import Action, Effect, Outcome, effects_of, events_of, holds_of, status_of

log = logging.getLogger(__name__)
CYCLES = PromCounter("lpm_controller_reconcile_total", "Reconcile cycles", ["kind", "result"])
MAX_PASSES = 8


class Reader(Protocol):
    """What `observe` may do: read objects (API JSON, None when absent). Nothing else."""

    def get(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None: ...

    def list(self, plural: str, namespace: str | None, label_selector: str = "") -> list[dict[str, Any]]: ...


class Cluster(Reader, Protocol):
    """A `Reader` that also takes a cycle's result: the status (guarded by resourceVersion) and events."""

    def replace_status(self, plural: str, obj: Mapping[str, Any], status: Mapping[str, Any]) -> bool: ...

    def emit_event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None: ...


class Observation(Protocol):
    """A kind's `Observed`: a frozen dataclass with the outcomes known so far (and optionally `recorded_at`)."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    @property
    def outcomes(self) -> Mapping[str, Outcome]: ...


ObsT = TypeVar("ObsT", bound=Observation)
Execute = Callable[[Effect], Outcome]
Now = Callable[[], datetime]


@dataclass(frozen=True)
class Reconciler(Generic[ObsT]):
    """One kind: its resource, how its world is read, and its two pure deciders (a cycle's next step, and what
    its deletion must undo first). `on_written(old status, new status)` runs after a status write landed."""

    plural: str
    model: type[Resource]
    observe: Callable[[Reader, dict[str, Any], datetime], ObsT]
    decide: Callable[[ObsT], list[Action]]
    finalize: Callable[[ObsT], list[Action]]
    on_written: Callable[[Any, Any], None] | None = None

    @property
    def kind(self) -> str:
        return self.model.KIND


def _fixed_point(
    decide: Callable[[ObsT], list[Action]], observed: ObsT, execute: Execute, now: Now | None
) -> tuple[list[Action], bool]:
    outcomes: dict[str, Outcome] = {}
    actions: list[Action] = []
    stamp = now if "recorded_at" in observed.__dataclass_fields__ else None
    for _ in range(MAX_PASSES):
        changes: dict[str, Any] = {"outcomes": dict(outcomes)}
        if stamp is not None:
            changes["recorded_at"] = stamp()
        actions = decide(dataclasses.replace(observed, **changes))
        new = [e for e in effects_of(actions) if e.key not in outcomes]
        if not new:
            return actions, True
        for effect in new:
            outcomes[effect.key] = execute(effect)
            log.debug("effect %s -> %s", effect.key, outcomes[effect.key])
    return actions, False


def to_fixed_point(
    decide: Callable[[ObsT], list[Action]], observed: ObsT, execute: Execute, now: Now | None = None
) -> list[Action]:
    """Call `decide` until it asks for no effect it has no outcome for; return its last answer.

    With `now`, and an observation that has a `recorded_at` field, each pass gets the time it runs at there:
    the time to *record* phase changes with, so a conversion that took seconds ends its phase seconds later.
    Decisions keep the cycle's one `now`: requests built from it (a freeze's auto-thaw deadline) keep the same
    key in every pass, so no effect runs twice."""
    return _fixed_point(decide, observed, execute, now)[0]


def reconcile_once(
    cluster: Cluster, execute: Execute, now: Now, rec: Reconciler[Any], namespace: str, name: str
) -> None:
    """One level-triggered cycle of one object: read it, leave it alone once finished or being deleted (the
    finalizer handles that), decide to a fixed point, apply."""
    obj = cluster.get(rec.plural, namespace, name)
    if obj is None:
        return
    current: Any = decode(rec.model, obj)
    if current.status.phase.terminal or current.metadata.get("deletionTimestamp"):
        return
    actions = to_fixed_point(rec.decide, rec.observe(cluster, obj, now()), execute, now)
    patch = status_of(actions)
    if apply(cluster, rec.plural, obj, actions) and patch is not None and rec.on_written is not None:
        rec.on_written(current.status, patch.status)


def finalize_once(
    cluster: Cluster, execute: Execute, now: Now, rec: Reconciler[Any], namespace: str, name: str
) -> bool:
    """Undo what a deleted object left behind, through its finalizer decider run to a fixed point. True when
    done (the finalizer may be removed); False while the decider holds it or its effects did not settle."""
    obj = cluster.get(rec.plural, namespace, name)
    if obj is None:
        return True
    actions, settled = _fixed_point(rec.finalize, rec.observe(cluster, obj, now()), execute, None)
    holds = holds_of(actions)
    for hold in holds:
        log.info("%s %s/%s: cleanup waits: %s", rec.kind, namespace, name, hold.why)
    return settled and not holds


# What a cycle's decision may rest on, besides the status: if none of it changed, a conflict came from metadata
# nobody decides on (kopf's finalizer and annotations, written while the first cycles run).
_DECIDED_ON = ("uid", "generation", "deletionTimestamp", "labels", "ownerReferences")


def _moved_on_by_metadata_only(cluster: Cluster, plural: str, obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The object as it is now, if only metadata no decision reads changed since `obj` was read; else None."""
    meta = obj["metadata"]
    fresh = cluster.get(plural, meta.get("namespace"), meta["name"])
    if fresh is None or fresh.get("status") != obj.get("status"):
        return None
    if any(fresh["metadata"].get(k) != meta.get(k) for k in _DECIDED_ON):
        return None
    return fresh


def apply(cluster: Cluster, plural: str, obj: Mapping[str, Any], actions: list[Action]) -> bool:
    """Write the status (one PUT, guarded by resourceVersion) and, if it landed, the events. A conflict caused by
    metadata alone is written again over the new resourceVersion: the decision stands, and repeating the cycle
    would repeat its effects (a migration's Freeze, while its dump runs)."""
    patch = status_of(actions)
    if patch is not None:
        status = encode(patch.status)
        if not cluster.replace_status(plural, obj, status):
            fresh = _moved_on_by_metadata_only(cluster, plural, obj)
            if fresh is None or not cluster.replace_status(plural, fresh, status):
                CYCLES.labels(plural, "conflict").inc()
                return False
    for ev in events_of(actions):
        cluster.emit_event(obj, ev.type, ev.reason, ev.message)
    CYCLES.labels(plural, "ok").inc()
    return True


ModelT = TypeVar("ModelT", bound=Resource)


def read_owner(read: Reader, metadata: Mapping[str, Any], model: type[ModelT]) -> tuple[str | None, ModelT | None]:
    """The object of `model`'s kind that controls this one: (its name, the object while it still exists with the
    UID the reference names); (None, None) when no such owner is named."""
    ref = controller_owner(metadata, model.KIND)
    if ref is None:
        return None, None
    raw = owner_if_same(read.get(model.PLURAL, str(metadata.get("namespace")), ref[0]), ref[1])
    return ref[0], decode(model, dict(raw)) if raw else None
