"""Freeze and thaw a pod's containers on this node (the cgroup freezer), keyed by checkpoint ID.

Why: the kubelet leaves a checkpointed container running, so whatever the source does after its checkpoint
would be lost and, until the source is deleted, two copies would run. Frozen before the checkpoint, the
source cannot change state; CRIU dumps an already-frozen cgroup and leaves it frozen (verified with runc
here: tests/integration/agent). Thaw is the rollback.

Rules:
- Freeze/Thaw are idempotent per checkpoint ID: a repeated Freeze renews the auto-thaw deadline; Thaw of a
  thawed or unknown container is a no-op. A container frozen for one checkpoint ID is not re-frozen for
  another (`FreezeConflict`), so two migrations cannot fight over one pod.
- A rollback is final (fencing): Thaw fences its checkpoint ID, persisted like the freeze records. From then on
  no Freeze of that ID is accepted (`Fenced`), including one that was already on its way (a Checkpoint call
  stuck in kubelet retries when the migration gave up). Fences are kept for FENCE_KEEP_SECONDS.
- Freeze and Checkpoint can meet here, so that a migration's dump starts the moment its pod freezes rather than
  after the API round trips that follow the freeze: a Checkpoint created before the freeze waits for it
  (`await_frozen`: frozen → dump; fenced → `Fenced`; too long → `NotFrozenYet`), and the migration's Freeze
  waits, briefly, until those Checkpoints wait (`await_checkpoints`), then freezes all the same.
- Thaw reports what the runtime says afterwards, container by container (`Verdict`): thawed, still frozen, or
  gone, with the evidence (the freezer cgroup's state, containerd's task status). Nothing is reported thawed
  on the strength of a write alone.
- Nothing stays frozen forever: each freeze has a deadline (`auto_thaw_at`), enforced by a background timer
  and persisted as one small JSON file per checkpoint ID under the state directory, so an agent that
  restarts thaws on schedule (or at once, if the deadline passed while it was down).

Two ways to freeze (`Control`), because the runtime must agree that the container is paused:
- `CgroupControl` writes the container's freezer cgroup: v1 `freezer.state` (FROZEN/THAWED, FREEZING while in
  progress) or v2 `cgroup.freeze` + `cgroup.events`, picked per directory. Right for plain runc (and the tests).
- `ContainerdControl` pauses the task through containerd (`ctr -n k8s.io tasks pause|resume`), which freezes
  the same cgroup *and* records the task as PAUSED. Needed on containerd nodes: containerd's checkpoint
  (client `task.Checkpoint`) pauses a task it believes is running and resumes it afterwards; a cgroup frozen
  behind its back makes that pause fail (`OCI runtime pause failed: container not running`, seen with
  containerd 2.2.9 here), while a task containerd itself paused is checkpointed as is and stays paused.

Finding a container is a small injectable function (`Locate`, returning the control's target): the default
asks the kubelet's `/pods` for the container ID; the cgroup control then searches the freezer hierarchy for
`<...>/pod<uid>/<containerID>` (cgroupfs driver) or `...pod<uid_with_underscores>.slice/<rt>-<id>.scope`
(systemd driver); the containerd control uses the ID itself.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

log = logging.getLogger(__name__)

FROZEN: Final = "FROZEN"
THAWED: Final = "THAWED"
SETTLE_TIMEOUT: Final = 10.0
FENCE_KEEP_SECONDS: Final = 7 * 24 * 3600.0

# (pod UID, container name) -> what the control freezes: a cgroup directory, or a runtime container ID
Locate = Callable[[str, str], "Path | str"]


class FreezerError(Exception):
    pass


class ContainerNotFound(FreezerError, LookupError):
    pass


class FreezeConflict(FreezerError):
    pass


class Fenced(FreezerError):
    """The checkpoint ID was rolled back (thawed): it may never freeze anything again."""


class NotFrozenYet(FreezerError):
    """A Checkpoint that waits for its migration's Freeze (`await_frozen`) waited long enough."""


@dataclass(frozen=True)
class Verdict:
    """A container's state as the runtime reports it, and how we know."""

    frozen: bool
    evidence: str
    gone: bool = False


def _v2(cgroup: Path) -> bool:
    return (cgroup / "cgroup.freeze").exists()


def cgroup_state(cgroup: Path) -> str:
    """FROZEN or THAWED (FREEZING counts as not yet frozen)."""
    if _v2(cgroup):
        events = (cgroup / "cgroup.events").read_text()
        return FROZEN if "frozen 1" in events.splitlines() else THAWED
    state = (cgroup / "freezer.state").read_text().strip()
    return FROZEN if state == FROZEN else THAWED


def _set(cgroup: Path, want: str, timeout: float = SETTLE_TIMEOUT) -> None:
    if not cgroup.is_dir():
        raise ContainerNotFound(f"cgroup {cgroup} is gone (container exited?)")
    if _v2(cgroup):
        (cgroup / "cgroup.freeze").write_text("1" if want == FROZEN else "0")
    else:
        (cgroup / "freezer.state").write_text(want)
    deadline = time.monotonic() + timeout
    delay = 0.001
    while cgroup_state(cgroup) != want:
        if time.monotonic() > deadline:
            raise FreezerError(f"cgroup {cgroup} did not become {want} within {timeout:.0f}s")
        if not _v2(cgroup) and want == FROZEN:
            # v1 may stay FREEZING if a task was in uninterruptible sleep: writing again retries the freeze.
            (cgroup / "freezer.state").write_text(want)
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def freeze_cgroup(cgroup: Path) -> None:
    _set(cgroup, FROZEN)


def thaw_cgroup(cgroup: Path) -> None:
    _set(cgroup, THAWED)


def freezer_root(cgroup_root: Path) -> Path:
    """The hierarchy to search: the v1 freezer controller if mounted, else the unified (v2) root."""
    v1 = cgroup_root / "freezer"
    if (v1 / "freezer.state").exists() or v1.is_dir():
        return v1
    return cgroup_root


def find_container_cgroup(root: Path, pod_uid: str, container_id: str, max_depth: int = 6) -> Path:
    """Search `root` for the pod's directory, then the container's inside it (cgroupfs or systemd naming)."""
    pod_names = {f"pod{pod_uid}", f"pod{pod_uid.replace('-', '_')}"}
    frontier = [root]
    for _ in range(max_depth):
        next_frontier = []
        for d in frontier:
            try:
                children = [c for c in d.iterdir() if c.is_dir()]
            except OSError:
                continue
            for child in children:
                name = child.name.removesuffix(".slice")
                if any(name == p or name.endswith("-" + p) for p in pod_names):
                    for ctr in child.iterdir():
                        if ctr.is_dir() and (ctr.name == container_id or container_id in ctr.name):
                            return ctr
                    raise ContainerNotFound(f"container {container_id} has no cgroup under {child}")
                next_frontier.append(child)
        frontier = next_frontier
    raise ContainerNotFound(f"no cgroup for pod {pod_uid} under {root}")


def container_id_from_pods(pods: list[dict[str, Any]], pod_uid: str, container: str) -> str:
    """The runtime's container ID from the kubelet's pod list (`containerd://<id>` -> `<id>`)."""
    for pod in pods:
        if (pod.get("metadata") or {}).get("uid") != pod_uid:
            continue
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") == container and status.get("containerID"):
                return str(status["containerID"]).split("://", 1)[-1]
        raise ContainerNotFound(f"pod {pod_uid} has no running container named {container!r}")
    raise ContainerNotFound(f"pod {pod_uid} is not on this node")


def kubelet_locator(list_pods: Callable[[], list[dict[str, Any]]], cgroup_root: Path) -> Locate:
    root = freezer_root(cgroup_root)

    def locate(pod_uid: str, container: str) -> Path:
        return find_container_cgroup(root, pod_uid, container_id_from_pods(list_pods(), pod_uid, container))

    return locate


def kubelet_container_ids(list_pods: Callable[[], list[dict[str, Any]]]) -> Locate:
    def locate(pod_uid: str, container: str) -> str:
        return container_id_from_pods(list_pods(), pod_uid, container)

    return locate


class Control(Protocol):
    """Freezes one target (what `Locate` returned); every method is idempotent."""

    def freeze(self, target: str) -> None: ...

    def thaw(self, target: str, pod_uid: str = "") -> None: ...

    def frozen(self, target: str) -> bool: ...

    def verify(self, target: str, pod_uid: str) -> Verdict: ...

    def pid(self, target: str) -> int:
        """The container's init process, in the node's PID namespace."""
        ...


class CgroupControl:
    def freeze(self, target: str) -> None:
        freeze_cgroup(Path(target))

    def thaw(self, target: str, pod_uid: str = "") -> None:
        thaw_cgroup(Path(target))

    def frozen(self, target: str) -> bool:
        return cgroup_state(Path(target)) == FROZEN

    def verify(self, target: str, pod_uid: str) -> Verdict:
        try:
            state = cgroup_state(Path(target))
        except FileNotFoundError:
            return Verdict(False, "its freezer cgroup is gone", gone=True)
        return Verdict(state == FROZEN, f"freezer cgroup {state}")

    def pid(self, target: str) -> int:
        try:
            pids = [int(p) for p in (Path(target) / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            raise ContainerNotFound(f"cgroup {target} is gone (container exited?)") from None
        if not pids:
            raise ContainerNotFound(f"cgroup {target} has no process")
        return min(pids)


@dataclass(frozen=True)
class ContainerdControl:
    """Pause/resume through containerd, so its task state agrees (see the module docstring)."""

    address: str = "/run/containerd/containerd.sock"
    ctr: str = "ctr"
    namespace: str = "k8s.io"
    timeout: float = 30.0
    # Where to double-check the freezer cgroup behind containerd's task state (None: containerd's word only).
    cgroup_root: Path | None = None

    def _ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [self.ctr, "--address", self.address, "-n", self.namespace, *args]
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout, check=False)
        except FileNotFoundError:
            raise FreezerError(f"{self.ctr} is not installed: cannot pause containers through containerd") from None
        except subprocess.TimeoutExpired:
            raise FreezerError(f"ctr {' '.join(args)} did not finish within {self.timeout:.0f}s") from None

    def _task(self, target: str) -> list[str]:
        """`ctr tasks ls` columns of one task: TASK PID STATUS."""
        done = self._ctr("tasks", "ls")
        if done.returncode != 0:
            raise FreezerError(f"ctr tasks ls failed: {done.stderr.strip()}")
        for line in done.stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[0] == target:
                return fields
        raise ContainerNotFound(f"containerd has no task {target}")

    def status(self, target: str) -> str:
        return self._task(target)[2].upper()

    def pid(self, target: str) -> int:
        return int(self._task(target)[1])

    def _set(self, target: str, verb: str, want: str) -> None:
        if self.status(target) == want:
            return
        done = self._ctr("tasks", verb, target)
        if done.returncode != 0 and self.status(target) != want:
            raise FreezerError(f"ctr tasks {verb} {target} failed: {done.stderr.strip()}")

    def freeze(self, target: str) -> None:
        self._set(target, "pause", "PAUSED")

    def thaw(self, target: str, pod_uid: str = "") -> None:
        if self.status(target) == "RUNNING":
            return
        done = self._ctr("tasks", "resume", target)
        if done.returncode != 0 and "not paused" in done.stderr and self.status(target) == "PAUSED":
            # containerd's shim holds the task paused (and refuses to pause it again) but runc finds it running:
            # a failed lazy dump (post-copy) whose CRIU left the freezer cgroup thawed. Freezing the cgroup puts
            # runc in step with the shim, and the resume then goes through both.
            log.warning("task %s: containerd says PAUSED, runc finds it running; refreezing its cgroup", target)
            if self.cgroup_root is None or not pod_uid:
                raise FreezerError(
                    f"task {target} is paused for containerd but not for runc, and its cgroup is unknown"
                )
            freeze_cgroup(find_container_cgroup(freezer_root(self.cgroup_root), pod_uid, target))
            done = self._ctr("tasks", "resume", target)
        if done.returncode != 0 and self.status(target) != "RUNNING":
            raise FreezerError(f"ctr tasks resume {target} failed: {done.stderr.strip()}")

    def frozen(self, target: str) -> bool:
        return self.status(target) == "PAUSED"

    def verify(self, target: str, pod_uid: str) -> Verdict:
        try:
            task = self.status(target)
        except ContainerNotFound:
            return Verdict(False, "containerd has no task for it", gone=True)
        evidence = [f"containerd task {task}"]
        frozen = task in ("PAUSED", "PAUSING")
        if self.cgroup_root is not None:
            try:
                cgroup = find_container_cgroup(freezer_root(self.cgroup_root), pod_uid, target)
                state = cgroup_state(cgroup)
                evidence.append(f"freezer cgroup {state}")
                frozen = frozen or state == FROZEN
            except (ContainerNotFound, OSError) as exc:
                evidence.append(f"freezer cgroup not checked ({exc})")
        return Verdict(frozen, ", ".join(evidence))


@dataclass
class FreezeRecord:
    checkpoint_id: str
    pod_uid: str
    containers: dict[str, str]  # container name -> the control's target (cgroup path or container ID)
    auto_thaw_at: float  # wall clock (time.time()), so it survives a restart
    pod_namespace: str = ""
    pod_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerState:
    name: str
    frozen: bool
    auto_thaw_at: float | None
    evidence: str = ""
    gone: bool = False


class Freezer:
    """Freeze/thaw with persisted deadlines. Thread-safe; `start()` resumes records left by a previous run."""

    def __init__(
        self, locate: Locate, state_dir: Path, default_deadline: float = 300.0, control: Control | None = None
    ) -> None:
        self.locate = locate
        self.control: Control = control or CgroupControl()
        self.state_dir = Path(state_dir)
        self.default_deadline = default_deadline
        self._lock = threading.RLock()
        # Freeze and Checkpoint meet here (`await_checkpoints`, `await_frozen`); signalled on every freeze and fence.
        self._changed = threading.Condition(self._lock)
        self._waiting: dict[str, set[str]] = {}  # checkpoint ID -> containers whose Checkpoint waits for it
        self._records: dict[str, FreezeRecord] = {}
        self._timers: dict[str, threading.Timer] = {}

    # ---- persistence -----------------------------------------------------------------------------------

    def _file(self, checkpoint_id: str) -> Path:
        return self.state_dir / f"freeze-{checkpoint_id}.json"

    def _persist(self, record: FreezeRecord) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self._file(record.checkpoint_id)
        temp = target.with_name(f".{target.name}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "w") as f:
            json.dump(asdict(record), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, target)

    def _fence_file(self, checkpoint_id: str) -> Path:
        return self.state_dir / f"fence-{checkpoint_id}"

    def fenced(self, checkpoint_id: str) -> bool:
        """True once `checkpoint_id` was thawed for a rollback: nothing may freeze it again."""
        return self._fence_file(checkpoint_id).exists()

    def _fence(self, checkpoint_id: str) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self._fence_file(checkpoint_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with self._changed:
            self._changed.notify_all()  # a Checkpoint waiting for this ID's freeze gives up at once

    def refuse_if_fenced(self, checkpoint_id: str) -> None:
        if self.fenced(checkpoint_id):
            raise Fenced(
                f"checkpoint {checkpoint_id} was rolled back and its source thawed; it is never frozen or "
                "checkpointed again (start a new migration)"
            )

    def _forget(self, checkpoint_id: str) -> None:
        self._records.pop(checkpoint_id, None)
        timer = self._timers.pop(checkpoint_id, None)
        if timer is not None:
            timer.cancel()
        self._file(checkpoint_id).unlink(missing_ok=True)

    def start(self) -> None:
        """Reload records a previous agent left; thaw the overdue ones now, schedule the rest."""
        if not self.state_dir.is_dir():
            return
        for path in self.state_dir.glob("fence-*"):
            try:
                if path.stat().st_mtime < time.time() - FENCE_KEEP_SECONDS:
                    path.unlink()
            except OSError:
                pass
        for path in sorted(self.state_dir.glob("freeze-*.json")):
            try:
                record = FreezeRecord(**json.loads(path.read_text()))
            except FileNotFoundError:
                # Gone since the glob: the agent this one replaces was still shutting down and thawed or
                # released it (a DaemonSet rollout overlaps the two on the node's state directory).
                log.info("freeze record %s was resolved meanwhile", path.name)
                continue
            except (OSError, ValueError, TypeError) as exc:
                log.error("ignoring unreadable freeze record %s: %s", path, exc)
                continue
            with self._lock:
                self._records[record.checkpoint_id] = record
                self._schedule(record)
            # Not "frozen": a completed migration's record stays until its deadline (its pod is gone by then).
            log.info(
                "checkpoint %s: reloaded the freeze record of pod %s (%s); what is still frozen of it at %s is "
                "thawed then",
                record.checkpoint_id,
                f"{record.pod_namespace}/{record.pod_name}" if record.pod_name else record.pod_uid,
                ", ".join(record.containers),
                datetime.fromtimestamp(record.auto_thaw_at, UTC).isoformat(timespec="seconds"),
            )

    def stop(self) -> None:
        """Cancel timers (records stay on disk: the next agent enforces them)."""
        with self._lock:
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()

    def _schedule(self, record: FreezeRecord) -> None:
        old = self._timers.pop(record.checkpoint_id, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, record.auto_thaw_at - time.time())
        timer = threading.Timer(delay, self._expire, args=(record.checkpoint_id, record.auto_thaw_at))
        timer.daemon = True
        self._timers[record.checkpoint_id] = timer
        timer.start()

    def _expire(self, checkpoint_id: str, due: float) -> None:
        with self._lock:
            record = self._records.get(checkpoint_id)
            if record is None or record.auto_thaw_at != due:
                return  # thawed or renewed meanwhile
            alive = [name for name, target in record.containers.items() if self._exists(target)]
            if not alive:
                # The usual end of a completed migration: its source pod was deleted while frozen.
                log.info(
                    "checkpoint %s: the frozen containers of pod %s are gone; dropping the freeze record",
                    checkpoint_id,
                    record.pod_uid,
                )
                self._forget(checkpoint_id)
                return
            log.warning(
                "checkpoint %s: nobody thawed or renewed pod %s within its deadline; thawing %s",
                checkpoint_id,
                record.pod_uid,
                ", ".join(alive),
            )
            try:
                self._fence(checkpoint_id)
                self._thaw_record(record)
            except Exception:
                log.exception("auto-thaw of checkpoint %s failed; retrying in 5s", checkpoint_id)
                record.auto_thaw_at = time.time() + 5
                self._schedule(record)

    def _exists(self, target: str) -> bool:
        try:
            self.control.frozen(target)
        except (ContainerNotFound, FileNotFoundError):
            return False
        except (OSError, FreezerError):
            return True  # cannot tell: try to thaw it
        return True

    # ---- operations ------------------------------------------------------------------------------------

    def pid(self, pod_uid: str, container: str) -> int:
        return self.control.pid(str(self.locate(pod_uid, container)))

    def holder(self, pod_uid: str, container: str) -> str | None:
        with self._lock:
            for record in self._records.values():
                if record.pod_uid == pod_uid and container in record.containers:
                    return record.checkpoint_id
        return None

    def holds(self, checkpoint_id: str, pod_uid: str, container: str) -> bool:
        """True when `checkpoint_id` froze this container and nothing thawed it since: a Checkpoint of it needs no
        second freeze (which would ask the kubelet and the runtime again, inside the source's frozen time).
        Fenced IDs raise `Fenced`, even while a failed thaw keeps their record for the auto-thaw."""
        with self._lock:
            self.refuse_if_fenced(checkpoint_id)
            record = self._records.get(checkpoint_id)
            return record is not None and record.pod_uid == pod_uid and container in record.containers

    def await_frozen(self, checkpoint_id: str, pod_uid: str, container: str, timeout: float) -> None:
        """A Checkpoint created before its migration's freeze: say it waits (`await_checkpoints` sees it), then
        wait until `checkpoint_id` holds the container frozen. Raises `Fenced` if the migration rolled back
        meanwhile, `NotFrozenYet` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            waiting = self._waiting.setdefault(checkpoint_id, set())
            waiting.add(container)
            self._changed.notify_all()
            try:
                while not self.holds(checkpoint_id, pod_uid, container):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise NotFrozenYet(
                            f"checkpoint {checkpoint_id}: container {container} was not frozen for it within "
                            f"{timeout:.0f}s; its migration freezes it first (call again)"
                        )
                    self._changed.wait(left)
            finally:
                waiting.discard(container)
                if not waiting and self._waiting.get(checkpoint_id) is waiting:
                    del self._waiting[checkpoint_id]

    def await_checkpoints(self, checkpoint_id: str, containers: list[str], timeout: float) -> bool:
        """Before a migration's freeze: wait until a Checkpoint of `checkpoint_id` waits (`await_frozen`) for
        each of `containers`, at most `timeout` seconds. True when they all do."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not set(containers) <= self._waiting.get(checkpoint_id, set()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def freeze(
        self,
        checkpoint_id: str,
        pod_uid: str,
        containers: list[str],
        deadline: float | None = None,
        pod_namespace: str = "",
        pod_name: str = "",
    ) -> list[ContainerState]:
        if not containers:
            raise ValueError("freeze needs at least one container name")
        with self._lock:
            self.refuse_if_fenced(checkpoint_id)
            for name in containers:
                other = self.holder(pod_uid, name)
                if other is not None and other != checkpoint_id:
                    raise FreezeConflict(
                        f"container {name} of pod {pod_uid} is frozen for checkpoint {other}; thaw that first"
                    )
            record = self._records.get(checkpoint_id)
            if record is not None and record.pod_uid == pod_uid and set(containers) <= set(record.containers):
                # A renewal (or a controller's repeated call): they are frozen under this ID, and asking the
                # kubelet and the runtime again would compete with the dump that is running now.
                record.auto_thaw_at = time.time() + (deadline or self.default_deadline)
                self._persist(record)
                self._schedule(record)
                return [ContainerState(n, True, record.auto_thaw_at) for n in containers]
            targets = {name: str(self.locate(pod_uid, name)) for name in containers}
            if record is None:
                record = FreezeRecord(checkpoint_id, pod_uid, {}, 0.0, pod_namespace, pod_name)
            if record.pod_uid != pod_uid:
                raise FreezeConflict(f"checkpoint {checkpoint_id} already froze pod {record.pod_uid}, not {pod_uid}")
            record.containers.update(targets)
            record.auto_thaw_at = time.time() + (deadline or self.default_deadline)
            # Persist before freezing: a crash right after the freeze must still lead to a thaw.
            self._records[checkpoint_id] = record
            self._persist(record)
            self._schedule(record)
            try:
                self._freeze_all(list(targets.values()))
            except BaseException:
                self._thaw_record(record)
                raise
            self._changed.notify_all()
            log.info("checkpoint %s: froze %s of pod %s", checkpoint_id, ", ".join(containers), pod_uid)
            return [ContainerState(n, True, record.auto_thaw_at) for n in containers]

    def _freeze_all(self, targets: list[str]) -> None:
        """A pod's containers all at once. One after the other, the first stood still while the runtime paused
        the others (55 ms each through containerd here: 0.11 s more downtime for the first of three) and the pod
        was not frozen at one instant. Every one is attempted; the first failure is raised (the caller thaws)."""
        if len(targets) == 1:
            return self.control.freeze(targets[0])
        with ThreadPoolExecutor(len(targets), thread_name_prefix="freeze") as pool:
            done = [pool.submit(self.control.freeze, target) for target in targets]
        failed = [exc for exc in (f.exception() for f in done) if exc is not None]
        if failed:
            raise failed[0]
        return None

    def _thaw_record(self, record: FreezeRecord, names: list[str] | None = None) -> None:
        errors = []
        for name, target in list(record.containers.items()):
            if names is not None and name not in names:
                continue
            try:
                self.control.thaw(target, record.pod_uid)
            except ContainerNotFound:
                pass  # the container is gone: nothing left to thaw
            except FileNotFoundError:
                pass  # its cgroup is gone with it
            except (OSError, FreezerError) as exc:
                errors.append(f"{name}: {exc}")
                continue  # still frozen: keep it in the record, so the auto-thaw retries
            record.containers.pop(name, None)
        if record.containers:
            self._persist(record)
        else:
            self._forget(record.checkpoint_id)
        if errors:
            raise FreezerError(f"checkpoint {record.checkpoint_id}: thaw failed for {'; '.join(errors)}")

    def thaw(self, checkpoint_id: str, pod_uid: str, containers: list[str]) -> list[ContainerState]:
        """Roll back: fence `checkpoint_id` for good, thaw what it froze (all of it when `containers` is empty),
        then report each container as the runtime sees it. An unknown ID is fenced and verified all the same."""
        with self._lock:
            self._fence(checkpoint_id)
            record = self._records.get(checkpoint_id)
            targets = dict(record.containers) if record else {}
            names = containers or list(targets)
            if record is not None:
                try:
                    self._thaw_record(record, containers or None)
                    log.info("checkpoint %s: thawed %s of pod %s (fenced)", checkpoint_id, ", ".join(names), pod_uid)
                except FreezerError as exc:
                    # Reported through the verdicts below (still frozen); the record stays for the auto-thaw.
                    log.error("%s", exc)
            return [self._verified(pod_uid, name, targets.get(name)) for name in names]

    def _verified(self, pod_uid: str, name: str, target: str | None) -> ContainerState:
        try:
            verdict = self.control.verify(target or str(self.locate(pod_uid, name)), pod_uid)
        except ContainerNotFound as exc:
            verdict = Verdict(False, f"not found ({exc})", gone=True)
        except (OSError, FreezerError) as exc:
            # Cannot tell: never claim thawed.
            verdict = Verdict(True, f"state unknown: {exc}")
        return ContainerState(name, verdict.frozen, None, verdict.evidence, verdict.gone)

    def status(self, checkpoint_id: str) -> FreezeRecord | None:
        with self._lock:
            return self._records.get(checkpoint_id)
