"""The freezer's bookkeeping on a stand-in cgroup v1 tree (files behave like freezer.state for these purposes):
idempotence per checkpoint ID, conflicts, persisted deadlines, auto-thaw, restart, cgroup lookup."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

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


def test_holds_says_which_containers_a_checkpoint_id_froze_and_raises_once_it_is_fenced(tmp_path, cgroups) -> None:
    """What a Checkpoint asks before freezing on its own: held means frozen by that ID, for that pod, now."""
    f = make(tmp_path, cgroups)
    assert not f.holds("ck-1", POD, "app")
    f.freeze("ck-1", POD, ["app"])
    assert f.holds("ck-1", POD, "app")
    assert not f.holds("ck-1", POD, "sidecar")
    assert not f.holds("ck-2", POD, "app")
    assert not f.holds("ck-1", "11111111-2222-4333-8444-555555555555", "app")
    f.thaw("ck-1", POD, [])
    with pytest.raises(fz.Fenced):
        f.holds("ck-1", POD, "app")


def test_freeze_and_checkpoint_meet_and_each_side_gives_up_on_its_own_deadline(tmp_path, cgroups) -> None:
    import threading

    f = make(tmp_path, cgroups)
    # No Checkpoint comes: the Freeze's wait runs out (and the caller then freezes all the same).
    assert f.await_checkpoints("ck-1", ["app"], timeout=0.2) is False
    # No Freeze comes: the Checkpoint's wait runs out, and it never froze anything itself.
    with pytest.raises(fz.NotFrozenYet):
        f.await_frozen("ck-1", POD, "app", timeout=0.2)
    assert state(cgroups["app"]) == "THAWED"
    # They meet: the Checkpoint waits, the Freeze sees it at once, freezes, and the Checkpoint goes on.
    done = threading.Event()

    def checkpoint() -> None:
        f.await_frozen("ck-2", POD, "app", timeout=10)
        done.set()

    t = threading.Thread(target=checkpoint)
    t.start()
    assert f.await_checkpoints("ck-2", ["app"], timeout=10) is True
    assert not done.is_set(), "nothing frozen yet: the Checkpoint still waits"
    f.freeze("ck-2", POD, ["app"])
    t.join(timeout=10)
    assert done.is_set() and state(cgroups["app"]) == "FROZEN"


def test_renewing_a_held_freeze_asks_neither_the_kubelet_nor_the_runtime(tmp_path, cgroups) -> None:
    """A controller's repeated Freeze lands while the dump runs: it must not compete with it."""
    asked: list[str] = []

    class Counting(fz.CgroupControl):
        def freeze(self, target: str) -> None:
            asked.append(f"freeze {Path(target).name}")
            super().freeze(target)

    def locate(pod_uid: str, container: str) -> Path:
        asked.append(f"locate {container}")
        return cgroups[container]

    f = fz.Freezer(locate, tmp_path / "state", 60.0, Counting())
    first = f.freeze("ck-1", POD, ["app"], deadline=30)
    assert asked == ["locate app", "freeze cid-app"]
    again = f.freeze("ck-1", POD, ["app"], deadline=60)
    assert asked == ["locate app", "freeze cid-app"], "renewed from the record alone"
    assert (again[0].auto_thaw_at or 0) > (first[0].auto_thaw_at or 0)
    f.freeze("ck-1", POD, ["app", "sidecar"], deadline=60)  # a container it does not hold yet: asked for
    assert asked[2:4] == ["locate app", "locate sidecar"]
    assert sorted(asked[4:]) == ["freeze cid-app", "freeze cid-sidecar"]


def test_a_pods_containers_are_frozen_at_once_and_a_failure_thaws_them_all(tmp_path, cgroups) -> None:
    """Each freeze waits at a barrier the others must reach too: frozen one after the other, the first would
    wait alone and the barrier break."""
    barrier = threading.Barrier(2, timeout=5)

    class Together(fz.CgroupControl):
        def freeze(self, target: str) -> None:
            barrier.wait()
            super().freeze(target)

    f = fz.Freezer(make(tmp_path, cgroups).locate, tmp_path / "state", 60.0, Together())
    f.freeze("ck-1", POD, ["app", "sidecar"])
    assert state(cgroups["app"]) == state(cgroups["sidecar"]) == "FROZEN"
    f.thaw("ck-1", POD, [])

    class SidecarFails(fz.CgroupControl):
        def freeze(self, target: str) -> None:
            if Path(target).name == "cid-sidecar":
                raise fz.FreezerError("the runtime refused")
            super().freeze(target)

    g = fz.Freezer(make(tmp_path, cgroups).locate, tmp_path / "state2", 60.0, SidecarFails())
    with pytest.raises(fz.FreezerError, match="refused"):
        g.freeze("ck-2", POD, ["app", "sidecar"])
    assert state(cgroups["app"]) == state(cgroups["sidecar"]) == "THAWED"
    assert g.status("ck-2") is None


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


def test_a_record_resolved_while_a_new_freezer_starts_is_skipped_and_the_others_kept(tmp_path, cgroups) -> None:
    f = make(tmp_path, cgroups)
    f.freeze("ck-kept", POD, ["app"], deadline=600)
    f.stop()
    # The agent being replaced released ck-gone between the new one's listing and its read (a dangling link
    # behaves the same: listed, then FileNotFoundError); ck-bad cannot be read at all.
    (tmp_path / "state" / "freeze-ck-gone.json").symlink_to(tmp_path / "state" / "released")
    (tmp_path / "state" / "freeze-ck-bad.json").mkdir()
    g = make(tmp_path, cgroups)
    g.start()
    assert g.status("ck-kept") is not None and g.status("ck-gone") is None and g.status("ck-bad") is None
    g.thaw("ck-kept", POD, [])
    assert state(cgroups["app"]) == "THAWED"


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


# ---- a rollback is final (fencing), and thaw reports what the runtime says -------------------------------


def test_a_thawed_checkpoint_id_is_fenced_and_never_freezes_again_even_after_a_restart(tmp_path, cgroups) -> None:
    f = make(tmp_path, cgroups)
    f.freeze("ck1", POD, ["app"])
    states = f.thaw("ck1", POD, [])
    assert [(s.name, s.frozen, s.evidence) for s in states] == [("app", False, "freezer cgroup THAWED")]
    with pytest.raises(fz.Fenced):
        f.freeze("ck1", POD, ["app"])  # e.g. a Checkpoint call that was still waiting when the rollback came
    assert state(cgroups["app"]) == "THAWED"
    again = make(tmp_path, cgroups)
    again.start()
    with pytest.raises(fz.Fenced):
        again.freeze("ck1", POD, ["app", "sidecar"])
    assert state(cgroups["sidecar"]) == "THAWED"
    again.freeze("ck2", POD, ["app"])  # a new migration of the same pod is not affected
    assert state(cgroups["app"]) == "FROZEN"


def test_thawing_an_unknown_id_fences_it_too_and_reports_the_containers_as_they_are(tmp_path, cgroups) -> None:
    f = make(tmp_path, cgroups)
    f.freeze("other", POD, ["sidecar"])
    states = f.thaw("never-froze", POD, ["app", "sidecar"])
    # Thaw of an ID that froze nothing thaws nothing, and says the sidecar is still frozen (by "other").
    assert {s.name: s.frozen for s in states} == {"app": False, "sidecar": True}
    with pytest.raises(fz.Fenced):
        f.freeze("never-froze", POD, ["app"])


def test_a_thaw_the_cgroup_does_not_take_is_reported_frozen_not_thawed(tmp_path, cgroups) -> None:
    class Stuck(fz.CgroupControl):
        def thaw(self, target: str, pod_uid: str = "") -> None:
            raise fz.FreezerError("cgroup did not become THAWED within 10s")

    def locate(pod_uid: str, container: str) -> Path:
        return cgroups[container]

    f = fz.Freezer(locate, tmp_path / "state", 60.0, Stuck())
    f.freeze("ck", POD, ["app"])
    [app] = f.thaw("ck", POD, [])
    assert app.frozen and app.evidence == "freezer cgroup FROZEN"
    assert f.status("ck") is not None, "the record stays, so the auto-thaw retries"
    with pytest.raises(fz.Fenced):
        f.holds("ck", POD, "app")  # yet no Checkpoint may take it for frozen by a live migration


def test_a_container_that_is_gone_is_reported_gone(tmp_path, cgroups) -> None:
    f = make(tmp_path, cgroups)
    f.freeze("ck", POD, ["app"])
    for child in cgroups["app"].iterdir():
        child.unlink()
    cgroups["app"].rmdir()
    [app] = f.thaw("ck", POD, [])
    assert app.gone and not app.frozen


class FenceMachine(RuleBasedStateMachine):
    """Random freezes, thaws, agent restarts and late calls against one state directory: a thawed ID never
    freezes again, and a container is frozen exactly when a live (unfenced) freeze holds it."""

    IDS = ("ck-a", "ck-b", "ck-c")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="fence-"))
        self.cgroups = {n: fake_cgroup(self.tmp / "cg", f"cid-{n}") for n in ("app", "sidecar")}
        self.freezer = make(self.tmp, self.cgroups, deadline=3600)
        self.fenced: set[str] = set()
        self.holder: dict[str, str] = {}  # container -> checkpoint ID holding it frozen

    @rule(ck=st.sampled_from(IDS), names=st.lists(st.sampled_from(["app", "sidecar"]), min_size=1, unique=True))
    def freeze(self, ck: str, names: list[str]) -> None:
        try:
            self.freezer.freeze(ck, POD, names)
        except fz.Fenced:
            assert ck in self.fenced
            return
        except fz.FreezeConflict:
            assert any(self.holder.get(n, ck) != ck for n in names)
            return
        assert ck not in self.fenced, "a fenced ID froze again"
        for n in names:
            self.holder[n] = ck

    @rule(ck=st.sampled_from(IDS))
    def thaw(self, ck: str) -> None:
        states = self.freezer.thaw(ck, POD, [])
        self.fenced.add(ck)
        for n in [n for n, h in self.holder.items() if h == ck]:
            del self.holder[n]
        assert all(not s.frozen for s in states), states

    @rule()
    def agent_restarts(self) -> None:
        self.freezer.stop()
        self.freezer = make(self.tmp, self.cgroups, deadline=3600)
        self.freezer.start()

    @invariant()
    def frozen_exactly_when_a_live_freeze_holds_it(self) -> None:
        for name, cg in self.cgroups.items():
            assert (state(cg) == "FROZEN") == (name in self.holder), (name, self.holder)
            for ck in self.IDS:
                if ck in self.fenced:
                    with pytest.raises(fz.Fenced):
                        self.freezer.holds(ck, POD, name)
                else:
                    assert self.freezer.holds(ck, POD, name) == (self.holder.get(name) == ck)
        assert not set(self.holder.values()) & self.fenced

    def teardown(self) -> None:
        self.freezer.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


TestFenceMachine = FenceMachine.TestCase
TestFenceMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


FAKE_CTR = """#!/bin/sh
# ctr --address A -n NS tasks VERB [ID]: the shim's state in $STATE_DIR/containerd, runc's is the freezer cgroup.
shift 4
verb=$2
echo "$verb" >> "$STATE_DIR/calls"
case "$verb" in
  ls) printf 'TASK PID STATUS\\nabc 42 %s\\n' "$(cat "$STATE_DIR/containerd")" ;;
  pause)
    if [ "$(cat "$STATE_DIR/containerd")" = PAUSED ]; then echo "cannot pause a paused container" >&2; exit 1; fi
    echo PAUSED > "$STATE_DIR/containerd"; echo FROZEN > "$CGROUP/freezer.state" ;;
  resume)
    if [ "$(cat "$CGROUP/freezer.state")" != FROZEN ]; then
      echo "ctr: OCI runtime resume failed: container not paused: unknown" >&2; exit 1
    fi
    echo RUNNING > "$STATE_DIR/containerd"; echo THAWED > "$CGROUP/freezer.state" ;;
esac
"""


def test_a_task_containerd_holds_paused_but_runc_finds_running_is_refrozen_then_resumed(tmp_path, monkeypatch) -> None:
    """After a failed lazy dump (post-copy), CRIU left the freezer cgroup thawed: runc refuses to resume a container
    it finds running, and the shim, which still holds it paused, refuses to pause it. The thaw freezes the cgroup
    itself, and the resume then goes through both."""
    ctr = tmp_path / "ctr"
    ctr.write_text(FAKE_CTR)
    ctr.chmod(0o755)
    cgroup = tmp_path / "cg" / "freezer" / "kubepods" / f"pod{POD}" / "abc"
    cgroup.mkdir(parents=True)
    (cgroup / "freezer.state").write_text("THAWED\n")
    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    monkeypatch.setenv("CGROUP", str(cgroup))
    (tmp_path / "containerd").write_text("PAUSED\n")
    control = fz.ContainerdControl(ctr=str(ctr), cgroup_root=tmp_path / "cg")
    with pytest.raises(fz.FreezerError, match="cgroup is unknown"):
        control.thaw("abc")  # without the pod, its cgroup cannot be found: said, not hidden
    control.thaw("abc", POD)
    assert control.status("abc") == "RUNNING" and fz.cgroup_state(cgroup) == fz.THAWED
    # An ordinary paused task takes one resume.
    (tmp_path / "calls").unlink()
    control.freeze("abc")
    control.thaw("abc", POD)
    assert [c for c in (tmp_path / "calls").read_text().split() if c != "ls"] == ["pause", "resume"]
