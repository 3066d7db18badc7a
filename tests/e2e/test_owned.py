"""Owned pods on the real cluster: a Deployment, a StatefulSet and a Job that opted in (label
lpm.my.domain/migratable=true) are moved live by plain `kubectl drain`, through LPM's eviction and replacement
webhooks (the StatefulSet's pod keeping its name); a Deployment that did not opt in is evicted as usual."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from e2e import lpmctl as k

pytestmark = pytest.mark.usefixtures("lpm_cluster")


def test_kubectl_drain_moves_opted_in_owned_pods_live_and_evicts_the_rest() -> None:
    # Everything starts on node 1: node 2 is cordoned meanwhile. The controller (which serves the webhooks) must
    # not run on the drained node: evicted there, its webhooks would be away while the drain runs.
    k.kubectl("cordon", k.NODE_2)
    try:
        budget = {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "web", "namespace": k.NAMESPACE},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}},
        }
        k.apply(
            k.deployment("web", 2, True), k.deployment("plain", 1, False), k.job("batch"), k.statefulset("db"), budget
        )
        for app, count in (("web", 2), ("plain", 1), ("batch", 1), ("db", 1)):
            for pod in k.running_on(app, k.NODE_1, count):
                name = pod["metadata"]["name"]
                k.wait_for(f"{name} counting", lambda name=name: k.last_seq(name) >= 10, timeout=60)
    finally:
        k.kubectl("uncordon", k.NODE_2)
    k.controller_off(k.NODE_1)
    sources = {
        app: {p["metadata"]["name"]: p["metadata"]["uid"] for p in k.pods_of(app)} for app in ("web", "batch", "db")
    }
    plain_before = {p["metadata"]["name"] for p in k.pods_of("plain")}
    follows = {name: k.Follow(name) for names in sources.values() for name in names}

    started = time.monotonic()
    # Only this test's pods: the suite's other tests leave bare pods on the node, which kubectl drain refuses.
    drain = k.kubectl(
        "drain",
        k.NODE_1,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--pod-selector=app in (web,plain,batch,db)",
        "--timeout=300s",
        check=False,
    )
    took = time.monotonic() - started
    k.kubectl("uncordon", k.NODE_1)
    assert drain.returncode == 0, drain.stderr
    print(f"kubectl drain took {took:.1f}s")

    # Opted-in pods: now on node 2, restored (their counters continue), and each owner has its replica count.
    kinds = {"web": "ReplicaSet", "batch": "Job", "db": "StatefulSet"}
    for app, count in (("web", 2), ("batch", 1), ("db", 1)):
        moved = k.running_on(app, k.NODE_2, count)
        for pod in moved:
            ann = pod["metadata"].get("annotations") or {}
            source = ann.get("lpm.my.domain/source-pod", "").split("/")[-1]
            assert source in sources[app], f"{pod['metadata']['name']} is not a restored copy: {ann}"
            owner = next(r for r in pod["metadata"]["ownerReferences"] if r.get("controller"))
            assert owner["kind"] == kinds[app]
            before = follows[source].lines()
            after = k.states(pod["metadata"]["name"])
            seqs = [s["seq"] for s in after]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"updates lost or repeated: {seqs}"
            assert before and seqs[0] == before[-1]["seq"] + 1, (before[-1:], seqs[:3])
        restored_sources = {p["metadata"]["annotations"]["lpm.my.domain/source-pod"].split("/")[-1] for p in moved}
        assert restored_sources == set(sources[app]), "each source became exactly one restored pod"
    dep = k.kubectl_json("-n", k.NAMESPACE, "get", "deployment", "web")
    assert dep["status"].get("readyReplicas") == 2 and dep["status"].get("replicas") == 2
    # The StatefulSet's pod kept its name (and is a new pod, restored: its counter went on above).
    (db,) = k.running_on("db", k.NODE_2, 1)
    assert db["metadata"]["name"] == "db-0" and db["metadata"]["uid"] != sources["db"]["db-0"]
    sts = k.kubectl_json("-n", k.NAMESPACE, "get", "statefulset", "db")
    assert sts["status"].get("readyReplicas") == 1 and sts["status"].get("replicas") == 1, sts["status"]
    job = k.kubectl_json("-n", k.NAMESPACE, "get", "job", "batch")
    assert job["status"].get("active") == 1 and not job["status"].get("failed"), job["status"]

    # The pod that did not opt in was evicted as usual: its replacement started from zero.
    (plain,) = k.running_on("plain", k.NODE_2, 1)
    assert plain["metadata"]["name"] not in plain_before
    assert not (plain["metadata"].get("annotations") or {}).get("lpm.my.domain/source-pod")
    assert k.states(plain["metadata"]["name"])[0]["seq"] == 1

    migrations = k.kubectl_json("-n", k.NAMESPACE, "get", "podmigrations", "-l", "lpm.my.domain/eviction=true")
    phases = {m["spec"]["podName"]: m["status"]["phase"] for m in migrations["items"]}
    assert phases == {name: "Completed" for names in sources.values() for name in names}, json.dumps(phases)
    # The budget (one disruption at a time) held: web's two migrations did not overlap.
    web = sorted(
        (m["status"]["startTime"], m["status"]["completionTime"])
        for m in migrations["items"]
        if m["spec"]["podName"] in sources["web"]
    )
    assert web[1][0] >= web[0][1], f"web's migrations overlapped despite its PodDisruptionBudget: {web}"
    for m in migrations["items"]:
        print(
            f"{m['spec']['podName']}: downtime {m['status'].get('phaseDurationsSeconds')}",
        )
    k.kubectl("-n", k.NAMESPACE, "delete", "deployment", "web", "plain", "--wait=false")
    k.kubectl("-n", k.NAMESPACE, "delete", "job", "batch", "--wait=false")
    k.kubectl("-n", k.NAMESPACE, "delete", "statefulset", "db", "--wait=false")
    k.kubectl("-n", k.NAMESPACE, "delete", "pdb", "web", "--wait=false")


class _PodWatch:
    """Every pod name of an app seen while it runs (`kubectl get -w`): a fresh pod started by the owner, even one
    it scaled away a moment later, shows here."""

    def __init__(self, app: str) -> None:
        self.proc = subprocess.Popen(
            ["kubectl", "-n", k.NAMESPACE, "get", "pods", "-l", f"app={app}", "-w", "-o", "name"],
            env=k.ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def names(self) -> set[str]:
        self.proc.kill()
        out, _ = self.proc.communicate()
        return {line.strip().removeprefix("pod/") for line in out.splitlines() if line.strip()}


def test_a_deployment_pod_whose_migration_is_cancelled_goes_back_to_its_owner_and_no_empty_pod_starts() -> None:
    k.kubectl("cordon", k.NODE_2)
    try:
        # 1 GiB: a checkpoint long enough to cancel (the Live engine moves 256 MiB in ~2 s now)
        k.apply(k.deployment("solo", 1, True, ballast_mib=1024))
        (src,) = k.running_on("solo", k.NODE_1, 1)
    finally:
        k.kubectl("uncordon", k.NODE_2)
    name, uid = src["metadata"]["name"], src["metadata"]["uid"]
    k.wait_for(f"{name} counting", lambda: k.last_seq(name) >= 10, timeout=120)
    watch = _PodWatch("solo")
    res = k.lpm("migrate", name, "--to", k.NODE_2, "--name", "mig-solo")
    assert res.returncode == 0, res.stdout + res.stderr
    k.wait_for("mig-solo Checkpointing", lambda: k.phase("mig-solo") == "Checkpointing", timeout=120, interval=0.1)
    mig = k.migration("mig-solo")["status"]
    assert mig["handover"]["released"] and mig["handover"]["kind"] == "ReplicaSet", mig.get("handover")
    seen = k.last_seq(name)
    cancel = k.lpm("cancel", "mig-solo")
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    k.wait_for(
        "mig-solo gone",
        lambda: k.kubectl("-n", k.NAMESPACE, "get", "podmigration", "mig-solo", check=False).returncode != 0,
        timeout=120,
    )
    # The source runs on, owned by its ReplicaSet again, with its selector label back; its state continues.
    k.wait_for(f"{name} counting again", lambda: k.last_seq(name) > seen + 10, timeout=60)
    (back,) = k.running_on("solo", k.NODE_1, 1)
    assert back["metadata"]["uid"] == uid
    owner = next(r for r in back["metadata"]["ownerReferences"] if r.get("controller"))
    assert owner["kind"] == "ReplicaSet"
    assert back["metadata"]["labels"]["pod-template-hash"] != "lpm-released"
    assert "lpm.my.domain/released" not in (back["metadata"].get("annotations") or {})
    seqs = [s["seq"] for s in k.states(name)]
    assert seqs == list(range(1, len(seqs) + 1)), "updates lost or repeated in the source"
    time.sleep(5)  # the owner would have started a fresh pod by now
    seen_names = watch.names()
    restored = mig["restoredPodName"]
    assert seen_names <= {name, restored}, f"the owner started an empty pod: {seen_names - {name, restored}}"
    dep_status = k.kubectl_json("-n", k.NAMESPACE, "get", "deployment", "solo")["status"]
    assert dep_status.get("replicas") == 1 and dep_status.get("readyReplicas") == 1, dep_status
    k.kubectl("-n", k.NAMESPACE, "delete", "deployment", "solo", "--wait=false")
