"""The orphan sweep against a real API server: a stored checkpoint no object names is deleted through an
agent once the grace has passed; one a PodCheckpoint, or its Content after the PodCheckpoint went with
deletionPolicy Retain, names is kept."""

from __future__ import annotations

import threading

from integration.controller import harness

from lpm.api import constants as c
from lpm.controller.agents import TLS, Agents
from lpm.controller.kube import Kube
from lpm.controller.orphans import OrphanSweeper
from lpm.controller.runtime import Runtime

ORPHAN = ("0b0c0d0e-1111-4222-8333-944455556666", "left-behind")


def test_a_checkpoint_no_object_names_is_swept_after_the_grace_and_named_ones_stay(api, ns, agents, controller):
    harness.make_pod(api, ns, "web", "node-a")
    body = {"apiVersion": "lpm.my.domain/v1", "kind": "PodCheckpoint", "metadata": {"name": "keep"}}
    body["spec"] = {"podName": "web"}
    harness.custom(api).create_namespaced_custom_object("lpm.my.domain", "v1", ns, "podcheckpoints", body)
    st = harness.wait(
        lambda: (s := (harness.get_cr(api, ns, "podcheckpoints", "keep") or {}).get("status", {})).get("phase")
        == "Ready"
        and s,
        "keep Ready",
    )
    kept = (st["podUID"], st["checkpointID"])
    agents["node-a"].stored = [kept, ORPHAN]
    kube = Kube(api)

    def agent_pods(node: str) -> list[dict]:
        return kube.list(
            "pods", "lpm-system", label_selector=c.AGENT_LABEL_SELECTOR, field_selector=f"spec.nodeName={node}"
        )

    rt = Runtime(kube=kube, agents=Agents(agent_pods, "lpm-system", TLS(insecure=True)))
    sweeper = OrphanSweeper(rt, interval=0, grace=30, stop=threading.Event())
    assert sweeper.sweep_once(now=0.0) == []
    assert sweeper.sweep_once(now=29.0) == []
    assert sweeper.sweep_once(now=31.0) == [ORPHAN]
    deleted = [(r["pod_uid"], r["checkpoint_id"]) for r in agents["node-a"].calls_to("DeleteCheckpoint")]
    assert deleted == [ORPHAN]
    # The PodCheckpoint goes (Retain): its Content still names the checkpoint, so the data stays.
    harness.custom(api).delete_namespaced_custom_object("lpm.my.domain", "v1", ns, "podcheckpoints", "keep")
    harness.wait(lambda: harness.get_cr(api, ns, "podcheckpoints", "keep") is None, "keep deleted")
    agents["node-a"].stored = [kept]
    assert sweeper.sweep_once(now=100.0) == [] and sweeper.sweep_once(now=200.0) == []
