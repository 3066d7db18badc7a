"""The reconciler kit (fixed-point loop, finalizers) and the Runtime's per-object serialization."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

from lpm.api.codec import encode
from lpm.api.models import MigrationPhase, PodMigration, PodMigrationSpec, PodMigrationStatus
from lpm.controller.effects import DeletePod, Outcome, PatchStatus, ProbeAgent
from lpm.controller.podmigration.handlers import PODMIGRATIONS
from lpm.controller.reconciler import finalize_once, to_fixed_point
from lpm.controller.runtime import Runtime

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Obs:
    outcomes: dict = field(default_factory=dict)


def test_fixed_point_runs_each_effect_once_and_feeds_outcomes_back():
    calls = []

    def decide(obs):
        first, second = ProbeAgent("a"), DeletePod(namespace="n", name="p")
        if first.key not in obs.outcomes:
            return [first]
        if second.key not in obs.outcomes:
            return [first, second]
        return [PatchStatus("done")]

    def execute(effect):
        calls.append(effect.key)
        return Outcome.success()

    assert to_fixed_point(decide, Obs(), execute) == [PatchStatus("done")]
    assert len(calls) == 2


def test_serialized_cycles_never_overlap_and_rerun_when_poked():
    rt = Runtime(kube=None, agents=None)
    running, overlaps, runs = [0], [0], [0]
    gate = threading.Event()

    def cycle():
        running[0] += 1
        overlaps[0] = max(overlaps[0], running[0])
        runs[0] += 1
        gate.wait(0.2)
        running[0] -= 1

    threads = [threading.Thread(target=rt.serialized, args=(("k", "n", "x"), cycle)) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps[0] == 1
    assert 2 <= runs[0] <= 5


class FakeCluster:
    """A `Cluster` over a dict: just enough for the kit's finalizer loop."""

    def __init__(self, *objects):
        self.objects = {(o["_plural"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objects}

    def get(self, plural, namespace, name):
        obj = self.objects.get((plural, namespace, name))
        return {k: v for k, v in obj.items() if k != "_plural"} if obj else None

    def list(self, plural, namespace, label_selector=""):
        return [self.get(*key) for key in self.objects if key[0] == plural and key[1] == namespace]

    def replace_status(self, plural, obj, status):
        raise AssertionError("a finalizer writes no status")

    def emit_event(self, obj, type_, reason, message):
        raise AssertionError("a finalizer emits no event")


def test_a_deleted_migration_keeps_its_finalizer_until_its_frozen_source_is_thawed():
    meta = {"name": "mig", "namespace": "ns", "uid": "m1", "deletionTimestamp": "2026-01-01T00:00:09Z"}
    status = PodMigrationStatus(
        phase=MigrationPhase.ROLLING_BACK, pod_uid="p1", source_node="node-a", checkpoint_id="ck", source_frozen=True
    )
    body = encode(PodMigration(spec=PodMigrationSpec(pod_name="web", target_node="node-b"), status=status))
    migration = dict(body, metadata=meta, _plural="podmigrations")
    pod = {
        "_plural": "pods",
        "metadata": {"name": "web", "namespace": "ns", "uid": "p1"},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app"}]},
        "status": {"phase": "Running"},
    }
    cluster = FakeCluster(migration, pod)
    calls = []

    def execute(answer):
        def run(effect):
            calls.append(type(effect).__name__)
            return answer(effect)

        return run

    down = execute(lambda e: Outcome.failure("AgentUnavailable", "down", retryable=True))
    assert finalize_once(cluster, down, lambda: NOW, PODMIGRATIONS, "ns", "mig") is False
    assert calls == ["ThawSource"], "asked once per call, whatever the number of passes"
    thawed = {"containers": [{"container_name": "app", "state": "FREEZE_STATE_THAWED"}]}
    up = execute(lambda e: Outcome.success(thawed))
    assert finalize_once(cluster, up, lambda: NOW, PODMIGRATIONS, "ns", "mig") is True
    assert finalize_once(cluster, up, lambda: NOW, PODMIGRATIONS, "ns", "gone") is True


class VersionedCluster:
    """One object behind resourceVersion-guarded status writes, with writes of other parties in between."""

    def __init__(self, obj):
        self.obj, self.writes = obj, []

    def get(self, plural, namespace, name):
        return __import__("copy").deepcopy(self.obj)

    def touch(self, **meta):
        """Someone else writes the object: its metadata (kopf's finalizer, say) or its status."""
        status = meta.pop("status", None)
        self.obj["metadata"].update(meta)
        if status is not None:
            self.obj["status"] = status
        self.obj["metadata"]["resourceVersion"] = str(int(self.obj["metadata"]["resourceVersion"]) + 1)

    def replace_status(self, plural, obj, status):
        if obj["metadata"]["resourceVersion"] != self.obj["metadata"]["resourceVersion"]:
            return False
        self.writes.append(status)
        self.touch(status=status)
        return True

    def emit_event(self, obj, type_, reason, message):
        pass


def _versioned():
    return {
        "metadata": {"name": "m", "namespace": "n", "uid": "u1", "generation": 1, "resourceVersion": "7"},
        "spec": {},
        "status": {"phase": "Freezing"},
    }


def test_a_status_write_that_conflicts_with_metadata_alone_is_written_again_and_one_that_lost_a_race_is_not():
    from lpm.controller.reconciler import apply

    checkpointing = [PatchStatus(PodMigrationStatus(phase=MigrationPhase.CHECKPOINTING))]
    cluster = VersionedCluster(_versioned())
    read = cluster.get("podmigrations", "n", "m")
    cluster.touch(finalizers=["lpm.my.domain/cleanup"], annotations={"kopf": "x"})  # kopf, while the cycle ran
    assert apply(cluster, "podmigrations", read, checkpointing)
    assert cluster.obj["status"]["phase"] == "Checkpointing" and cluster.obj["metadata"]["finalizers"]

    # What a decision rests on changed: the status (another writer), the spec (generation), a deletion.
    for change in (
        {"status": {"phase": "RollingBack"}},
        {"generation": 2},
        {"deletionTimestamp": "2026-01-01T00:00:00Z"},
        {"labels": {"lpm.my.domain/migratable": "true"}},
    ):
        cluster = VersionedCluster(_versioned())
        read = cluster.get("podmigrations", "n", "m")
        cluster.touch(**change)
        assert not apply(cluster, "podmigrations", read, checkpointing), change
        assert cluster.writes == [], f"the cycle's decision is not forced over {change}"
