"""Two controller replicas with kopf peering: the higher priority one is active, the other waits, and takes
over when the active one stops. (kopf's ClusterKopfPeering CRD and object, as a deployment would install.)"""

from __future__ import annotations

import time

from integration.controller import harness
from kubernetes import client

PEERING_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "clusterkopfpeerings.kopf.dev"},
    "spec": {
        "scope": "Cluster",
        "group": "kopf.dev",
        "names": {"kind": "ClusterKopfPeering", "plural": "clusterkopfpeerings", "singular": "clusterkopfpeering"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                        "properties": {"status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                    }
                },
            }
        ],
    },
}


def _install_peering(api):
    ext = client.ApiextensionsV1Api(api)
    ext.create_custom_resource_definition(PEERING_CRD)
    harness.wait(
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in (ext.read_custom_resource_definition("clusterkopfpeerings.kopf.dev").status.conditions or [])
        ),
        "peering CRD established",
    )
    harness.custom(api).create_cluster_custom_object(
        "kopf.dev",
        "v1",
        "clusterkopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "lpm-controller"}},
    )


def test_only_the_highest_priority_replica_acts_and_the_other_takes_over(control_plane, api, agents, kubelet, ns):
    _install_peering(api)
    work = control_plane.workdir
    active = harness.ControllerProcess(
        control_plane.kubeconfig, work / "active.log", extra=("--no-standalone", "--priority=200")
    ).start()
    standby = harness.ControllerProcess(
        control_plane.kubeconfig, work / "standby.log", extra=("--no-standalone", "--priority=100")
    ).start()
    try:
        time.sleep(3)
        harness.make_pod(api, ns, "one", "node-a")
        harness.create_migration(api, ns, "first", "one", "node-b")
        assert harness.wait_phase(api, ns, "first", {"Completed", "Failed"})["status"]["phase"] == "Completed"
        standby_log = (work / "standby.log").read_text()
        assert "Pausing operations in favour of" in standby_log, standby_log[-2000:]

        active.stop()  # graceful: the replica leaves the peering object, the standby resumes at once
        harness.make_pod(api, ns, "two", "node-a")
        harness.create_migration(api, ns, "second", "two", "node-b")
        assert (
            harness.wait_phase(api, ns, "second", {"Completed", "Failed"}, timeout=120)["status"]["phase"]
            == "Completed"
        )
        assert "Resuming operations" in (work / "standby.log").read_text()
    finally:
        active.stop()
        standby.stop()
