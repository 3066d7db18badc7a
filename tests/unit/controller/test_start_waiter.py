"""ReplacementStartWaiter: which migrations it waits for, what it asks the target's agent, and that it wakes the
migration once (and only once) the agent says every container of the replacement started. The API and the agent
are stand-ins here; the e2e suite runs it against the real ones (every Live migration there commits through it
or through the kubelet's report)."""

from __future__ import annotations

import threading
from typing import Any

from lpm.api import constants as c
from lpm.controller.effects import GetRestoreState, Outcome
from lpm.controller.restored_pods import ReplacementStartWaiter

NS, NAME, UID, CKPT = "ns", "mig", "mig-uid", "20260101t000000z-abcdef12"


def migration(phase: str = "Checkpointing", engine: str = "Live") -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND_POD_MIGRATION,
        "metadata": {"name": NAME, "namespace": NS, "uid": UID},
        "spec": {"podName": "web", "targetNode": "node-b"},
        "status": {"phase": phase, "engine": engine, "checkpointID": CKPT, "restoredPodName": "web-1"},
    }


def replacement(post_start: bool = False, started: tuple[str, ...] = ()) -> dict[str, Any]:
    containers: list[dict[str, Any]] = [{"name": "app"}, {"name": "side"}]
    if post_start:
        containers[0]["lifecycle"] = {"postStart": {"exec": {"command": ["true"]}}}
    statuses = [{"name": n, "state": {"running": {}}} for n in started]
    return {
        "metadata": {"name": "web-1", "namespace": NS, "uid": "p"},
        "spec": {"containers": containers},
        "status": {"phase": "Running" if started else "Pending", "containerStatuses": statuses},
    }


class World:
    """The API (objects by (plural, name)) and the target's agent (its answers, in order)."""

    def __init__(self, pod: dict[str, Any], answers: list[Outcome]) -> None:
        self.objects = {(c.PLURAL_POD_MIGRATIONS, NAME): migration(), ("pods", "web-1"): pod}
        self.answers = answers
        self.asked: list[GetRestoreState] = []
        self.reconciled: list[tuple[str, str]] = []
        self.done = threading.Event()
        self.kube = self
        self.agents = self

    def get(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.objects.get((plural, name))

    def call(self, effect: GetRestoreState) -> Outcome:
        self.asked.append(effect)
        if not self.answers:
            self.done.set()
            self.objects.pop((c.PLURAL_POD_MIGRATIONS, NAME))  # the migration moved on: the waiter stops
            return Outcome.failure("Gone", "no more answers", retryable=True)
        return self.answers.pop(0)

    def reconcile(self, rec: Any, namespace: str, name: str) -> None:
        self.reconciled.append((namespace, name))
        self.done.set()


def said(**states: bool) -> Outcome:
    return Outcome.success(
        {
            "containers": [
                {"container_name": n, "state": "RESTORE_STATE_RESTORED", "started": s} for n, s in states.items()
            ]
        }
    )


def run(world: World, body: dict[str, Any]) -> ReplacementStartWaiter:
    waiter = ReplacementStartWaiter(world, threading.Event())  # type: ignore[arg-type]
    waiter.offer(body)
    waiter.pool.shutdown(wait=True)
    return waiter


def test_it_wakes_the_migration_once_every_container_started() -> None:
    world = World(replacement(), [said(app=True, side=False), said(app=True, side=True)])
    run(world, migration())
    assert world.reconciled == [(NS, NAME)]
    (first, second) = world.asked
    assert first.node == "node-b" and first.request.wait_for_start and first.request.wait.seconds == 5
    assert (first.request.checkpoint_id, list(first.request.container_names)) == (CKPT, ["app", "side"])


def test_it_stops_when_the_migration_moved_on_without_waking_it() -> None:
    world = World(replacement(), [said(app=False, side=False)])
    run(world, migration())
    assert world.reconciled == [] and len(world.asked) == 2


def test_it_leaves_alone_what_only_the_kubelet_decides_or_what_needs_no_waiting() -> None:
    for pod in (replacement(post_start=True), replacement(started=("app", "side"))):
        world = World(pod, [said(app=True, side=True)])
        run(world, migration())
        assert world.asked == [] and world.reconciled == []
    for body in (migration(engine="Image"), migration(phase="Preparing"), migration(phase="Completed")):
        world = World(replacement(), [said(app=True, side=True)])
        run(world, body)
        assert world.asked == [] and world.reconciled == []


def test_an_aborted_restore_ends_the_wait() -> None:
    world = World(replacement(), [Outcome.success({"aborted": "rolled back", "containers": []})])
    run(world, migration())
    assert world.reconciled == [] and len(world.asked) == 1


def test_one_waiter_per_migration_and_at_most_max_waiters() -> None:
    gate = threading.Event()

    class Slow(World):
        def get(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
            gate.wait(10)  # every waiter holds its slot until the gate opens
            return super().get(plural, namespace, name)

    world = Slow(replacement(), [said(app=True, side=True)])
    waiter = ReplacementStartWaiter(world, threading.Event())  # type: ignore[arg-type]
    waiter.offer(migration())
    waiter.offer(migration())  # the same migration again (its next status write): still one waiter
    for i in range(ReplacementStartWaiter.MAX_WAITERS + 2):
        other = migration()
        other["metadata"]["uid"] = f"other-{i}"
        waiter.offer(other)
    assert len(waiter._active) == ReplacementStartWaiter.MAX_WAITERS
    gate.set()
    waiter.pool.shutdown(wait=True)
    assert not waiter._active
