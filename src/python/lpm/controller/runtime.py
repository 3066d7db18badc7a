"""`Runtime`: the controller's doors to the world (Kubernetes, agents, the clock), handed to the reconciler kit.

Tests hand it a real API server and an agent double. It also serializes cycles per object, so that a watch
event and a timer tick never reconcile the same object at the same time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lpm.app import clock
from lpm.controller.agents import Agents
from lpm.controller.effects import (
    AgentCall,
    CreateObject,
    DeleteObject,
    Effect,
    MarkContentReady,
    Outcome,
    PatchPod,
    ProbeWebhook,
)
from lpm.controller.kube import Kube
from lpm.controller.reconciler import Reconciler, finalize_once, reconcile_once


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
        if isinstance(effect, PatchPod):
            return self.kube.patch_pod(effect.namespace, effect.name, effect.body)
        if isinstance(effect, ProbeWebhook):
            return self.kube.dry_run_create_pod(effect.namespace, effect.body)
        raise TypeError(f"unknown effect {effect!r}")

    def reconcile(self, rec: Reconciler[Any], namespace: str, name: str) -> None:
        """One cycle of the object, unless one is running (then that one runs once more)."""
        self.serialized(
            (rec.plural, namespace, name),
            lambda: reconcile_once(self.kube, self.execute, self.now, rec, namespace, name),
        )

    def finalize(self, rec: Reconciler[Any], namespace: str, name: str) -> bool:
        """The object is being deleted: True once what it left behind is undone (its finalizer may go)."""
        return finalize_once(self.kube, self.execute, self.now, rec, namespace, name)

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
