"""The freezer's bookkeeping on a stand-in cgroup v1 tree (files behave like freezer.state for these purposes):
idempotence per checkpoint ID, conflicts, persisted deadlines, auto-thaw, restart, cgroup lookup."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lpm.agent import freezer as fz

POD = "6a2b3c4d-1111-4222-8333-944455556666"


def fake_cgroup(root: Path, name: str) -> Path:
    d = root / "freezer" / "kubepods" / "burstable" / f"pod{POD}" / name
    d.mkdir(parents=True)
    (d / "freezer.state").write_text("THAWED\n")
    return d


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


@pytest.fixture
def cgroups(tmp_path: Path) -> dict[str, Path]:
    return {n: fake_cgroup(tmp_path / "cg", f"cid-{n}") for n in ("app", "sidecar")}


def make(tmp_path: Path, cgroups: dict[str, Path], deadline: float = 60.0) -> fz.Freezer:
    def locate(pod_uid: str, container: str) -> Path:
        if pod_uid != POD or container not in cgroups:
            raise fz.ContainerNotFound(container)
        return cgroups[container]

    return fz.Freezer(locate, tmp_path / "state", deadline)


def state(cg: Path) -> str:
    return (cg / "freezer.state").read_text().strip()


def test_freeze_is_idempotent_per_checkpoint_id_and_renews_the_deadline(tmp_path, cgroups) -> None:
    f = make(tmp_path, cgroups)
    first = f.freeze("ck-1", POD, ["app"], deadline=30)
    second = f.freeze("ck-1", POD, ["app", "sidecar"], deadline=60)
    assert state(cgroups["app"]) == state(cgroups["sidecar"]) == "FROZEN"
    assert (second[0].auto_thaw_at or 0) > (first[0].auto_thaw_at or 0)
    assert (tmp_path / "state" / "freeze-ck-1.json").exists()


def test_another_checkpoint_cannot_take_over_a_frozen_container(tmp_path, cgroups) -> None:
    f = make(tmp_path, cgroups)
    f.freeze("ck-1", POD, ["app"])
    with pytest.raises(fz.FreezeConflict, match="ck-1"):
        f.freeze("ck-2", POD, ["app"])


def test_thaw_is_idempotent_and_unknown_ids_are_a_no_op(tmp_path, cgroups) -> None:
    f = make(tmp_path, cgroups)
    f.freeze("ck-1", POD, ["app", "sidecar"])
    f.thaw("ck-1", POD, [])
    assert state(cgroups["app"]) == state(cgroups["sidecar"]) == "THAWED"
    assert f.thaw("ck-1", POD, []) == []
    assert f.thaw("never", POD, ["app"])[0].frozen is False
    assert not (tmp_path / "state" / "freeze-ck-1.json").exists()


def test_unknown_container_is_not_found_and_nothing_stays_frozen(tmp_path, cgroups) -> None:
    f = make(tmp_path, cgroups)
    with pytest.raises(fz.ContainerNotFound):
        f.freeze("ck-1", POD, ["app", "ghost"])
    assert state(cgroups["app"]) == "THAWED"


def test_a_forgotten_freeze_is_thawed_after_its_deadline(tmp_path, cgroups) -> None:
    f = make(tmp_path, cgroups)
    f.freeze("ck-1", POD, ["app"], deadline=0.2)
    wait_for(lambda: state(cgroups["app"]) == "THAWED")
    wait_for(lambda: f.status("ck-1") is None)


def test_a_restarted_freezer_thaws_overdue_records_at_once_and_keeps_the_others(tmp_path, cgroups) -> None:
    f = make(tmp_path, cgroups)
    f.freeze("ck-old", POD, ["app"], deadline=0.3)
    f.freeze("ck-new", POD, ["sidecar"], deadline=600)
    f.stop()  # the agent dies: timers gone, records on disk
    time.sleep(0.4)
    assert state(cgroups["app"]) == "FROZEN"
    g = make(tmp_path, cgroups)
    g.start()
    wait_for(lambda: state(cgroups["app"]) == "THAWED")
    assert state(cgroups["sidecar"]) == "FROZEN" and g.status("ck-new") is not None
    g.thaw("ck-new", POD, [])
    assert state(cgroups["sidecar"]) == "THAWED"


def test_lookup_finds_cgroupfs_and_systemd_layouts(tmp_path) -> None:
    cgfs = tmp_path / "a" / "freezer" / "lpm-node-1" / "kubepods" / "besteffort" / f"pod{POD}" / "abc123"
    cgfs.mkdir(parents=True)
    assert fz.find_container_cgroup(tmp_path / "a" / "freezer", POD, "abc123") == cgfs
    pod_slice = f"kubepods-burstable-pod{POD.replace('-', '_')}.slice"
    sysd = tmp_path / "b" / "kubepods.slice" / "kubepods-burstable.slice" / pod_slice / "cri-containerd-abc123.scope"
    sysd.mkdir(parents=True)
    assert fz.find_container_cgroup(tmp_path / "b", POD, "abc123") == sysd
    with pytest.raises(fz.ContainerNotFound):
        fz.find_container_cgroup(tmp_path / "a" / "freezer", POD, "other")


def test_container_id_comes_from_the_kubelets_pod_status() -> None:
    pods = [
        {
            "metadata": {"uid": POD},
            "status": {"containerStatuses": [{"name": "app", "containerID": "containerd://abc123"}]},
        }
    ]
    assert fz.container_id_from_pods(pods, POD, "app") == "abc123"
    with pytest.raises(fz.ContainerNotFound):
        fz.container_id_from_pods(pods, POD, "web")
    with pytest.raises(fz.ContainerNotFound):
        fz.container_id_from_pods(pods, "11111111-2222-4333-8444-555555555555", "app")


def test_a_source_deleted_while_frozen_is_forgotten_quietly_at_its_deadline(tmp_path, cgroups, caplog) -> None:
    """A completed migration deletes its frozen source: at the deadline there is nothing to thaw or warn about."""
    import shutil

    f = make(tmp_path, cgroups)
    f.freeze("ck-done", POD, ["app"], deadline=0.3)
    f.freeze("ck-left", POD, ["sidecar"], deadline=0.3)
    shutil.rmtree(cgroups["app"])  # the pod was deleted with its cgroup
    with caplog.at_level("INFO", logger="lpm.agent.freezer"):
        wait_for(lambda: f.status("ck-done") is None and f.status("ck-left") is None)
    assert state(cgroups["sidecar"]) == "THAWED"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "ck-left" in warnings[0] and "sidecar" in warnings[0]
    assert any("ck-done" in r.getMessage() and "gone" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "state" / "freeze-ck-done.json").exists()
