"""The restore-log watcher on a real inotify: a failed restore's CRIU log is kept after its bundle is deleted."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from lpm.agent.restore_logs import RestoreLogWatcher

POD = "6a2b3c4d-1111-4222-8333-944455556666"
FAILED = (
    "(00.000100) Version: 4.2.1\n"
    "(00.010000) Error (criu/files-reg.c:2191): Can't open file "
    "var/lib/kubelet/pods/x/volumes/kubernetes.io~empty-dir/data/events.log on restore: No such file or directory\n"
    "(00.010100) Error (criu/cr-restore.c:2400): Restoring FAILED.\n"
)


def _bundle(task_dir: Path, cid: str, container: str) -> Path:
    bundle = task_dir / "k8s.io" / cid
    bundle.mkdir(parents=True)
    annotations = {"io.kubernetes.cri.sandbox-uid": POD, "io.kubernetes.cri.container-name": container}
    (bundle / "config.json").write_text(json.dumps({"annotations": annotations}))
    return bundle


def _restore(bundle: Path, text: str) -> None:
    """What runc and CRIU do, at their pace: runc makes the work dir and starts CRIU (tens of ms), CRIU opens its
    log and works, writes its errors and exits; at once the runtime deletes the bundle, log and all."""
    (bundle / "work").mkdir()
    time.sleep(0.05)
    with open(bundle / "work" / "restore.log", "w") as f:
        for line in text.splitlines(keepends=True):
            f.write(line)
            f.flush()
            time.sleep(0.02)
    shutil.rmtree(bundle)


def _kept(watcher: RestoreLogWatcher, container: str):
    """The failure kept for this test's pod under `container`, or None."""
    return dict(watcher.failures(POD)).get(container)


def _wait(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "not reached"
        time.sleep(0.02)
    return value


def test_a_failed_restore_is_kept_with_criu_words_after_the_runtime_deleted_its_bundle(tmp_path: Path) -> None:
    (tmp_path / "k8s.io").mkdir()
    watcher = RestoreLogWatcher(tmp_path)
    watcher.start()
    try:
        assert watcher.problem == ""
        bundle = _bundle(tmp_path, "c0ffee", "counter")
        time.sleep(0.2)  # the bundle's watch is in place before runc creates work/ (as with a real start)
        _restore(bundle, FAILED)
        failure = _wait(lambda: _kept(watcher, "counter"))
        assert failure.lines[0].startswith("Can't open file events.log on restore")
        assert failure.cause == "OpenFileCannotMove" and "emptyDir" in failure.advice
        assert _kept(watcher, "other") is None
    finally:
        watcher.stop()


def test_a_successful_restore_leaves_nothing_and_many_failures_stay_bounded(tmp_path: Path) -> None:
    (tmp_path / "k8s.io").mkdir()
    watcher = RestoreLogWatcher(tmp_path, keep=2)
    watcher.start()
    try:
        ok = _bundle(tmp_path, "ok1", "fine")
        time.sleep(0.2)
        _restore(ok, "(00.1) Restore finished successfully\n")
        for i in range(3):
            b = _bundle(tmp_path, f"bad{i}", f"c{i}")
            time.sleep(0.2)
            _restore(b, FAILED)
        _wait(lambda: _kept(watcher, "c2"))
        assert _kept(watcher, "fine") is None
        assert _kept(watcher, "c0") is None, "only the newest `keep` failures are kept"
        assert _kept(watcher, "c1") is not None
    finally:
        watcher.stop()


def test_without_the_task_directory_the_watcher_says_so_and_keeps_nothing(tmp_path: Path) -> None:
    watcher = RestoreLogWatcher(tmp_path / "missing")
    watcher.start()
    watcher.stop()
    assert "not kept" in watcher.problem


def test_containerds_layout_log_in_the_task_state_dir_and_config_in_the_bundle(tmp_path: Path) -> None:
    """containerd 2.x: <bundle>/work is a symlink to /var/lib/.../<ns>/<id>, where CRIU writes restore.log."""
    state, bundles = tmp_path / "state", tmp_path / "run"
    (state / "k8s.io").mkdir(parents=True)
    watcher = RestoreLogWatcher(state, bundle_dir=bundles)
    watcher.start()
    try:
        _bundle(bundles, "feed", "counter")
        task = state / "k8s.io" / "feed"
        task.mkdir()
        time.sleep(0.05)
        with open(task / "restore.log", "w") as f:
            f.write(FAILED)
            f.flush()
            time.sleep(0.05)
        shutil.rmtree(task)
        failure = _wait(lambda: _kept(watcher, "counter"))
        assert failure.cause == "OpenFileCannotMove"
    finally:
        watcher.stop()


def test_failures_of_a_pod_are_listed_whatever_name_the_runtime_gave_its_container(tmp_path: Path) -> None:
    (tmp_path / "k8s.io").mkdir()
    watcher = RestoreLogWatcher(tmp_path)
    watcher.start()
    try:
        bundle = _bundle(tmp_path, "r1", "containerd")  # what containerd 2.2.9 writes for a restored container
        time.sleep(0.2)
        _restore(bundle, FAILED)
        _wait(lambda: watcher.failures(POD))
        [(name, failure)] = watcher.failures(POD)
        assert name == "containerd" and failure.cause == "OpenFileCannotMove"
        assert watcher.failures("another-pod") == []
    finally:
        watcher.stop()
