"""Deleting an object while one of its kopf timers is running: the object goes once the tick returns, not a minute
later. (kopf keeps its finalizer until the object's timers have exited, and re-checks a timer still running
after `settings.background.cancellation_polling`, 60 s by default. A sync tick cannot exit at once: it runs in
a worker thread. CI once waited out those 60 s deleting a PodCheckpoint whose retention timer was running.)

The kopf wiring runs in this process against the real API server, with a runtime whose ticks are slowed on
purpose (the fault injected: a tick that takes 3 s, as a slow agent or API server makes one)."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from integration.controller import harness

from lpm.controller import kopf_wiring
from lpm.controller.agents import TLS, Agents
from lpm.controller.kube import Kube
from lpm.controller.runtime import Runtime

TICK_SECONDS = 3.0


@dataclass
class SlowTicks(Runtime):
    """The real runtime's doors, with each timer tick held for TICK_SECONDS and cleanup done at once."""

    in_tick: threading.Event = field(default_factory=threading.Event)
    ticks: int = 0

    def reconcile(self, rec: Any, namespace: str, name: str) -> None:
        if sys._getframe(1).f_code.co_name != "tick":  # a watch event's cycle: nothing to do here
            return
        self.ticks += 1
        self.in_tick.set()
        time.sleep(TICK_SECONDS)
        self.in_tick.clear()

    def finalize(self, rec: Any, namespace: str, name: str) -> bool:
        return True


def test_an_object_deleted_during_a_timer_tick_goes_once_the_tick_returns(api, ns):
    kube = Kube(api)
    rt = SlowTicks(kube=kube, agents=Agents(lambda node: [], "lpm-system", TLS(insecure=True)))
    registry = kopf_wiring.build_registry(rt, resync_seconds=0.5, workers=4, peering="lpm-test-deletion")
    stop, ready = threading.Event(), threading.Event()
    operator = threading.Thread(
        target=kopf_wiring._run_kopf,
        args=(registry, ns, True, "lpm-test-deletion", 0, None, stop, ready),
        daemon=True,
    )
    operator.start()
    try:
        assert ready.wait(30), "kopf did not start"
        harness.make_pod(api, ns, "web", "node-a")
        harness.create_migration(api, ns, "m", "web", "node-b")
        harness.wait(
            lambda: "lpm.my.domain/cleanup"
            in (harness.get_cr(api, ns, "podmigrations", "m") or {}).get("metadata", {}).get("finalizers", []),
            "kopf's finalizer on the migration",
        )
        harness.wait(lambda: rt.ticks >= 2 and rt.in_tick.is_set(), "a resync tick in flight")
        started = time.monotonic()
        harness.custom(api).delete_namespaced_custom_object("lpm.my.domain", "v1", ns, "podmigrations", "m")
        harness.wait(lambda: harness.get_cr(api, ns, "podmigrations", "m") is None, "the migration gone", timeout=90)
        took = time.monotonic() - started
        # The tick holds it at most TICK_SECONDS; kopf's default would have held it 60 s.
        assert took < TICK_SECONDS + 5, f"the deletion took {took:.1f} s"
    finally:
        stop.set()
        operator.join(30)
