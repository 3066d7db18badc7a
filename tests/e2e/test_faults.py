"""The fault matrix on the real cluster: a migration that cannot succeed fails in seconds, rolls back for good,
and says why in CRIU's own words; the source keeps its state and is never left paused.

For every fault the test checks that the migration ends (Completed or Failed), that the source runs again
(its own log: the longest pause between two of its lines, printed for the benchmark notes), that containerd
never reports the source PAUSED after the terminal status, and that no restored pod is left behind.
Faults at the kubelet boundary (500 twice, then success) are in tests/integration/agent (real agent, real
CRIU); the repository filling up is in tests/integration/storage.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from e2e import lpmctl as k

pytestmark = pytest.mark.usefixtures("lpm_cluster")

NEVER_PAUSED_SECONDS = 8.0


def _status(name: str) -> dict:
    return dict(k.migration(name).get("status") or {})


def _assert_never_paused_after_the_end(pod: str, node: str = k.NODE_1) -> None:
    """Sampled for a while after the terminal status: a late call that froze the source again would show."""
    ids = k.container_ids(pod)
    deadline = time.monotonic() + NEVER_PAUSED_SECONDS
    while time.monotonic() < deadline:
        states = k.task_states(node, ids)
        assert states and all(s == "RUNNING" for s in states.values()), f"source tasks after the rollback: {states}"
        time.sleep(0.5)


def _assert_no_restored_pod(name: str) -> None:
    restored = _status(name).get("restoredPodName")
    if restored:
        k.wait_for(
            f"restored pod {restored} gone",
            lambda: k.kubectl("-n", k.NAMESPACE, "get", "pod", restored, check=False).returncode != 0,
            timeout=60,
        )


def _assert_source_continues(pod: str, seen_before: int) -> float:
    """The source counts on with no gap or repeat; returns its longest pause (seconds, its own view)."""
    k.wait_for(f"{pod} counting again", lambda: k.last_seq(pod) > seen_before + 10, timeout=60)
    lines = k.states(pod)
    seqs = [s["seq"] for s in lines]
    assert seqs == list(range(1, len(seqs) + 1)), "updates lost or repeated in the source"
    pause = k.longest_pause(lines)
    print(f"[fault-matrix] {pod}: longest pause of the source {pause:.2f}s")
    return pause


def _forced_migration_fails(pod: str, name: str, *flags: str) -> tuple[dict, float]:
    """`kubectl lpm migrate --force --wait` of a pod that cannot move: exit 1; its status and how long it took."""
    started = time.monotonic()
    res = k.lpm("migrate", pod, "--to", k.NODE_2, "--name", name, "--force", "--wait", "--timeout", "300", *flags)
    took = time.monotonic() - started
    assert res.returncode == 1, res.stdout + res.stderr
    return _status(name), took


def _assert_rolled_back(pod: str, name: str, seen_before: int, what: str, took: float) -> float:
    """The source runs again with its state, is never paused again, and no restored pod is left."""
    pause = _assert_source_continues(pod, seen_before)
    print(f"[fault-matrix] {what}: migration ended after {took:.1f}s, source paused {pause:.2f}s")
    _assert_never_paused_after_the_end(pod)
    _assert_no_restored_pod(name)
    return pause


def test_a_migration_that_refuses_connections_refuses_a_pod_with_one_before_anything_is_frozen() -> None:
    k.start_counter("tcp-1", extra_args=("--tcp-loopback",))
    seen = k.states("tcp-1")[-1]["seq"]
    dry = k.lpm("migrate", "tcp-1", "--to", k.NODE_2, "--dry-run", "--timeout", "120")
    assert dry.returncode == 0, dry.stdout + dry.stderr  # the default moves connections
    assert "inside the pod" in dry.stdout and "connections move" in dry.stdout, dry.stdout
    refuse = ("--no-tcp-established", "--timeout", "120")
    dry = k.lpm("migrate", "tcp-1", "--to", k.NODE_2, "--dry-run", *refuse)
    assert dry.returncode == 1, dry.stdout + dry.stderr
    assert "TCPConnectionOpen" in dry.stdout and "inside the pod" in dry.stdout, dry.stdout
    res = k.lpm("migrate", "tcp-1", "--to", k.NODE_2, "--name", "mig-tcp-1", "--wait", *refuse)
    assert res.returncode == 1, res.stdout + res.stderr
    st = _status("mig-tcp-1")
    assert st["phase"] == "Failed" and st["reason"] == "TCPConnectionOpen", st
    assert "nothing was frozen" in st["message"] and "tcpEstablished: false" in st["message"]
    assert not set(st.get("phaseDurationsSeconds", {})) & {"Freezing", "Checkpointing"}
    assert _assert_source_continues("tcp-1", seen) < 1.0, "the source was stopped although nothing was frozen"
    _assert_never_paused_after_the_end("tcp-1")


def test_a_migration_that_criu_refuses_rolls_back_in_seconds_with_criu_words() -> None:
    # A profiler's perf event counter: nothing LPM checks beforehand, and CRIU refuses to dump it.
    k.start_counter("perf-1", extra_args=("--perf-event",))
    seen = k.states("perf-1")[-1]["seq"]
    st, took = _forced_migration_fails("perf-1", "mig-perf-1")
    assert st["phase"] == "Failed" and st["reason"] == "CheckpointRefused", st
    assert "perf_event" in st["message"] and "cannot dump" in st["message"], st["message"]
    assert "/run/containerd" not in st["message"] and ".log" not in st["message"], st["message"]
    assert "THAWED" in st.get("sourceState", "") and "runs again" in st["message"]
    status = k.lpm("status", "mig-perf-1")
    assert "perf_event" in status.stdout and "checked with its node's runtime" in status.stdout
    events = k.kubectl("-n", k.NAMESPACE, "get", "events", "--field-selector", "reason=CheckpointRefused").stdout
    assert "perf_event" in events
    pause = _assert_rolled_back("perf-1", "mig-perf-1", seen, "criu refuses the dump", took)
    assert pause < 5.0, f"the source stood still {pause:.1f}s"


def test_a_restore_that_criu_fails_on_the_target_rolls_back_and_the_source_keeps_its_state() -> None:
    # A file held open in an emptyDir: the Image engine's checkpoint (the kubelet's) does not carry the volume,
    # so CRIU cannot reopen the file on the target (the Live engine carries it: test_migration).
    k.start_counter("file-1", extra_args=("--hold-open", "/data/events.log"), empty_dir="/data")
    dry = k.lpm("migrate", "file-1", "--to", k.NODE_2, "--dry-run", "--timeout", "120", "--engine", "Image")
    assert dry.returncode == 1 and "OpenFileInEmptyDir" in dry.stdout and "events.log" in dry.stdout, dry.stdout
    seen = k.states("file-1")[-1]["seq"]
    st, took = _forced_migration_fails("file-1", "mig-file-1", "--engine", "Image")
    assert st["phase"] == "Failed" and st["reason"] == "RestoreFailed", st
    # CRIU's words, kept by the target's agent after containerd deleted the log with the failed container.
    assert "CRIU: " in st["message"] and "events.log" in st["message"], st["message"]
    assert "/run/containerd" not in st["message"] and "var/lib" not in st["message"], st["message"]
    assert "THAWED" in st.get("sourceState", "")
    pause = _assert_rolled_back("file-1", "mig-file-1", seen, "criu fails the restore", took)
    assert pause < 20.0


def test_a_live_restore_that_criu_fails_on_the_target_rolls_back_and_the_source_keeps_its_state() -> None:
    # A file held open in a hostPath directory that exists on the source's node only (each local node has its own
    # /tmp): the Live engine does not carry hostPath volumes, so lpm-runc's `runc restore` fails on the target
    # (CRIU cannot reopen the file) while the frozen source waits; the push to the waiting container returns on
    # that failure, and the migration rolls back.
    pod = k.counter_pod("file-2", k.NODE_1, extra_args=("--hold-open", "/data/events.log"))
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    pod["spec"]["volumes"] = [
        {"name": "data", "hostPath": {"path": "/tmp/lpm-e2e-file-2", "type": "DirectoryOrCreate"}}
    ]
    k.kubectl("apply", "-f", "-", input=json.dumps(pod))
    k.wait_for("pod file-2 Ready", lambda: k.pod_ready("file-2"), timeout=120)
    k.wait_for("file-2 counting", lambda: k.last_seq("file-2") >= 10, timeout=60)
    seen = k.states("file-2")[-1]["seq"]
    st, took = _forced_migration_fails("file-2", "mig-file-2", "--engine", "Live", "--post-copy", "Never")
    assert st["phase"] == "Failed" and st["reason"] == "RestoreFailed", st
    assert "events.log" in st["message"], st["message"]
    assert "THAWED" in st.get("sourceState", "")
    pause = _assert_rolled_back("file-2", "mig-file-2", seen, "lpm-runc's restore fails (Live)", took)
    assert pause < 20.0


def test_a_restore_that_fails_after_a_keep_name_commit_point_says_the_state_is_lost_and_keeps_the_checkpoint() -> None:
    # Keeping the name, the frozen source is deleted once its checkpoint is on the target (the commit point). The
    # Image engine's checkpoint does not carry the emptyDir, so CRIU then fails the restore: nothing can be thawed.
    k.start_counter("lost-1", extra_args=("--hold-open", "/data/events.log"), empty_dir="/data")
    st, took = _forced_migration_fails("lost-1", "mig-lost-1", "--keep-name", "--engine", "Image")
    assert st["phase"] == "Failed" and st["reason"] == "FailedAfterCommit", st
    assert "MEMORY STATE IS LOST" in st["message"] and "CRIU: " in st["message"], st["message"]
    assert st["podCheckpointName"] in st["message"]
    frozen = next(cd for cd in st["conditions"] if cd["type"] == "SourceFrozen")
    assert frozen["reason"] == "SourceDeleted", frozen
    # Neither the source nor the failed replacement (same name) is left; the checkpoint is.
    k.wait_for(
        "pod lost-1 gone",
        lambda: k.kubectl("-n", k.NAMESPACE, "get", "pod", "lost-1", check=False).returncode != 0,
        timeout=60,
    )
    pc = k.kubectl_json("-n", k.NAMESPACE, "get", "podcheckpoint", st["podCheckpointName"])
    assert pc["status"]["phase"] == "Ready", pc["status"]
    print(f"[fault-matrix] restore fails after the commit point: migration ended after {took:.1f}s")


def test_deleting_the_migration_mid_flight_thaws_the_source_and_leaves_nothing_behind() -> None:
    k.start_counter("del-1", ballast_mib=1024)  # frozen for seconds, so the delete lands mid-flight
    seen = k.states("del-1")[-1]["seq"]
    k.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "lpm.my.domain/v1",
                "kind": "PodMigration",
                "metadata": {"name": "mig-del-1", "namespace": k.NAMESPACE},
                "spec": {"podName": "del-1", "targetNode": k.NODE_2},
            }
        ),
    )
    k.wait_for("mig-del-1 Checkpointing", lambda: k.phase("mig-del-1") == "Checkpointing", timeout=120, interval=0.1)
    deleted = time.monotonic()
    k.kubectl("-n", k.NAMESPACE, "delete", "podmigration", "mig-del-1", "--wait=true", "--timeout=120s")
    print(f"[fault-matrix] migration deleted mid-flight: gone after {time.monotonic() - deleted:.1f}s")
    pause = _assert_source_continues("del-1", seen)
    print(f"[fault-matrix] migration deleted mid-flight: source paused {pause:.2f}s")
    pod = k.kubectl_json("-n", k.NAMESPACE, "get", "pod", "del-1")
    assert pod["spec"]["nodeName"] == k.NODE_1 and pod["status"]["phase"] == "Running"
    _assert_never_paused_after_the_end("del-1")
    leftovers = k.kubectl_json("-n", k.NAMESPACE, "get", "pods", "-l", "lpm.my.domain/restored")["items"]
    assert not [p for p in leftovers if p["metadata"].get("annotations", {}).get("lpm.my.domain/source-pod") == "del-1"]


def _kill_agent(node: str) -> float:
    """Force-deletes the agent pod on `node` (no grace: as if it crashed) and waits until its successor is Ready;
    returns when it was killed (time.monotonic())."""
    old_agent = k.agent_on(node)[0]
    killed = time.monotonic()
    k.kubectl(
        "-n", "lpm-system", "delete", "pod", "--grace-period=0", "--force",
        "-l", "app.kubernetes.io/name=lpm-agent", "--field-selector", f"spec.nodeName={node}",
    )  # fmt: skip
    k.wait_for("a new agent Ready", lambda: (a := k.agent_on(node))[0] not in ("", old_agent) and a[1], 120, 0.2)
    return killed


def test_the_target_agent_killed_before_the_restore_never_loses_the_source() -> None:
    """The agent on the target dies after the source was frozen, before the restore. The controller retries on
    the restarted agent, or rolls back; either way no update is lost or done twice."""
    k.start_counter("tgt-1", ballast_mib=128)
    before = k.states("tgt-1")
    proc = subprocess.Popen(
        [str(k.KUBECTL_LPM), "-n", k.NAMESPACE, "migrate", "tgt-1", "--to", k.NODE_2, "--name", "mig-tgt-1", "--wait"],
        env=k.ENV,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # Killed once the source is frozen and before the restore (Image: Converting; Live: Transferring follows).
    frozen = ("Checkpointing", "Transferring", "Converting")
    k.wait_for("mig-tgt-1 frozen", lambda: k.phase("mig-tgt-1") in frozen, timeout=120, interval=0.05)
    killed = _kill_agent(k.NODE_2)
    print(f"[fault-matrix] target agent killed: a new agent was Ready {time.monotonic() - killed:.1f}s after the kill")
    out, err = proc.communicate(timeout=660)
    final = _status("mig-tgt-1")
    print(f"[fault-matrix] target agent killed: {final['phase']} {time.monotonic() - killed:.1f}s after the kill")
    assert final["phase"] in ("Completed", "Failed"), out + err
    if final["phase"] == "Completed":
        restored = final["restoredPodName"]
        k.wait_for("the restored pod counting", lambda: k.last_seq(restored) > before[-1]["seq"] + 5)
        seqs = [s["seq"] for s in k.states(restored)]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "updates lost or repeated"
        print(f"[fault-matrix] target agent killed: downtime {k.longest_pause(k.states(restored)):.2f}s")
    else:
        _assert_rolled_back("tgt-1", "mig-tgt-1", before[-1]["seq"], "target agent killed", time.monotonic() - killed)


def _post_copy_until_streaming(pod: str, name: str) -> subprocess.Popen[str]:
    """Starts a post-copy migration of `pod` (1 GiB, RuntimeClass lpm) and returns once its pages stream: the
    replacement runs on the target and faults its memory in from the source's page server."""
    proc = subprocess.Popen(
        [str(k.KUBECTL_LPM), "-n", k.NAMESPACE, "migrate", pod, "--to", k.NODE_2, "--name", name,
         "--post-copy", "Always", "--wait", "--timeout", "600"],
        env=k.ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip

    def streaming() -> bool:
        res = k.kubectl("-n", k.NAMESPACE, "get", "podmigration", name, "-o", "json", check=False)
        return (
            res.returncode == 0
            and ((json.loads(res.stdout).get("status") or {}).get("progress") or {}).get("stage") == "streaming pages"
        )

    k.wait_for("pages streaming", streaming, timeout=120, interval=0.05)
    return proc


def test_the_source_agent_killed_while_post_copy_streams_pages_does_not_stop_the_pages() -> None:
    """The pages go from CRIU's page server to the target's `criu lazy-pages`, not through the agents: the source's
    agent dying mid-stream stops nothing. Its replacement's retry of the checkpoint is refused (a page stream
    cannot be resumed), and the controller takes the verdict from the target: every page arrived, so the
    migration completes, with no update lost or repeated and the 1 GiB intact."""
    k.start_counter("pc-agent", ballast_mib=1024, runtime_class="lpm")
    source = k.Follow("pc-agent")
    proc = _post_copy_until_streaming("pc-agent", "mig-pc-agent")
    killed = _kill_agent(k.NODE_1)
    out, err = proc.communicate(timeout=660)
    final = _status("mig-pc-agent")
    print(f"[fault-matrix] source agent killed mid post-copy: {final['phase']} {time.monotonic() - killed:.1f}s after")
    assert final["phase"] == "Completed", out + err
    restored = final["restoredPodName"]
    last = source.lines()[-1]["seq"]
    k.wait_for("the restored pod counting", lambda: k.last_seq(restored) > last + 5, timeout=60)
    seqs = [s["seq"] for s in k.states(restored)]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and seqs[0] <= last + 1, (last, seqs[:5])
    k.wait_for(
        "a full check of the restored ballast",
        lambda: any("ballast_intact" in s for s in k.states(restored)),
        timeout=180,
    )
    assert {s["ballast_intact"] for s in k.states(restored) if "ballast_intact" in s} == {True}


def test_the_page_server_killed_mid_post_copy_kills_the_replacement_and_thaws_the_whole_source() -> None:
    """The page stream itself breaks (the source's CRIU page server is killed) while the replacement runs on
    the target with part of its memory. lpm-runc's supervisor kills the replacement's process at once (it would
    otherwise read zero-filled pages) and never starts it again; the target reports the stream BROKEN; the
    migration rolls back: the replacement is deleted and the source, dumped with leave-running and still frozen,
    thaws with its state: no update lost or repeated, never two copies running."""
    k.start_counter("pc-fault", ballast_mib=1024, runtime_class="lpm")
    before = k.states("pc-fault")
    proc = _post_copy_until_streaming("pc-fault", "mig-pc-fault")
    # The CRIU process serving the pages: `runc checkpoint --lazy-pages` runs it as `criu swrk`, whose
    # dump shows as "criu: dump"; node-local processes are visible from the host.
    killed = subprocess.run(["pkill", "-KILL", "-f", "^criu: dump"], check=False).returncode
    assert killed == 0, "no CRIU page server found"
    stop = time.monotonic()
    out, err = proc.communicate(timeout=660)
    final = _status("mig-pc-fault")
    print(f"[fault-matrix] page server killed mid post-copy: {final['phase']} ({final.get('reason')}) "
          f"{time.monotonic() - stop:.1f}s after: {final.get('message')}")  # fmt: skip
    assert final["phase"] == "Failed" and final["reason"] == "PostCopyFailed", out + err
    _assert_rolled_back("pc-fault", "mig-pc-fault", before[-1]["seq"], "page server killed mid post-copy",
                        time.monotonic() - stop)  # fmt: skip
