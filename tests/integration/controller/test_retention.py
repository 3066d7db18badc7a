"""Checkpoint retention against a real API server and the real controller: the namespace's policy expires the
oldest checkpoints of a pod, whose stored data then goes through the agent (its finalizer), with an Event."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from types import SimpleNamespace

from integration.controller import harness

from lpm.controller.kube import Kube
from lpm.controller.retention import ANNOTATION, RetentionPolicy, sweep


def _checkpoint(name: str) -> dict:
    return {
        "apiVersion": "lpm.my.domain/v1",
        "kind": "PodCheckpoint",
        "metadata": {"name": name},
        "spec": {"podName": "web"},  # deletionPolicy defaults to Retain: retention overrides it on expiry
    }


def test_the_namespace_policy_expires_the_oldest_checkpoints_of_a_pod_and_their_data(api, ns, agents, controller):
    harness.make_pod(api, ns, "web", "node-a")
    harness.core(api).patch_namespace(ns, {"metadata": {"annotations": {ANNOTATION: "keep=2"}}})
    names = [f"web-{i}" for i in range(4)]
    for name in names:
        harness.custom(api).create_namespaced_custom_object(
            "lpm.my.domain", "v1", ns, "podcheckpoints", _checkpoint(name)
        )
        harness.wait(
            lambda n=name: (harness.get_cr(api, ns, "podcheckpoints", n) or {}).get("status", {}).get("phase")
            == "Ready",
            f"{name} Ready",
        )
        time.sleep(1.1)  # completion times are recorded to the second
    rt = SimpleNamespace(kube=Kube(api), now=lambda: datetime.now(UTC))
    reasons = {n: sweep(rt, harness.get_cr(api, ns, "podcheckpoints", n) or {}, RetentionPolicy()) for n in names}
    assert [n for n, why in reasons.items() if why] == names[:2], reasons
    assert str(reasons[names[0]]) == "3 newer finished checkpoints of the pod exist, keep is 2"
    harness.wait(lambda: all(harness.get_cr(api, ns, "podcheckpoints", n) is None for n in names[:2]), "expired gone")
    assert all(harness.get_cr(api, ns, "podcheckpoints", n) for n in names[2:]), "the two newest are kept"
    deleted = {c["checkpoint_id"] for a in agents.values() for c in a.calls_to("DeleteCheckpoint")}
    ids = {harness.get_cr(api, ns, "podcheckpoints", n)["status"]["checkpointID"] for n in names[2:]}
    assert len(deleted) == 2 and not deleted & ids, "the stored data of exactly the expired ones was deleted"
    events = harness.core(api).list_namespaced_event(ns, field_selector=f"involvedObject.name={names[0]}").items
    assert any(e.reason == "CheckpointExpired" and "from namespace" in e.message for e in events)
    # A second pass changes nothing: what is left is within the policy.
    for name in names[2:]:
        assert sweep(rt, harness.get_cr(api, ns, "podcheckpoints", name) or {}, RetentionPolicy()) is None
