"""A simulated cluster for the controller's reconcilers: an object store with resourceVersions, nodes, pods, agents
that freeze/thaw/checkpoint and can be down or fail, a kubelet that starts (or crashes) restored pods, and
API faults (rejected writes, and writes that landed but whose reply was lost). With `owned`, the source belongs
to a ReplicaSet of one replica (`owner_sync` is its controller), or with `stateful` to a StatefulSet (which
re-creates the pod under its name once it is gone), and LPM's mutating webhook (the production `admission`
decisions) turns the owner's new pods into restore targets while it is up. With `keep_name` a bare pod's
migration keeps its name (spec.keepName).

The production cycle runs against it (`reconcile_once` with each kind's real `observe` and decider); only
the effects are executed here instead of by `Runtime`. Cycles hold no memory between them: every cycle reads
the store, exactly like a controller process that was just restarted. A cycle can also "crash" after any
number of effects, before its status write, like a controller killed mid-cycle.
"""

from __future__ import annotations

import builtins
import copy
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from lpm.api import constants as c
from lpm.api.codec import decode
from lpm.api.models import Engine, MigrationPhase, PodMigration, SourcePolicy
from lpm.app import clock
from lpm.controller import admission
from lpm.controller.containercheckpoint.handlers import CONTAINERCHECKPOINTS
from lpm.controller.effects import (
    AgentCall,
    CreateObject,
    DeleteObject,
    Effect,
    MarkContentReady,
    Outcome,
    PatchPod,
    ProbeWebhook,
)
from lpm.controller.podcheckpoint.handlers import PODCHECKPOINTS
from lpm.controller.podmigration.handlers import PODMIGRATIONS
from lpm.controller.reconciler import Reconciler, reconcile_once
from lpm.storage.uri import ArtifactRef

NS = "default"
CRIU_RESTORE_FAILED = (
    "criu failed: type NOTIFY errno 0 log file: /run/containerd/io.containerd.runtime.v2.task/k8s.io/x/work/restore.log"
)
SOURCE, TARGET = "node-a", "node-b"
Key = tuple[str, str | None, str]
OWNER_UID = "rs-uid"
STS_UID = "sts-uid"
OWNER_SELECTOR = {"app": "web", "pod-template-hash": "h1"}


class _Killed(Exception):
    """The controller process died mid-cycle."""


class AgentSim:
    def __init__(self) -> None:
        self.down = False
        self.fail_next: dict[str, bool] = {}  # method -> permanent?
        self.lose_reply_next = False
        self.fenced: set[str] = set()  # checkpoint IDs rolled back (thawed): never frozen again
        self.thaw_sticks = False  # the runtime keeps the container paused after a thaw
        # Live engine (target): the node's hand-off with lpm-runc.
        self.staged: set[tuple[str, str]] = set()  # (checkpoint ID, container)
        self.aborted: set[str] = set()  # checkpoint IDs: final, nothing restores from them
        # Source: the next Live checkpoint's push reaches the target, then its durable copy fails (a full store).
        self.store_fails_next = False
        # Post-copy. Source: the (checkpoint, container) lazy dumps started (a second one is refused). Target:
        # each post-copy restore's page stream, as lpm-runc's supervisor records it: STREAMING, COMPLETE, BROKEN.
        self.lazy_started: set[tuple[str, str]] = set()
        self.pages: dict[tuple[str, str], str] = {}


class World:
    def __init__(
        self,
        containers: list[str],
        source_policy: str,
        source_cleanup: str,
        timeout: int,
        live: bool = False,
        owned: bool = False,
        stateful: bool = False,
        keep_name: bool = False,
        post_copy: bool = False,
        hand_off: bool = False,
    ) -> None:
        self.live = live  # the target has lpm-runc: Auto picks the live engine
        # The source's agent lets a checkpoint wait for the freeze: Freezing creates the PodCheckpoint first.
        self.hand_off = hand_off
        # Both nodes can post-copy and the source runs under RuntimeClass lpm: spec.postCopy Auto uses it.
        self.post_copy = post_copy
        self.owned = owned
        self.stateful = owned and stateful
        self.owner_uid = STS_UID if self.stateful else OWNER_UID
        self.webhook_up = True
        self.fresh_pods: list[str] = []  # pods the owner started empty (not restore targets)
        self.owner_seq = 0
        self.now = datetime(2026, 1, 1, tzinfo=UTC)
        self.store: dict[Key, dict[str, Any]] = {}
        self.rv = 0
        self.agents = {SOURCE: AgentSim(), TARGET: AgentSim()}
        self.frozen: dict[str, datetime] = {}  # pod uid -> agent's auto-thaw deadline
        self.api_faults: list[str] = []  # "reject" | "lost", consumed by writes
        self.kubelet_crashes = False
        self.history: list[str] = []
        self.violations: list[str] = []
        self.restored_names_created: set[str] = set()
        self.ever_terminal: MigrationPhase | None = None
        for node in (SOURCE, TARGET):
            self._put(
                ("nodes", None, node), {"metadata": {"name": node}, "spec": {}, "status": self._node_status(True)}
            )
        self.template_spec = {"containers": [{"name": n, "image": f"img/{n}"} for n in containers]}
        source_meta: dict[str, Any] = {"name": "web", "namespace": NS, "labels": {"app": "web"}}
        if owned:
            selector = {"app": "web"} if self.stateful else OWNER_SELECTOR
            source_meta["labels"] = {**selector, c.LABEL_MIGRATABLE: "true"}
            source_meta["ownerReferences"] = [self._owner_ref()]
        source_spec: dict[str, Any] = {"nodeName": SOURCE, **copy.deepcopy(self.template_spec)}
        if post_copy:
            source_spec["runtimeClassName"] = "lpm"
        self.source_uid = self._create_pod({"metadata": source_meta, "spec": source_spec}, phase="Running")
        self.migration_key: Key = ("podmigrations", NS, "mig")
        self._put(
            self.migration_key,
            {
                "apiVersion": c.API_VERSION,
                "kind": c.KIND_POD_MIGRATION,
                "metadata": {"name": "mig", "namespace": NS, "generation": 1},
                "spec": {
                    "podName": "web",
                    "targetNode": TARGET,
                    "sourcePolicy": source_policy,
                    "sourceCleanup": source_cleanup,
                    "timeoutSeconds": timeout,
                    "keepName": keep_name and not owned,
                },
            },
        )

    # ------------------------------------------------------------------------------------------- store
    def _put(self, key: Key, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.UUID(int=self.rv)))
        meta.setdefault("creationTimestamp", self.now.strftime("%Y-%m-%dT%H:%M:%SZ"))
        meta["resourceVersion"] = str(self.rv)
        self.store[key] = obj
        return obj

    def _create_pod(self, body: dict[str, Any], phase: str = "Pending") -> str:
        body = copy.deepcopy(body)
        body["status"] = {"phase": phase}
        obj = self._put(("pods", NS, body["metadata"]["name"]), body)
        return str(obj["metadata"]["uid"])

    def get(self, plural: str, ns: str | None, name: str) -> dict[str, Any] | None:
        obj = self.store.get((plural, ns, name))
        return copy.deepcopy(obj) if obj else None

    def _fault(self) -> str | None:
        return self.api_faults.pop(0) if self.api_faults else None

    @property
    def migration(self) -> PodMigration:
        return decode(PodMigration, self.store[self.migration_key])

    def restored_pods(self) -> list[dict[str, Any]]:
        uid = self.store[self.migration_key]["metadata"]["uid"]
        return [
            o
            for (plural, _, _), o in self.store.items()
            if plural == "pods" and (o["metadata"].get("annotations") or {}).get(c.ANNOTATION_MIGRATION_UID) == uid
        ]

    def source(self) -> dict[str, Any] | None:
        pod = self.store.get(("pods", NS, "web"))
        return pod if pod and pod["metadata"]["uid"] == self.source_uid else None

    # ----------------------------------------------------------------------------------------- effects
    def execute(self, effect: Effect) -> Outcome:
        if isinstance(effect, AgentCall):
            return self._agent(effect)
        fault = self._fault()
        if fault == "reject":
            return Outcome.failure("Conflict", "injected: the write was rejected", retryable=True)
        out = self._write(effect)
        if fault == "lost":
            return Outcome.failure("ServerTimeout", "injected: the reply was lost", retryable=True)
        return out

    def _write(self, effect: Effect) -> Outcome:
        if isinstance(effect, CreateObject):
            key = (effect.plural, effect.namespace, effect.name)
            if key in self.store:
                return Outcome.success(reason="AlreadyExists")
            body = copy.deepcopy(dict(effect.body))
            if effect.plural == "pods":
                self.restored_names_created.add(effect.name)
                self.history.append(f"create restored pod {effect.name}")
                self._create_pod(body)
            else:
                self._put(key, body)
            return Outcome.success()
        if isinstance(effect, DeleteObject):
            key = (effect.plural, effect.namespace, effect.name)
            obj = self.store.get(key)
            if obj is None or (effect.uid and obj["metadata"]["uid"] != effect.uid):
                return Outcome.success(reason="NotFound")
            restored = (obj["metadata"].get("annotations") or {}).get(c.ANNOTATION_MIGRATION_UID)
            if restored and self.source() is None and _all_running(obj):
                self.violations.append(f"deleted {effect.name}, the only running copy (the source is gone)")
            if effect.plural == "pods" and obj["metadata"]["uid"] == self.source_uid:
                ckpt = self.migration.status.checkpoint_id
                unfinished = [k for k, v in self.agents[TARGET].pages.items() if k[0] == ckpt and v != "COMPLETE"]
                if unfinished:
                    self.violations.append(f"source deleted before every page arrived: {unfinished}")
                running = [p for p in self.restored_pods() if p["status"]["phase"] == "Running"]
                if not running and not self._passes_name():
                    self.violations.append("source pod deleted before a restored pod was Running")
                self.frozen.pop(self.source_uid, None)
            del self.store[key]
            self.history.append(f"delete {effect.plural}/{effect.name}")
            return Outcome.success()
        if isinstance(effect, PatchPod):
            key = ("pods", effect.namespace, effect.name)
            pod = self.store.get(key)
            if pod is None:
                return Outcome.failure("NotFound", "pod gone", retryable=False)
            meta = effect.body.get("metadata") or {}
            if meta.get("uid") and meta["uid"] != pod["metadata"]["uid"]:
                return Outcome.failure("Conflict", "uid precondition failed", retryable=False)
            for part in ("labels", "annotations"):
                have = pod["metadata"].setdefault(part, {})
                for k, v in (meta.get(part) or {}).items():
                    if v is None:
                        have.pop(k, None)
                    else:
                        have[k] = v
            self.history.append(f"patch pod {effect.name}: {meta.get('labels')}")
            self._put(key, pod)
            return Outcome.success()
        if isinstance(effect, ProbeWebhook):
            body = copy.deepcopy(dict(effect.body))
            mark = admission.probe_mark(body) if self.webhook_up else None
            if mark is not None:
                body["metadata"]["annotations"].update(mark["metadata"]["annotations"])
            return Outcome.success(body)
        if isinstance(effect, MarkContentReady):
            obj = self.store.get((effect.plural, None, effect.name))
            if obj is None:
                return Outcome.failure("NotFound", "content gone", retryable=True)
            obj.setdefault("status", {})["readyToUse"] = True
            self._put((effect.plural, None, effect.name), obj)
            return Outcome.success()
        raise TypeError(effect)

    def _passes_name(self) -> bool:
        """A migration that keeps the pod's name may delete the frozen source once every container's checkpoint
        is staged (verified) on the target and the restore was not aborted, or (Image engine) converted to an
        image there: that is its commit point."""
        st_ = self.migration.status
        if st_.restored_pod_name != "web" or not st_.checkpoint_id or self.source_uid not in self.frozen:
            return False
        target = self.agents[TARGET]
        names = [ctr["name"] for ctr in self.template_spec["containers"]]
        if st_.engine is Engine.IMAGE:
            return {ci.container_name for ci in st_.container_images} >= set(names)
        return st_.checkpoint_id not in target.aborted and all((st_.checkpoint_id, n) in target.staged for n in names)

    def _agent(self, call: AgentCall[Any]) -> Outcome:
        agent = self.agents[call.node]
        if agent.down:
            return Outcome.failure("AgentUnavailable", f"agent on node {call.node} is down", retryable=True)
        if call.METHOD in agent.fail_next:
            permanent = agent.fail_next.pop(call.METHOD)
            return Outcome.failure(f"Agent{call.METHOD}Failed", f"injected {call.METHOD} failure", not permanent)
        req: Any = call.request  # the typed message of call.METHOD
        value: dict[str, Any] = {}
        if call.METHOD == "GetCapabilities":
            value = {
                "checkpoint_supported": True,
                "freeze_supported": True,
                "convert_supported": True,
                "live_restore_supported": self.live,
                "lazy_pages_supported": self.post_copy,
                "freeze_hand_off": self.hand_off,
            }
        elif call.METHOD == "GetRestoreState":
            assert call.node == TARGET, "the replacement waits on the target"
            ckpt = req.checkpoint_id
            waits = any(
                p["metadata"]["annotations"].get(c.ANNOTATION_RESTORE_CHECKPOINT) == ckpt
                and not p["metadata"].get("deletionTimestamp")
                for p in self.restored_pods()
            )
            state = "RESTORE_STATE_WAITING" if waits else "RESTORE_STATE_ABSENT"
            containers = []
            for n in req.container_names:
                pages = agent.pages.get((ckpt, n))
                if pages is not None and waits:  # post-copy: lpm-runc restored it at once
                    containers.append(
                        {"container_name": n, "state": "RESTORE_STATE_RESTORED", "pages": f"PAGE_STREAM_{pages}"}
                    )
                    continue
                staged = "RESTORE_STATE_STAGED" if (ckpt, n) in agent.staged else state
                containers.append({"container_name": n, "state": staged})
            value = {"containers": containers, "aborted": "rolled back" if ckpt in agent.aborted else ""}
        elif call.METHOD == "StageRestore":
            if req.checkpoint_id in agent.aborted:
                return Outcome.failure("RestoreAborted", "aborted", retryable=False)
            agent.staged.add((req.checkpoint_id, req.container_name))
        elif call.METHOD == "AbortRestore":
            agent.aborted.add(req.checkpoint_id)
        elif call.METHOD in ("Freeze", "Checkpoint") and req.checkpoint_id in agent.fenced:
            return Outcome.failure("CheckpointFenced", "checkpoint rolled back", retryable=False)
        elif call.METHOD == "Checkpoint" and req.options.await_freeze and req.pod_uid not in self.frozen:
            # The agent waits for the migration's Freeze; in this sequential world it has not come, so the wait
            # runs out (a crash between the PodCheckpoint's creation and the Freeze, or a Freeze that failed).
            if not self.hand_off:
                self.violations.append("a Checkpoint waited for a freeze at an agent that cannot")
            return Outcome.failure("FreezeNotYet", "sim: the migration's freeze has not come", retryable=True)
        elif call.METHOD == "Freeze":
            assert call.node == SOURCE, "freeze goes to the source node's agent"
            if self.migration.status.phase.terminal:
                self.violations.append("a Freeze was sent after the migration ended")
            secs = req.auto_thaw_after.ToTimedelta().total_seconds() if req.HasField("auto_thaw_after") else 600
            if req.pod_uid == self.source_uid and self.source() is not None:
                self.frozen[req.pod_uid] = self.now + timedelta(seconds=secs)
        elif call.METHOD == "Thaw":
            agent.fenced.add(req.checkpoint_id)
            if not agent.thaw_sticks:
                self.frozen.pop(req.pod_uid, None)
            state = "FREEZE_STATE_FROZEN" if req.pod_uid in self.frozen else "FREEZE_STATE_THAWED"
            value = {"containers": [{"container_name": n, "state": state} for n in req.container_names]}
        elif call.METHOD == "CheckEligibility":
            value = {"checked": ["sim: nothing found"]}
        elif call.METHOD == "Checkpoint" and req.options.lazy_pages_above_bytes:
            key = (req.checkpoint_id, req.container_name)
            if not self.post_copy:
                self.violations.append("post-copy asked of nodes that cannot")
            if key in agent.lazy_started:
                return Outcome.failure("PostCopyFailed", "a lazy dump was started before", retryable=False)
            agent.lazy_started.add(key)
            dest = self.agents[req.options.stage_on_node]
            if req.checkpoint_id not in dest.aborted:
                dest.staged.add(key)
                dest.pages[key] = "STREAMING"
            # Adversarial: the agent says every page went before the target does (the verdict is the target's).
            value = {"memory_streamed": True, "pages_message": "sim: page server done"}
        elif call.METHOD == "Checkpoint":
            target = self.agents.get(req.options.stage_on_node)
            if target is not None and req.checkpoint_id not in target.aborted:
                # Live: the archive is pushed to the target's agent, verified there, before the durable copy.
                target.staged.add((req.checkpoint_id, req.container_name))
            if agent.store_fails_next:
                agent.store_fails_next = False
                return Outcome.failure("StorageFull", "injected: no space left on the store", retryable=False)
            ref = ArtifactRef(req.pod_uid, req.checkpoint_id, req.container_name)
            value = {"artifact": {"artifact_uri": ref.uri, "compressed_size_bytes": "10"}, "attempts": 1}
        elif call.METHOD == "ConvertCheckpointToImage":
            ref = ArtifactRef.parse(req.artifact_uri)
            value = {"image_ref": f"localhost/lpm-checkpoint/{ref.container}:{ref.checkpoint_id}"}
        if agent.lose_reply_next:
            agent.lose_reply_next = False
            return Outcome.failure("AgentDeadlineExceeded", "injected: reply lost", retryable=True)
        return Outcome.success(value)

    # ----------------------------------------------------------------------------------------- cycles
    # The production cycle (`reconcile_once`: each kind's real `observe`, its decider to a fixed point, one
    # status write) runs against this world, which is its `Cluster`: reads, and resourceVersion-guarded status
    # writes that API faults can reject.
    def list(self, plural: str, namespace: str | None, label_selector: str = "") -> list[dict[str, Any]]:
        wanted = dict(term.split("=", 1) for term in label_selector.split(",") if term)
        return [
            copy.deepcopy(obj)
            for (kind, ns, _), obj in self.store.items()
            if kind == plural
            and (namespace is None or ns == namespace)
            and all((obj["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]

    def replace_status(self, plural: str, obj: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
        if self._fault() == "reject":
            return False
        meta = obj["metadata"]
        key = (plural, meta.get("namespace"), meta["name"])
        current = self.store.get(key)
        if current is None or current["metadata"]["resourceVersion"] != meta["resourceVersion"]:
            return False  # conflict
        current["status"] = copy.deepcopy(dict(status))
        self._put(key, current)
        return True

    def emit_event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        pass

    def _cycle(self, rec: Reconciler[Any], key: Key, crash_after: int | None) -> None:
        """One production cycle; with `crash_after`, the controller dies before its effect number
        `crash_after`, so nothing after it (the status write included) happens."""
        done = 0

        def execute(effect: Effect) -> Outcome:
            nonlocal done
            if crash_after is not None and done >= crash_after:
                raise _Killed
            done += 1
            return self.execute(effect)

        _, ns, name = key
        try:
            reconcile_once(self, execute, lambda: self.now, rec, str(ns), name)
        except _Killed:
            pass

    def reconcile_migration(self, crash_after: int | None = None) -> None:
        self._cycle(PODMIGRATIONS, self.migration_key, crash_after)
        self._check_terminal()

    def reconcile_checkpoints(self, crash_after: int | None = None) -> None:
        for key in list(self.store):
            if key[0] == c.PLURAL_POD_CHECKPOINTS:
                self._cycle(PODCHECKPOINTS, key, crash_after)
            elif key[0] == c.PLURAL_CONTAINER_CHECKPOINTS:
                self._cycle(CONTAINERCHECKPOINTS, key, crash_after)

    # ------------------------------------------------------------------------------------- the world
    def page_streams_end(self, broken: bool) -> None:
        """Every post-copy page stream under way ends: each page arrived, or the stream broke (lpm-runc's
        supervisor then kills the replacement's process, and refuses to start it again)."""
        target = self.agents[TARGET]
        for key, state in target.pages.items():
            if state == "STREAMING":
                target.pages[key] = "BROKEN" if broken else "COMPLETE"

    def kubelet(self) -> None:
        target = self.agents[TARGET]
        for pod in self.restored_pods():
            ckpt = pod["metadata"]["annotations"].get(c.ANNOTATION_RESTORE_CHECKPOINT)
            names = [ctr["name"] for ctr in pod["spec"]["containers"]]
            if ckpt and any(target.pages.get((ckpt, n)) == "BROKEN" for n in names) and _all_running(pod):
                waiting = {"reason": "RunContainerError", "message": "lpm-runc: the post-copy page stream broke"}
                pod["status"] = {
                    "phase": "Running",
                    "containerStatuses": [{"name": n, "state": {"waiting": waiting}} for n in names],
                }
                self._put(("pods", NS, pod["metadata"]["name"]), pod)
                continue
            if ckpt and pod["status"]["phase"] == "Pending":
                # Live: each container waits in lpm-runc until it is staged; an aborted checkpoint fails it.
                names = [ctr["name"] for ctr in pod["spec"]["containers"]]
                if ckpt in target.aborted:
                    waiting = {"reason": "RunContainerError", "message": "lpm-runc: migration aborted"}
                    statuses = [{"name": n, "state": {"waiting": waiting}} for n in names]
                    pod["status"] = {"phase": "Pending", "containerStatuses": statuses}
                elif all((ckpt, n) in target.staged for n in names) and not self.kubelet_crashes:
                    statuses = [{"name": n, "state": {"running": {}}} for n in names]
                    pod["status"] = {"phase": "Running", "containerStatuses": statuses}
                else:
                    continue
                if self.migration.spec.source_policy is SourcePolicy.FREEZE and self.source_uid not in self.frozen:
                    if pod["status"]["phase"] == "Running" and self.source() is not None:
                        self.violations.append("lpm-runc restored the replacement next to a thawed source")
                self._put(("pods", NS, pod["metadata"]["name"]), pod)
            elif pod["status"]["phase"] == "Pending":
                if self.kubelet_crashes:
                    # Half the crashes are CRIU failing the restore, reported with a node path as containerd does.
                    message = "boom" if self.rv % 2 else CRIU_RESTORE_FAILED
                    pod["status"] = {
                        "phase": "Running",
                        "containerStatuses": [
                            {"name": "x", "state": {"waiting": {"reason": "CrashLoopBackOff", "message": message}}}
                        ],
                    }
                else:
                    pod["status"] = {"phase": "Running"}
                self._put(("pods", NS, pod["metadata"]["name"]), pod)

    def _owner_ref(self) -> dict[str, Any]:
        if self.stateful:
            return {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "uid": STS_UID, "controller": True}
        return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-h1", "uid": OWNER_UID, "controller": True}

    def owned_pods(self) -> builtins.list[dict[str, Any]]:
        return [
            p
            for (plural, _, _), p in self.store.items()
            if plural == "pods"
            and any(r.get("uid") == self.owner_uid for r in p["metadata"].get("ownerReferences") or [])
            and not p["metadata"].get("deletionTimestamp")
        ]

    def owner_sync(self) -> None:
        """The ReplicaSet controller (replicas: 1): releases pods whose labels no longer match, adopts orphans
        that match, creates a pod from its template (through the admission webhook) when it has too few and
        deletes one (not running before running, then the newest) when it has too many. A frozen source it
        deletes is a violation: its state would live nowhere else."""
        if not self.owned:
            return
        if self.stateful:
            return self._stateful_sync()
        for key, p in list(self.store.items()):
            if key[0] != "pods" or p["metadata"].get("deletionTimestamp"):
                continue
            labels = p["metadata"].get("labels") or {}
            matches = all(labels.get(k) == v for k, v in OWNER_SELECTOR.items())
            refs = p["metadata"].get("ownerReferences") or []
            mine = any(r.get("uid") == OWNER_UID for r in refs)
            if mine and not matches:
                p["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != OWNER_UID]
                self._put(key, p)
            elif not mine and matches and not any(r.get("controller") for r in refs):
                p["metadata"]["ownerReferences"] = [*refs, self._owner_ref()]
                self._put(key, p)
        pods = self.owned_pods()
        if not pods:
            self._owner_creates()
        elif len(pods) > 1:
            # As a ReplicaSet ranks them: not running first, then the newest.
            ranked = sorted(
                pods, key=lambda p: (p["status"]["phase"] == "Running", -int(p["metadata"]["resourceVersion"]))
            )
            victim = ranked[0]
            if victim["metadata"]["uid"] == self.source_uid and self.source_uid in self.frozen:
                self.violations.append("the owner scaled away the frozen source")
            del self.store[("pods", NS, victim["metadata"]["name"])]
            self.history.append(f"owner deletes {victim['metadata']['name']}")

    def _stateful_sync(self) -> None:
        """The StatefulSet controller (replicas: 1): once no pod is called web, it creates web from its template
        through the admission webhook. A fresh web while LPM's webhook is up and a migration is restoring it is
        a violation: its state would be lost."""
        if ("pods", NS, "web") in self.store:
            return
        self.owner_seq += 1
        meta = {"name": "web", "namespace": NS, "labels": {"app": "web", c.LABEL_MIGRATABLE: "true"}}
        pod: dict[str, Any] = {
            "metadata": {**meta, "ownerReferences": [self._owner_ref()]},
            "spec": copy.deepcopy(self.template_spec),
        }
        if self.webhook_up:
            for m in admission.waiting_for(pod, [self.migration]):
                wanted = admission.replacement(pod, m, None)
                if wanted is not None:
                    self.restored_names_created.add("web")
                    self.history.append("statefulset creates restore target web")
                    self._create_pod(wanted)
                    return
            if self.migration.status.phase is MigrationPhase.RESTORING:
                self.violations.append("the StatefulSet started a fresh web while its migration was restoring it")
        pod["spec"]["nodeName"] = TARGET
        self.fresh_pods.append(f"web#{self.owner_seq}")
        self.history.append("statefulset creates fresh pod web")
        self._create_pod(pod, phase="Running")

    def _owner_creates(self) -> None:
        self.owner_seq += 1
        meta = {
            "generateName": "web-h1-",
            "namespace": NS,
            "labels": {**OWNER_SELECTOR, c.LABEL_MIGRATABLE: "true"},
            "ownerReferences": [self._owner_ref()],
        }
        pod: dict[str, Any] = {"metadata": meta, "spec": copy.deepcopy(self.template_spec)}
        if self.webhook_up:
            for m in admission.waiting_for(pod, [self.migration]):
                if self.store.get(("pods", NS, m.status.restored_pod_name or "")):
                    continue
                source = self.store.get(("pods", NS, m.spec.pod_name))
                wanted = admission.replacement(pod, m, source) if source else None
                if wanted is not None:
                    self.restored_names_created.add(wanted["metadata"]["name"])
                    self.history.append(f"owner creates restore target {wanted['metadata']['name']}")
                    self._create_pod(wanted)
                    return
        name = f"web-h1-fresh{self.owner_seq}"
        pod["metadata"]["name"] = name
        pod["spec"]["nodeName"] = TARGET
        if self.webhook_up:
            # LPM's state let the owner start an empty pod although the webhook was there to prevent it.
            source = self.source()
            released = source is not None and (source["metadata"].get("labels") or {}).get("pod-template-hash") != "h1"
            if released:
                self.violations.append(f"the owner started a fresh pod {name} while the source was released")
        self.fresh_pods.append(name)
        self.history.append(f"owner creates fresh pod {name}")
        self._create_pod(pod, phase="Running")

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        for uid, deadline in list(self.frozen.items()):
            if self.now >= deadline:
                del self.frozen[uid]  # the agent's own auto-thaw

    def set_target_ready(self, ready: bool) -> None:
        node = self.store[("nodes", None, TARGET)]
        node["status"] = self._node_status(ready)
        self._put(("nodes", None, TARGET), node)

    def _node_status(self, ready: bool) -> dict[str, Any]:
        handlers = [{"name": "runc"}] + ([{"name": c.RUNTIME_CLASS_LIVE}] if self.live else [])
        return dict(_ready(ready), runtimeHandlers=handlers)

    def _check_terminal(self) -> None:
        phase = self.migration.status.phase
        if self.ever_terminal is not None and phase is not self.ever_terminal:
            self.violations.append(f"terminal phase {self.ever_terminal.value} changed to {phase.value}")
        if phase.terminal and self.ever_terminal is None:
            self.ever_terminal = phase


def _all_running(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    return status.get("phase") == "Running" and all("running" in cs.get("state", {}) for cs in statuses)


def _ready(ready: bool) -> dict[str, Any]:
    return {"conditions": [{"type": "Ready", "status": "True" if ready else "False", "message": "sim"}]}


def elapsed(world: World) -> float:
    return clock.seconds_between(world.migration.status.start_time, world.now) or 0.0
