"""Read-only views of Pods and Nodes, as the deciders and the CLI see them."""

from __future__ import annotations

from lpm.api.views import NodeView, PodView


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
