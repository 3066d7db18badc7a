"""One reconcile cycle, shared by the three shells: run a decider to a fixed point, executing the effects it
asks for, then apply its one status patch and its events.

`Runtime` bundles the doors to the world (Kubernetes, agents, the clock) so tests can hand the shells a real
API server and an agent double, and serializes cycles per object so that a watch event and a timer tick
never reconcile the same object at the same time.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol, TypeVar

from prometheus_client import Counter as PromCounter

from lpm.api.codec import decode, encode
from lpm.api.views import controller_owner, owner_if_same
from lpm.app import clock
from lpm.controller.agents import Agents
from lpm.controller.effects import (
    Action,
    AgentCall,
    CreateObject,
    DeleteObject,
    Effect,
    MarkContentReady,
    Outcome,
    effects_of,
    events_of,
    status_of,
)
from lpm.controller.kube import Kube

log = logging.getLogger(__name__)
CYCLES = PromCounter("lpm_controller_reconcile_total", "Reconcile cycles", ["kind", "result"])
MAX_PASSES = 8


class HasOutcomes(Protocol):
    outcomes: Mapping[str, Outcome]


ObsT = TypeVar("ObsT")


class _Kind(Protocol):
    KIND: ClassVar[str]
    PLURAL: ClassVar[str]


ModelT = TypeVar("ModelT", bound=_Kind)


@dataclass
class Runtime:
    kube: Kube
    agents: Agents
    now: Callable[[], datetime] = clock.utcnow
    _locks: dict[tuple[str, str, str], threading.Lock] = field(default_factory=dict)
    _dirty: set[tuple[str, str, str]] = field(default_factory=set)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _seen: dict[tuple[str, str, str], float] = field(default_factory=dict)

    def note_seen(self, key: tuple[str, str, str], ttl: float) -> None:
        """kopf delivered this object to us: this replica is the active one for it (peering)."""
        with self._guard:
            self._seen[key] = time.monotonic() + ttl

    def recently_seen(self, key: tuple[str, str, str]) -> bool:
        with self._guard:
            return self._seen.get(key, 0.0) > time.monotonic()

    def execute(self, effect: Effect) -> Outcome:
        if isinstance(effect, AgentCall):
            return self.agents.call(effect)
        if isinstance(effect, CreateObject):
            return self.kube.create(effect.plural, effect.namespace, effect.body)
        if isinstance(effect, DeleteObject):
            return self.kube.delete(
                effect.plural, effect.namespace, effect.name, effect.uid, effect.grace_period_seconds
            )
        if isinstance(effect, MarkContentReady):
            return self.kube.mark_content_ready(effect.plural, effect.name)
        raise TypeError(f"unknown effect {effect!r}")

    def serialized(self, key: tuple[str, str, str], fn: Callable[[], None]) -> None:
        """Run `fn` unless a cycle for `key` is already running; then that cycle runs once more instead."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
            if not lock.acquire(blocking=False):
                self._dirty.add(key)
                return
        try:
            while True:
                fn()
                with self._guard:
                    if key not in self._dirty:
                        break
                    self._dirty.discard(key)
        finally:
            with self._guard:
                lock.release()
                self._locks.pop(key, None)


def to_fixed_point(
    decide: Callable[[ObsT], list[Action]],
    observed: ObsT,
    execute: Callable[[Effect], Outcome],
    now: Callable[[], datetime] | None = None,
) -> list[Action]:
    """Call `decide` until it asks for no effect it has no outcome for; return its last answer.

    With `now`, and an observation that has a `recorded_at` field, each pass gets the time it runs at there:
    the time to *record* phase changes with, so a conversion that took seconds ends its phase seconds later.
    Decisions keep the cycle's one `now`: requests built from it (a freeze's auto-thaw deadline) keep the same
    key in every pass, so no effect runs twice."""
    outcomes: dict[str, Outcome] = {}
    actions: list[Action] = []
    fields = {f.name for f in dataclasses.fields(observed)}  # type: ignore[arg-type]
    stamp = now if "recorded_at" in fields else None
    for _ in range(MAX_PASSES):
        changes: dict[str, Any] = {"outcomes": dict(outcomes)}
        if stamp is not None:
            changes["recorded_at"] = stamp()
        actions = decide(dataclasses.replace(observed, **changes))  # type: ignore[type-var]
        new = [e for e in effects_of(actions) if e.key not in outcomes]
        if not new:
            return actions
        for effect in new:
            outcomes[effect.key] = execute(effect)
            log.debug("effect %s -> %s", effect.key, outcomes[effect.key])
    return actions


def reconcile_object(
    rt: Runtime,
    plural: str,
    namespace: str,
    name: str,
    model: type,
    observe: Callable[[Runtime, dict[str, Any]], ObsT],
    decide: Callable[[ObsT], list[Action]],
    on_written: Callable[[Any, Any], None] | None = None,
) -> None:
    """One level-triggered cycle of one object, serialized per object: read it, leave it alone once finished or
    being deleted (the finalizer handles that), decide to a fixed point, apply. `on_written(old status, new
    status)` runs after a status write lands (metrics)."""

    def cycle() -> None:
        obj = rt.kube.get(plural, namespace, name)
        if obj is None:
            return
        current: Any = decode(model, obj)
        if current.status.phase.terminal or current.metadata.get("deletionTimestamp"):
            return
        actions = to_fixed_point(decide, observe(rt, obj), rt.execute, rt.now)
        patch = status_of(actions)
        if apply(rt, plural, obj, actions) and patch is not None and on_written is not None:
            on_written(current.status, patch.status)

    rt.serialized((plural, namespace, name), cycle)


def apply(rt: Runtime, plural: str, obj: Mapping[str, Any], actions: list[Action]) -> bool:
    """Write the status (one PUT, guarded by resourceVersion) and, if it landed, the events."""
    patch = status_of(actions)
    if patch is not None:
        if not rt.kube.replace_status(plural, obj, encode(patch.status)):
            CYCLES.labels(plural, "conflict").inc()
            return False
    for ev in events_of(actions):
        rt.kube.emit_event(obj, ev.type, ev.reason, ev.message)
    CYCLES.labels(plural, "ok").inc()
    return True


def read_owner(rt: Runtime, metadata: Mapping[str, Any], model: type[ModelT]) -> tuple[str | None, ModelT | None]:
    """The object of `model`'s kind that controls this one: (its name, the object while it still exists with the
    UID the reference names); (None, None) when no such owner is named."""
    ref = controller_owner(metadata, model.KIND)
    if ref is None:
        return None, None
    raw = owner_if_same(rt.kube.get(model.PLURAL, str(metadata.get("namespace")), ref[0]), ref[1])
    return ref[0], decode(model, dict(raw)) if raw else None
