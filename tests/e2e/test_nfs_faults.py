"""The checkpoint repository failing under a migration, on the real cluster's nfs-ganesha (infra/local).

Two faults, each while a 256 MiB pod's checkpoint is being written, each on both engines: the NFS server killed
mid-write, and the export full. No completion marker is ever written for such a checkpoint, nothing partial is
restored, and the pod's state carries on with no update lost or repeated: in the source, after a rollback, or
in the replacement when the Live engine already restored it from the target's own verified copy. The killed
writer's temp files are removed by the next run of the agent that wrote them.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e import lpmctl as k
from e2e.test_faults import _assert_never_paused_after_the_end, _assert_no_restored_pod, _assert_source_continues

pytestmark = pytest.mark.usefixtures("lpm_cluster")

NFS_CONTAINER = "lpm-local-nfs"  # infra/local/cluster
NFS_HOST, NFS_PORT = "172.31.250.1", 2049
TEMP_INFIX = ".tmp-"


def export_dir() -> Path:
    return Path(k.ENV["LPM_LOCAL_STATE"]) / "nfs-export"


def podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=False)


def nfs_answering() -> bool:
    try:
        with socket.create_connection((NFS_HOST, NFS_PORT), timeout=1):
            return True
    except OSError:
        return False


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".") and TEMP_INFIX in p.name]


def start_migration(pod: str, name: str, engine: str = "Auto") -> subprocess.Popen[str]:
    argv = [str(k.KUBECTL_LPM), "-n", k.NAMESPACE, "migrate", pod, "--to", k.NODE_2, "--name", name]
    argv += ["--engine", engine, "--migration-timeout", "60", "--wait", "--timeout", "300"]
    return subprocess.Popen(argv, env=k.ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def checkpoint_dir(name: str) -> Path | None:
    res = k.kubectl("-n", k.NAMESPACE, "get", "podmigration", name, "-o", "json", check=False)
    if res.returncode != 0:
        return None  # not created yet
    st = json.loads(res.stdout).get("status") or {}
    if not (st.get("podUID") and st.get("checkpointID")):
        return None
    return export_dir() / st["podUID"] / st["checkpointID"]


def why_not_writing(name: str) -> str:
    """The migration's status and events, what the export holds for it, and whether the server answers."""
    res = k.kubectl("-n", k.NAMESPACE, "get", "podmigration", name, "-o", "json", check=False)
    status = json.loads(res.stdout).get("status") if res.returncode == 0 else res.stderr
    events = k.kubectl(
        "-n", k.NAMESPACE, "get", "events", "--field-selector", f"involvedObject.name={name}", check=False
    )
    directory = checkpoint_dir(name)
    listing = sorted(str(p) for p in directory.rglob("*")) if directory and directory.exists() else []
    return (
        f"status: {json.dumps(status, indent=1)}\nevents:\n{events.stdout}{events.stderr}"
        f"export ({directory}): {listing}\nnfs-ganesha answering: {nfs_answering()}"
    )


def assert_failed_and_rolled_back(pod: str, name: str, proc: subprocess.Popen[str], seen: int, what: str) -> dict:
    out, err = proc.communicate(timeout=330)
    st = dict(k.migration(name).get("status") or {})
    print(f"[nfs-faults] {what}: {st.get('phase')} {st.get('reason')}: {st.get('message')}")
    assert st["phase"] == "Failed", out + err
    pause = _assert_source_continues(pod, seen)
    print(f"[nfs-faults] {what}: the source paused {pause:.2f}s and counts on")
    _assert_never_paused_after_the_end(pod)
    _assert_no_restored_pod(name)
    return st


@pytest.fixture
def nfs_restarted_after() -> Iterator[None]:
    yield
    if not nfs_answering():
        podman("start", NFS_CONTAINER)
        k.wait_for("nfs-ganesha answering again", nfs_answering, timeout=60)


@pytest.mark.parametrize("engine", ["Live", "Image"])
def test_the_nfs_server_killed_mid_write_never_restores_a_partial_copy_and_its_leftovers_are_swept(
    engine: str, nfs_restarted_after: None
) -> None:
    """Image: the store is on the migration's path, so the migration fails and the source counts on. Live: the
    store is the durable copy, written beside the node-to-node stream; the migration completes from the
    target's verified copy, and the durable copy is abandoned. Either way no marker, and the pod's state
    carries on with no update lost or repeated."""
    pod, name = f"nfs-kill-{engine.lower()}", f"mig-nfs-kill-{engine.lower()}"
    k.start_counter(pod, ballast_mib=256)
    seen = k.states(pod)[-1]["seq"]
    proc = start_migration(pod, name, engine)
    try:
        # The archive is being written once its temp file shows up in the export.
        k.wait_for(
            "the checkpoint being written",
            lambda: (d := checkpoint_dir(name)) is not None and d.exists() and temp_files(d),
            timeout=120,
            interval=0.05,
            explain=lambda: why_not_writing(name),
        )
        killed = podman("kill", NFS_CONTAINER)
        assert killed.returncode == 0, killed.stderr
    except BaseException:
        proc.kill()
        raise
    if engine == "Image":
        st = assert_failed_and_rolled_back(pod, name, proc, seen, "server killed mid-write (Image)")
    else:
        out, err = proc.communicate(timeout=330)
        st = dict(k.migration(name).get("status") or {})
        print(f"[nfs-faults] server killed mid-write (Live): {st.get('phase')} {st.get('reason')}")
        assert st["phase"] == "Completed", out + err
        durable = next(x for x in st["conditions"] if x["type"] == "DurableCopy")
        assert durable["status"] != "True", f"a durable copy cut short was reported stored: {durable}"
        restored = st["restoredPodName"]
        k.wait_for("the restored pod counting", lambda: k.last_seq(restored) > seen + 5)
        seqs = [s["seq"] for s in k.states(restored)]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "updates lost or repeated"
        assert seqs[0] > seen, "the replacement started from scratch instead of the checkpoint"
    podman("start", NFS_CONTAINER)
    k.wait_for("nfs-ganesha answering again", nfs_answering, timeout=60)
    directory = export_dir() / st["podUID"] / st["checkpointID"]
    assert not (directory / ".checkpoint-complete").exists(), "a checkpoint cut short was marked complete"
    leftovers = temp_files(directory)
    print(f"[nfs-faults] server killed mid-write ({engine}): {len(leftovers)} temp file(s) left on the export")
    # The next run of the agent that wrote them sweeps its own leftovers at start-up.
    old, _ = k.agent_on(k.NODE_1)
    k.kubectl("-n", "lpm-system", "delete", "pod", old, "--wait=true")
    k.wait_for("a new agent Ready", lambda: (a := k.agent_on(k.NODE_1))[0] not in ("", old) and a[1], 120, 0.5)
    k.wait_for("the leftovers swept", lambda: not temp_files(directory), timeout=60)
    assert not (directory / ".checkpoint-complete").exists()


@pytest.mark.parametrize("engine", ["Live", "Image"])
def test_a_full_export_never_leaves_a_partial_file_and_fails_only_a_migration_that_needs_the_store(
    engine: str, nfs_restarted_after: None
) -> None:
    """The server's /small export (a 64 MiB tmpfs) as the repository, for a pod whose checkpoint is larger. Image:
    the store is on the migration's path, so it fails and the source counts on. Live: the store is the durable
    copy, written once the target verified its own copy; the migration completes from that one, and says the
    durable copy is missing (condition DurableCopy), never that it was stored."""
    small = f"nfs://{NFS_HOST}:{NFS_PORT}/small?version=3&mountport=20048&noresvport=true"
    original = next(
        e["value"]
        for e in k.kubectl_json("-n", "lpm-system", "get", "daemonset", "lpm-agent")["spec"]["template"]["spec"][
            "containers"
        ][0]["env"]
        if e["name"] == "LPM_STORAGE"
    )

    def storage(url: str) -> None:
        k.kubectl("-n", "lpm-system", "set", "env", "daemonset/lpm-agent", f"LPM_STORAGE={url}")
        k.kubectl("-n", "lpm-system", "rollout", "status", "daemonset/lpm-agent", "--timeout=180s")

    pod, name = f"nfs-full-{engine.lower()}", f"mig-nfs-full-{engine.lower()}"
    storage(small)
    try:
        k.start_counter(pod, ballast_mib=256)
        seen = k.states(pod)[-1]["seq"]
        started = time.monotonic()
        proc = start_migration(pod, name, engine)
        if engine == "Image":
            st = assert_failed_and_rolled_back(pod, name, proc, seen, "export full")
            print(f"[nfs-faults] export full: Failed after {time.monotonic() - started:.1f}s")
            assert "space" in (st.get("message") or "").lower() or st.get("reason") == "StorageFull", st
        else:
            out, err = proc.communicate(timeout=330)
            st = dict(k.migration(name).get("status") or {})
            assert st["phase"] == "Completed", out + err
            durable = next(x for x in st["conditions"] if x["type"] == "DurableCopy")
            print(f"[nfs-faults] export full (Live): Completed, DurableCopy={durable['status']}: {durable['message']}")
            assert durable["status"] in ("False", "Unknown"), durable
            restored = st["restoredPodName"]
            k.wait_for("the restored pod counting", lambda: k.last_seq(restored) > seen + 5)
            seqs = [s["seq"] for s in k.states(restored)]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "updates lost or repeated"
            assert seqs[0] > seen, "the replacement started from scratch instead of the checkpoint"

            def checkpoint_failed() -> dict | None:
                pc = k.kubectl_json("-n", k.NAMESPACE, "get", "podcheckpoint", st["podCheckpointName"])
                return pc["status"] if pc.get("status", {}).get("phase") == "Failed" else None

            k.wait_for("the PodCheckpoint failed", checkpoint_failed, timeout=120)
            failed = checkpoint_failed() or {}
            assert "space" in (failed.get("message") or "").lower() or failed.get("reason") == "StorageFull", failed
        listing = podman("exec", NFS_CONTAINER, "find", "/small", "-type", "f")
        assert listing.returncode == 0, listing.stderr
        files = listing.stdout.split()
        assert not [f for f in files if f.endswith(".checkpoint-complete")], files
        assert not [f for f in files if TEMP_INFIX in f], f"a partial file stayed on the full export: {files}"
    finally:
        storage(original)
