from __future__ import annotations

import threading
from dataclasses import dataclass, field

from lpm.api.views import NodeView, PodView
from lpm.controller.cycle import Runtime, to_fixed_point
from lpm.controller.effects import DeletePod, Outcome, PatchStatus, ProbeAgent


def test_pod_view_reports_controller_and_stuck_containers():
    pod = PodView.from_api(
        {
            "metadata": {
                "name": "w",
                "namespace": "n",
                "uid": "u",
                "ownerReferences": [{"kind": "ReplicaSet", "name": "rs", "controller": True}],
            },
            "spec": {"nodeName": "a", "containers": [{"name": "app"}]},
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {
                        "name": "app",
                        "state": {"waiting": {"reason": "ErrImageNeverPull", "message": "image not present"}},
                    }
                ],
            },
        }
    )
    assert pod.controller == "ReplicaSet/rs" and pod.running
    assert pod.problem and "ErrImageNeverPull" in pod.problem


def test_node_view_reads_ready_and_cordon():
    node = NodeView.from_api(
        {
            "metadata": {"name": "b"},
            "spec": {"unschedulable": True},
            "status": {"conditions": [{"type": "Ready", "status": "False", "message": "PLEG"}]},
        }
    )
    assert (node.ready, node.ready_message, node.unschedulable) == (False, "PLEG", True)


@dataclass(frozen=True)
class Obs:
    outcomes: dict = field(default_factory=dict)


def test_fixed_point_runs_each_effect_once_and_feeds_outcomes_back():
    calls = []

    def decide(obs):
        first, second = ProbeAgent("a", {}), DeletePod(namespace="n", name="p")
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
