"""Live migration end to end on real kubelets, containerd and CRIU, driven through `kubectl lpm`."""

from __future__ import annotations

import calendar
import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from e2e import lpmctl as k

pytestmark = pytest.mark.usefixtures("lpm_cluster")


def _target_lines(restored_pod: str, container: str = "counter") -> list[dict]:
    """Lines the restored process printed on the target: stamped after its container started there (the log
    also holds the source's lines, which containerd carries over)."""
    pod = k.kubectl_json("-n", k.NAMESPACE, "get", "pod", restored_pod)
    started = next(c for c in pod["status"]["containerStatuses"] if c["name"] == container)["state"]["running"]
    started_at = calendar.timegm(time.strptime(started["startedAt"], "%Y-%m-%dT%H:%M:%SZ"))
    return [s for s in k.states(restored_pod, container) if s["ts"] > started_at + 1]


def _assert_continues(source: k.Follow | list[dict], restored_pod: str, container: str = "counter") -> None:
    """The restored process picks up exactly where the source stopped: no reset, no gap, no repeat.

    CRIU restores the UTS namespace, so the lines themselves cannot tell source from target: the sequence
    numbers can. A restart would print seq 1 again, a lost update a gap, an update done twice a repeat. With a
    Follow of the source, its last update must be followed by exactly the next one on the target (the Image
    engine's restored log starts with the source's lines, the Live engine's with the target's first)."""
    k.wait_for(
        "the restored process printing on the target",
        lambda: len(_target_lines(restored_pod, container)) >= 5,
        timeout=60,
    )
    before = source.lines() if isinstance(source, k.Follow) else source
    assert before, "the source printed nothing"
    after = k.states(restored_pod, container)
    seqs = [s["seq"] for s in after]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"updates lost or repeated: {seqs}"
    if isinstance(source, k.Follow):
        last = before[-1]["seq"]
        on_target = [q for q in seqs if q > last]
        assert on_target and on_target[0] == last + 1, f"source stopped at {last}, the target went on at {seqs[:3]}"
        assert seqs[0] <= last + 1
    else:
        assert seqs[0] <= before[-1]["seq"] < seqs[-1], "the restored log does not continue the source's"
    last_state = after[-1]
    # Revenue and position are functions of the event count, so a reset or a lost update shows in them too.
    assert last_state["position"] == last_state["events"] * 100 and last_state["events"] == last_state["seq"]


def _assert_ballast_intact(restored_pod: str, what: str, timeout: float) -> None:
    """The counter re-checks its ballast byte by byte in the background and reports each full pass: every pass
    on the target found it intact."""
    k.wait_for(
        "a full check of the restored ballast",
        lambda: [s for s in _target_lines(restored_pod) if "ballast_intact" in s],
        timeout=timeout,
    )
    verdicts = {s["ballast_intact"] for s in _target_lines(restored_pod) if "ballast_intact" in s}
    assert verdicts == {True}, f"the {what} did not arrive intact"


# Phases only one engine has, and the ones each always records.
ONLY = {"Live": {"Preparing", "Transferring"}, "Image": {"Converting"}}
ALWAYS = {"Live": {"Preparing"}, "Image": {"Converting", "Restoring"}}


@pytest.mark.parametrize("engine", ["Live", "Image"])
def test_counter_revenue_and_position_continue_after_migration(engine: str) -> None:
    pod, mig = f"counter-{engine.lower()}", f"mig-{engine.lower()}"
    k.start_counter(pod)
    before = k.Follow(pod)
    res = k.lpm("migrate", pod, "--to", k.NODE_2, "--name", mig, "--engine", engine, "--wait", "--timeout", "300")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Completed" in res.stdout
    st = k.migration(mig)["status"]
    restored = st["restoredPodName"]
    assert st["sourceNode"] == k.NODE_1 and st["engine"] == engine
    phases = set(st["phaseDurationsSeconds"])
    # The Live engine may pass Transferring and Restoring: lpm-runc restores as soon as the target's agent has
    # verified the archive the source's agent pushed, which can be before the durable copy is sealed.
    assert phases >= {"Validating", "Freezing", "Checkpointing"} | ALWAYS[engine], phases
    assert not phases & ONLY["Image" if engine == "Live" else "Live"], phases
    pod_obj = k.kubectl_json("-n", k.NAMESPACE, "get", "pod", restored)
    assert pod_obj["spec"]["nodeName"] == k.NODE_2
    if engine == "Live":
        # Started from the pod's own image under lpm-runc: no checkpoint image is involved.
        assert pod_obj["spec"]["runtimeClassName"] == "lpm"
        assert pod_obj["spec"]["containers"][0]["image"] == k.DEMO_IMAGE
        conditions = {x["type"]: x for x in st["conditions"]}
        # The agent probed the node's kernel for pre-copy from inside its unprivileged container.
        validated = conditions["Validated"]["message"]
        assert "pre-copy" in validated and "could not be probed" not in validated, validated
        # The durable copy runs beside the restore: stored, or still being written at the end; never failed here.
        assert conditions["DurableCopy"]["status"] in ("True", "Unknown"), conditions["DurableCopy"]
    assert k.kubectl("-n", k.NAMESPACE, "get", "pod", pod, check=False).returncode != 0, "source not removed"
    # Who dumped the source: containerd for the Live engine (the agent's runtime dump), the kubelet for Image.
    dumps = k.kubectl_json("-n", k.NAMESPACE, "get", "containercheckpoints")["items"]
    dumped_by = {c["status"].get("dumpedBy") for c in dumps if c["metadata"]["name"].startswith(f"{mig}-")}
    assert dumped_by == {"containerd" if engine == "Live" else "kubelet"}, dumped_by
    _assert_continues(before, restored)
    out = k.lpm("status", mig)
    assert out.returncode == 0 and restored in out.stdout and f"engine: {engine}" in out.stdout


def test_keep_name_restores_a_bare_pod_under_its_own_name() -> None:
    pod, mig = "counter-named", "mig-named"
    k.start_counter(pod)
    uid = k.kubectl_json("-n", k.NAMESPACE, "get", "pod", pod)["metadata"]["uid"]
    before = k.Follow(pod)
    res = k.lpm("migrate", pod, "--to", k.NODE_2, "--name", mig, "--keep-name", "--wait", "--timeout", "300")
    assert res.returncode == 0, res.stdout + res.stderr
    st = k.migration(mig)["status"]
    # No replacement before the freeze (the name was the source's): the source was deleted once its checkpoint
    # was staged on the target, and the replacement restored under the same name.
    assert st["restoredPodName"] == pod and "Preparing" not in st["phaseDurationsSeconds"], st
    frozen = next(cd for cd in st["conditions"] if cd["type"] == "SourceFrozen")
    assert frozen["reason"] == "SourceDeleted", frozen
    obj = k.kubectl_json("-n", k.NAMESPACE, "get", "pod", pod)
    assert obj["metadata"]["uid"] != uid and obj["spec"]["nodeName"] == k.NODE_2
    assert obj["spec"]["runtimeClassName"] == "lpm"
    _assert_continues(before, pod)
    k.kubectl("-n", k.NAMESPACE, "delete", "pod", pod, "--grace-period=0", "--force", check=False)


def test_a_file_held_open_in_an_emptydir_moves_with_the_volumes_contents() -> None:
    pod, mig = "file-live", "mig-file-live"
    k.start_counter(pod, extra_args=("--hold-open", "/data/events.log"), empty_dir="/data")
    dry = k.lpm("migrate", pod, "--to", k.NODE_2, "--dry-run", "--timeout", "120")
    assert dry.returncode == 0 and "move with their contents: data" in dry.stdout, dry.stdout + dry.stderr
    before = k.Follow(pod)
    res = k.lpm("migrate", pod, "--to", k.NODE_2, "--name", mig, "--wait", "--timeout", "300")
    assert res.returncode == 0, res.stdout + res.stderr
    st = k.migration(mig)["status"]
    assert st["engine"] == "Live"
    restored = st["restoredPodName"]
    _assert_continues(before, restored)
    # The file the process kept appending to: every event from the source's first to the target's latest, once.
    held = k.kubectl("-n", k.NAMESPACE, "exec", restored, "-c", "counter", "--", "cat", "/data/events.log").stdout
    events = [int(line) for line in held.split()]
    assert events[0] == 1 and events == list(range(1, len(events) + 1)), events[:5] + events[-5:]
    first_on_target = k.states(restored)[0]["events"]  # the Live engine's restored log starts on the target
    assert events[-1] >= first_on_target, "the file did not go on growing on the target"
    k.kubectl("-n", k.NAMESPACE, "delete", "pod", restored, "--grace-period=0", "--force", check=False)


def test_a_256_mib_pod_moves_through_the_live_engine_with_its_memory() -> None:
    k.start_counter("heavy", ballast_mib=256)
    before = k.Follow("heavy")
    res = k.lpm("migrate", "heavy", "--to", k.NODE_2, "--name", "mig-heavy", "--engine", "Live", "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    st = k.migration("mig-heavy")["status"]
    assert st["engine"] == "Live"
    # The data in flight was shown while the checkpoint was taken: the dump, then MiB sent of the archive's size.
    sent = [line for line in res.stdout.splitlines() if "MiB of" in line]
    assert sent or "dumping (CRIU writes the memory)" in res.stdout, res.stdout
    for line in sent:
        match = re.search(r"(?:sending|storing|done) ([\d.]+) MiB of ([\d.]+) MiB \(([\d.]+) MiB/s", line)
        assert match and float(match[1]) <= float(match[2]) and float(match[2]) >= 256, line
    # The migration completes once the restored pod runs; the durable copy (storing) may still be on its way.
    assert st["progress"]["stage"] in ("dumping", "sending", "storing", "done"), st["progress"]
    print(
        "[progress] " + " | ".join(line.strip() for line in res.stdout.splitlines() if "CRIU" in line or "MiB" in line)
    )
    _assert_continues(before, st["restoredPodName"])
    _assert_ballast_intact(st["restoredPodName"], "256 MiB", timeout=120)


def test_a_1_gib_pod_under_runtimeclass_lpm_moves_its_memory_after_the_restore() -> None:
    """Post-copy: the source's memory is served from its node while the pod already runs on the target; every
    byte of the 1 GiB arrives (the counter re-checks it), no update is lost or repeated, and nothing is stored."""
    k.start_counter("lazy", ballast_mib=1024, runtime_class="lpm")
    before = k.Follow("lazy")
    res = k.lpm("migrate", "lazy", "--to", k.NODE_2, "--name", "mig-lazy", "--wait", "--timeout", "300")
    assert res.returncode == 0, res.stdout + res.stderr
    m = k.migration("mig-lazy")
    st = m["status"]
    print("[post-copy] " + " | ".join(line.strip() for line in res.stdout.splitlines()))
    assert st["engine"] == "Live" and st["postCopyAboveBytes"] == 256 << 20, st
    validated = next(c for c in st["conditions"] if c["type"] == "Validated")
    assert "post-copy for containers holding 256 MiB or more" in validated["message"], validated
    durable = next(c for c in st["conditions"] if c["type"] == "DurableCopy")
    assert (durable["status"], durable["reason"]) == ("False", "PostCopy"), durable
    pc = k.kubectl_json("-n", k.NAMESPACE, "get", "podcheckpoint", st["podCheckpointName"])
    assert pc["status"]["phase"] == "Streamed", pc["status"]
    assert "moved their memory to node" in pc["status"]["message"]
    # The pages went while the pod ran on the target: the migration showed them streaming.
    assert "streaming pages" in res.stdout, res.stdout
    _assert_continues(before, st["restoredPodName"])
    _assert_ballast_intact(st["restoredPodName"], "1 GiB", timeout=180)


def test_multi_container_pod_migrates_every_container_state() -> None:
    """Also: without --to the CLI picks the target (the other node here), and the replacement is named
    `<original>-<5 hex>`."""
    k.start_counter("duo", containers=("left", "right"))
    before = {c: k.Follow("duo", c) for c in ("left", "right")}
    res = k.lpm("migrate", "duo", "--name", "mig-duo", "--wait", "--timeout", "300")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"target: {k.NODE_2}" in res.stdout
    st = k.migration("mig-duo")["status"]
    restored = st["restoredPodName"]
    assert restored.startswith("duo-") and len(restored) == len("duo-12345"), restored
    assert st["engine"] == "Live", "Auto picks the live engine where the target has lpm-runc"
    for c in ("left", "right"):
        _assert_continues(before[c], restored, c)


def test_migration_to_a_missing_node_is_refused_before_anything_is_frozen() -> None:
    k.start_counter("stay-1")
    res = k.lpm("migrate", "stay-1", "--to", "no-such-node", "--wait")
    assert res.returncode == 3 and "no-such-node" in res.stderr
    # The same request as an object: the controller refuses it in validation.
    body = {
        "apiVersion": "lpm.my.domain/v1",
        "kind": "PodMigration",
        "metadata": {"name": "mig-missing", "namespace": k.NAMESPACE},
        "spec": {"podName": "stay-1", "targetNode": "no-such-node"},
    }
    k.kubectl("apply", "-f", "-", input=json.dumps(body))
    k.wait_for("mig-missing Failed", lambda: k.phase("mig-missing") == "Failed", timeout=60)
    st = k.migration("mig-missing")["status"]
    assert "no-such-node" in st["message"]
    assert "Freezing" not in st.get("phaseDurationsSeconds", {})
    _assert_source_kept_counting("stay-1")


def test_migration_to_a_notready_node_is_refused_before_anything_is_frozen() -> None:
    k.start_counter("stay-2")
    node = k.kubectl_json("get", "node", k.NODE_2)
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    patched = {**ready, "status": "False", "reason": "E2ETest", "message": "marked NotReady by the e2e test"}
    conditions = [patched if c["type"] == "Ready" else c for c in node["status"]["conditions"]]
    not_ready = json.dumps({"status": {"conditions": conditions}})
    mark = ("patch", "node", k.NODE_2, "--subresource=status", "--type=merge", "-p", not_ready)
    k.kubectl(*mark)
    # The kubelet re-reports its own Ready every few minutes; keep re-marking so that report cannot land between
    # this test's NotReady and the controller's validation (a run once migrated to the "NotReady" node that way).
    stop = threading.Event()

    def hold() -> None:
        while not stop.wait(0.2):
            k.kubectl(*mark, check=False)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        res = k.lpm("migrate", "stay-2", "--to", k.NODE_2, "--wait")
        assert res.returncode == 1 and "not Ready" in res.stderr, res.stderr
        body = {
            "apiVersion": "lpm.my.domain/v1",
            "kind": "PodMigration",
            "metadata": {"name": "mig-notready", "namespace": k.NAMESPACE},
            "spec": {"podName": "stay-2", "targetNode": k.NODE_2},
        }
        k.kubectl("apply", "-f", "-", input=json.dumps(body))
        k.wait_for("mig-notready Failed", lambda: k.phase("mig-notready") == "Failed", timeout=60)
        st = k.migration("mig-notready")["status"]
        assert "NotReady" in (st.get("reason", "") + st.get("message", "")) or "not Ready" in st.get("message", "")
        assert "Freezing" not in st.get("phaseDurationsSeconds", {})
    finally:
        stop.set()
        holder.join()
        ready_again = {**ready, "lastHeartbeatTime": None}
        conditions = [ready_again if c["type"] == "Ready" else c for c in node["status"]["conditions"]]
        k.kubectl(
            "patch",
            "node",
            k.NODE_2,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": {"conditions": conditions}}),
            check=False,
        )
    _assert_source_kept_counting("stay-2")


def _assert_source_kept_counting(pod: str) -> None:
    seen = k.states(pod)[-1]["seq"]
    k.wait_for(f"{pod} still counting", lambda: k.last_seq(pod) > seen + 5, timeout=30)
    pod_obj = k.kubectl_json("-n", k.NAMESPACE, "get", "pod", pod)
    assert pod_obj["spec"]["nodeName"] == k.NODE_1 and pod_obj["status"]["phase"] == "Running"


def test_agent_killed_during_checkpoint_never_loses_the_source() -> None:
    """The agent on the source node dies while CRIU dumps 256 MiB. The controller retries on the restarted agent
    (same checkpoint ID, idempotent) or rolls back; either way the source's state is never lost."""
    k.start_counter("big", ballast_mib=256)
    before = k.Follow("big")
    proc = subprocess.Popen(
        [
            str(k.KUBECTL_LPM),
            "-n",
            k.NAMESPACE,
            "migrate",
            "big",
            "--to",
            k.NODE_2,
            "--name",
            "mig-big",
            "--wait",
            "--timeout",
            "600",
        ],
        env=k.ENV,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    k.wait_for("mig-big Checkpointing", lambda: k.phase("mig-big") == "Checkpointing", timeout=120, interval=0.1)
    agents = k.kubectl_json(
        "-n",
        "lpm-system",
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=lpm-agent",
        "--field-selector",
        f"spec.nodeName={k.NODE_1}",
    )["items"]
    assert agents, "no agent on the source node"
    k.kubectl("-n", "lpm-system", "delete", "pod", agents[0]["metadata"]["name"], "--grace-period=0", "--force")
    out, err = proc.communicate(timeout=660)
    final = k.phase("mig-big")
    assert final in ("Completed", "Failed"), out + err
    if final == "Completed":
        assert proc.returncode == 0
        restored = k.migration("mig-big")["status"]["restoredPodName"]
        _assert_continues(before, restored)
        k.wait_for(
            "a ballast check on the target",
            lambda: any("ballast_intact" in s for s in _target_lines(restored)),
            timeout=60,
        )
        checks = [s["ballast_intact"] for s in _target_lines(restored) if "ballast_intact" in s]
        assert checks and all(checks), "the 256 MiB of memory changed across the migration"
        print(f"[fault-matrix] source agent killed: completed, downtime {k.longest_pause(k.states(restored)):.2f}s")
    else:
        before.stop()
        assert proc.returncode == 1 and k.migration("mig-big")["status"]["reason"]
        _assert_source_kept_counting("big")
        pause = k.longest_pause(k.states("big"))
        print(f"[fault-matrix] source agent killed: rolled back, source paused {pause:.2f}s")
        # Bounded by the agent's restart and the rollback, not by the agent's auto-thaw deadline (300 s).
        assert k.migration("mig-big")["status"]["reason"] != "SourceStillFrozen" and pause < 60, pause
        ids = k.container_ids("big")
        for _ in range(10):  # never left paused after the rollback (a late call would pause it again)
            assert set(k.task_states(k.NODE_1, ids).values()) == {"RUNNING"}
            time.sleep(0.5)
    restored_pods = [
        p
        for p in k.kubectl_json("-n", k.NAMESPACE, "get", "pods")["items"]
        if p["metadata"].get("annotations", {}).get("lpm.my.domain/migration") == "mig-big"
    ]
    assert len(restored_pods) <= 1


def test_controller_killed_mid_migration_completes_with_exactly_one_restored_pod() -> None:
    k.start_counter("survivor", ballast_mib=64)
    before = k.Follow("survivor")
    res = k.lpm("migrate", "survivor", "--to", k.NODE_2, "--name", "mig-survivor")
    assert res.returncode == 0, res.stderr
    k.wait_for(
        "mig-survivor under way",
        lambda: k.phase("mig-survivor") in ("Preparing", "Checkpointing", "Transferring", "Converting", "Restoring"),
        timeout=120,
        interval=0.1,
    )
    ctrl = k.kubectl_json("-n", "lpm-system", "get", "pods", "-l", "app.kubernetes.io/name=lpm-controller")["items"]
    for pod in ctrl:
        k.kubectl("-n", "lpm-system", "delete", "pod", pod["metadata"]["name"], "--grace-period=0", "--force")
    res = k.lpm("status", "mig-survivor", "--wait", "--timeout", "300")
    assert res.returncode == 0, res.stdout + res.stderr
    restored = k.migration("mig-survivor")["status"]["restoredPodName"]
    restored_pods = [
        p
        for p in k.kubectl_json("-n", k.NAMESPACE, "get", "pods")["items"]
        if p["metadata"].get("annotations", {}).get("lpm.my.domain/migration") == "mig-survivor"
    ]
    assert [p["metadata"]["name"] for p in restored_pods] == [restored]
    _assert_continues(before, restored)


def test_cancel_rolls_back_and_the_source_keeps_counting() -> None:
    # 1 GiB keeps the migration frozen for seconds (~10 s here), so the cancel lands while it is under way: with
    # 256 MiB the Live engine completed (~2 s) before `kubectl lpm cancel` started, once in CI.
    k.start_counter("cancelled", ballast_mib=1024)
    res = k.lpm("migrate", "cancelled", "--to", k.NODE_2, "--name", "mig-cancel")
    assert res.returncode == 0, res.stderr
    k.wait_for("mig-cancel under way", lambda: k.phase("mig-cancel") in ("Freezing", "Checkpointing"), interval=0.1)
    listed = k.lpm("list")
    assert listed.returncode == 0 and "mig-cancel" in listed.stdout and "cancelled" in listed.stdout
    res = k.lpm("cancel", "mig-cancel")
    assert res.returncode == 0 and "keeps running" in res.stdout, res.stdout + res.stderr
    k.wait_for("mig-cancel gone", lambda: k.phase("mig-cancel") == "", timeout=120)
    assert k.lpm("status", "mig-cancel").returncode == 3
    leftovers = [
        p["metadata"]["name"]
        for p in k.kubectl_json("-n", k.NAMESPACE, "get", "pods")["items"]
        if p["metadata"].get("annotations", {}).get("lpm.my.domain/migration") == "mig-cancel"
    ]
    assert leftovers == [], f"restored pod left behind: {leftovers}"
    _assert_source_kept_counting("cancelled")


def test_checkpoint_retention_delete_removes_the_stored_checkpoint_with_the_migration() -> None:
    k.start_counter("tidy")
    body = {
        "apiVersion": "lpm.my.domain/v1",
        "kind": "PodMigration",
        "metadata": {"name": "mig-tidy", "namespace": k.NAMESPACE},
        "spec": {"podName": "tidy", "targetNode": k.NODE_2, "checkpointRetention": "Delete"},
    }
    k.kubectl("apply", "-f", "-", input=json.dumps(body))
    k.wait_for("mig-tidy Completed", lambda: k.phase("mig-tidy") in ("Completed", "Failed"), timeout=180)
    st = k.migration("mig-tidy")["status"]
    assert st["phase"] == "Completed", st
    # The cluster's nfs-ganesha exports this directory; the Live engine seals the durable copy beside the move.
    stored = Path(k.ENV["LPM_LOCAL_STATE"]) / "nfs-export" / st["podUID"] / st["checkpointID"]
    k.wait_for("the durable copy sealed", lambda: (stored / ".checkpoint-complete").is_file(), timeout=60)
    assert (stored / "counter" / "dump.tar.zst").read_bytes()[:8] == b"LPMSEAL1"  # encrypted at rest
    k.kubectl("-n", k.NAMESPACE, "delete", "podmigration", "mig-tidy", "--wait=true", "--timeout=120s")
    k.wait_for(f"{stored} removed", lambda: not stored.exists(), timeout=120)


def test_a_pod_on_its_nodes_network_is_refused_up_front_and_keeps_running() -> None:
    """hostNetwork: the pod's address and ports are its node's. The migration fails validation, naming why,
    before any agent freezes or dumps anything; a drain refuses too (dry run); the pod goes on counting."""
    pod = k.counter_pod("hostnet", k.NODE_1)
    pod["spec"]["hostNetwork"] = True
    k.kubectl("apply", "-f", "-", input=json.dumps(pod))
    k.wait_for("pod hostnet counting", lambda: k.last_seq("hostnet") >= 10, timeout=120)
    res = k.lpm("migrate", "hostnet", "--to", k.NODE_2, "--name", "mig-hostnet", "--wait", "--timeout", "60")
    assert res.returncode != 0, res.stdout + res.stderr
    st = k.migration("mig-hostnet")["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "PodUsesHostNamespaces"), st
    assert "(hostNetwork)" in st["message"] and f"node {k.NODE_1}" in st["message"], st["message"]
    assert "hostNetwork" in res.stdout + res.stderr, res.stdout + res.stderr
    assert not st.get("podCheckpointName") and not st.get("restoredPodName"), st
    drain = k.lpm("drain", k.NODE_1, "--dry-run")
    assert drain.returncode != 0 and "hostnet" in drain.stdout + drain.stderr, drain.stdout + drain.stderr
    assert "cannot be migrated" in drain.stdout + drain.stderr
    seen = k.last_seq("hostnet")
    k.wait_for("pod hostnet still counting", lambda: k.last_seq("hostnet") > seen + 5, timeout=30)
    k.kubectl("-n", k.NAMESPACE, "delete", "pod", "hostnet", "--wait=false")


def test_drain_migrates_bare_pods_and_leaves_owned_ones_to_their_owner() -> None:
    """`kubectl lpm drain` cordons the node, live-migrates the pods LPM can move and leaves a ReplicaSet's pod
    alone. The selector keeps it to this test's pods: other tests' pods share the node."""
    selector = {"lpm-e2e/drain": "yes"}
    for name in ("drain-a", "drain-b"):
        pod = k.counter_pod(name, k.NODE_1)
        pod["metadata"]["labels"].update(selector)
        k.kubectl("apply", "-f", "-", input=json.dumps(pod))
    template = {
        "metadata": {"labels": {**selector, "lpm-e2e/rs": "drain-rs"}},
        "spec": k.counter_pod("-", k.NODE_1)["spec"],
    }
    rs = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "drain-rs", "namespace": k.NAMESPACE},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"lpm-e2e/rs": "drain-rs"}}, "template": template},
    }
    k.kubectl("apply", "-f", "-", input=json.dumps(rs))
    for name in ("drain-a", "drain-b"):
        k.wait_for(f"{name} counting", lambda n=name: len(k.states(n)) >= 10, timeout=120)
    k.wait_for("drain-rs pod Running", lambda: _pods(rs="drain-rs", phase="Running"), timeout=120)
    owned = _pods(rs="drain-rs")[0]["metadata"]["name"]
    before = {name: k.Follow(name) for name in ("drain-a", "drain-b")}
    try:
        dry = k.lpm("drain", k.NODE_1, "-l", "lpm-e2e/drain=yes", "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "2 pod(s) to migrate, 1 left to their owners" in dry.stdout and owned in dry.stdout
        assert not k.kubectl_json("get", "node", k.NODE_1)["spec"].get("unschedulable")

        res = k.lpm("drain", k.NODE_1, "-l", "lpm-e2e/drain=yes", "--timeout", "600")
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"node/{k.NODE_1} cordoned" in res.stdout and "kubectl drain" in res.stdout
        assert k.kubectl_json("get", "node", k.NODE_1)["spec"].get("unschedulable") is True
        migs = k.kubectl_json("-n", k.NAMESPACE, "get", "podmigrations", "-l", f"lpm.my.domain/drain-node={k.NODE_1}")
        by_pod = {m["spec"]["podName"]: m["status"] for m in migs["items"]}
        assert sorted(by_pod) == ["drain-a", "drain-b"] and {s["phase"] for s in by_pod.values()} == {"Completed"}
        for name, status in by_pod.items():
            restored = status["restoredPodName"]
            assert k.kubectl_json("-n", k.NAMESPACE, "get", "pod", restored)["spec"]["nodeName"] == k.NODE_2
            _assert_continues(before[name], restored)
        # The ReplicaSet's pod was not touched: still the same pod, still on the drained node.
        assert [p["metadata"]["name"] for p in _pods(rs="drain-rs", phase="Running")] == [owned]
    finally:
        k.kubectl("uncordon", k.NODE_1, check=False)
        k.kubectl("-n", k.NAMESPACE, "delete", "replicaset", "drain-rs", "--wait=false", check=False)


def _pods(rs: str, phase: str | None = None) -> list[dict]:
    items = k.kubectl_json("-n", k.NAMESPACE, "get", "pods", "-l", f"lpm-e2e/rs={rs}")["items"]
    return [p for p in items if phase is None or p["status"].get("phase") == phase]


def test_namespace_editors_may_migrate_and_viewers_may_only_look() -> None:
    """The user roles aggregate into the built-in edit and view roles (the API server's aggregation controller
    fills them in), and neither reaches the controller's objects' writes or the checkpoint storage."""
    for user, role in (("lpm-e2e-editor", "edit"), ("lpm-e2e-viewer", "view")):
        k.kubectl("-n", k.NAMESPACE, "create", "serviceaccount", user)
        k.kubectl(
            "-n",
            k.NAMESPACE,
            "create",
            "rolebinding",
            user,
            f"--clusterrole={role}",
            f"--serviceaccount={k.NAMESPACE}:{user}",
        )

    def can(user: str, verb: str, resource: str) -> bool:
        res = k.kubectl(
            "auth",
            "can-i",
            verb,
            f"{resource}.lpm.my.domain",
            "-n",
            k.NAMESPACE,
            f"--as=system:serviceaccount:{k.NAMESPACE}:{user}",
            check=False,
        )
        return res.stdout.strip() == "yes"

    k.wait_for("edit aggregates lpm-edit", lambda: can("lpm-e2e-editor", "create", "podmigrations"), timeout=60)
    assert can("lpm-e2e-editor", "delete", "podmigrations")
    assert not can("lpm-e2e-editor", "create", "podcheckpoints")
    assert not can("lpm-e2e-editor", "get", "podcheckpointcontents")
    k.wait_for("view aggregates lpm-view", lambda: can("lpm-e2e-viewer", "list", "podmigrations"), timeout=60)
    assert not can("lpm-e2e-viewer", "create", "podmigrations")
