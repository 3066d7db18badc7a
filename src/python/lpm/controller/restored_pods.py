"""Wakes a PodMigration as soon as its replacement runs, instead of at the next resync.

- `RestoredPodWatcher` watches the restored pods (server-side label selector, so only LPM's own pods) and
  reconciles their PodMigration as soon as one changes: "the restored pod is Running" is then seen in
  milliseconds.
- `ReplacementStartWaiter` asks the target's agent, from the checkpoint on, to answer the moment lpm-runc
  restored every container of a Live migration's replacement and containerd runs it (GetRestoreState with
  wait_for_start), and then reconciles the migration: the kubelet reports the start only at its next relist, up
  to a second later (`decide._replacement_started` says when the agent's word counts).

Best effort by design: the resync timer still covers anything these miss, and the cycle they trigger asks again
before it acts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from google.protobuf.duration_pb2 import Duration
from kubernetes import client, watch

from lpm.api import constants as c
from lpm.api.agent.v1 import agent_pb2 as pb
from lpm.api.codec import decode
from lpm.api.models import Engine, MigrationPhase, PodMigration
from lpm.api.views import PodView
from lpm.controller.effects import GetRestoreState
from lpm.controller.podmigration.handlers import PODMIGRATIONS
from lpm.controller.runtime import Runtime

log = logging.getLogger(__name__)


class RestoredPodWatcher:
    def __init__(self, rt: Runtime, namespace: str | None, stop: threading.Event) -> None:
        self.rt = rt
        self.namespace = namespace
        self.stop = stop
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="restored-pod")
        self.thread = threading.Thread(target=self._run, name="restored-pod-watch", daemon=True)

    def start(self) -> RestoredPodWatcher:
        self.thread.start()
        return self

    def _run(self) -> None:
        core = client.CoreV1Api(self.rt.kube.api_client)
        selector = f"{c.LABEL_RESTORED}=true"
        while not self.stop.is_set():
            w = watch.Watch()
            try:
                if self.namespace:
                    stream = w.stream(
                        core.list_namespaced_pod, self.namespace, label_selector=selector, timeout_seconds=60
                    )
                else:
                    stream = w.stream(core.list_pod_for_all_namespaces, label_selector=selector, timeout_seconds=60)
                for event in stream:
                    if self.stop.is_set():
                        break
                    self._poke(event.get("object"))
            except Exception as exc:  # reconnect; the resync timer covers the gap
                log.debug("restored pod watch restarts: %s", exc)
                self.stop.wait(1.0)
            finally:
                w.stop()

    def _poke(self, pod: Any) -> None:
        meta = getattr(pod, "metadata", None)
        migration = (getattr(meta, "labels", None) or {}).get(c.LABEL_MIGRATION)
        # Only for migrations kopf handed to this replica lately: a standby (paused by peering) stays passive.
        if (
            meta is not None
            and migration
            and self.rt.recently_seen((c.PLURAL_POD_MIGRATIONS, meta.namespace, migration))
        ):
            self.pool.submit(self.rt.reconcile, PODMIGRATIONS, meta.namespace, migration)


class ReplacementStartWaiter:
    """One waiter per Live migration between its checkpoint and its commit (at most MAX_WAITERS at once: each
    holds one of the target agent's workers while it waits; the others wake at their resync)."""

    MAX_WAITERS = 4
    PHASES = frozenset({MigrationPhase.CHECKPOINTING, MigrationPhase.TRANSFERRING, MigrationPhase.RESTORING})
    POLL = Duration(seconds=5)  # the agent answers at most this late; the next poll follows at once
    LIFETIME_SECONDS = 900.0  # a migration's checkpoint takes minutes at most; the resync covers the rest

    def __init__(self, rt: Runtime, stop: threading.Event) -> None:
        self.rt = rt
        self.stop = stop
        self.pool = ThreadPoolExecutor(max_workers=self.MAX_WAITERS, thread_name_prefix="start-waiter")
        self._active: set[str] = set()
        self._guard = threading.Lock()

    def offer(self, body: Mapping[str, Any]) -> None:
        """A PodMigration changed (kopf's event): start waiting for its replacement if it needs a waiter."""
        m = decode(PodMigration, dict(body))
        st, uid = m.status, str(m.metadata.get("uid") or "")
        if (
            st.engine is not Engine.LIVE
            or st.phase not in self.PHASES
            or not (uid and st.checkpoint_id and st.restored_pod_name)
        ):
            return
        with self._guard:
            if uid in self._active or len(self._active) >= self.MAX_WAITERS:
                return
            self._active.add(uid)
        ns, name = str(m.metadata.get("namespace")), str(m.metadata.get("name"))
        target, pod = m.spec.target_node, st.restored_pod_name
        self.pool.submit(self._wait, ns, name, uid, target, st.checkpoint_id, pod)

    def _wait(self, ns: str, name: str, uid: str, target: str, checkpoint_id: str, pod_name: str) -> None:
        try:
            deadline = time.monotonic() + self.LIFETIME_SECONDS
            while not self.stop.is_set() and time.monotonic() < deadline and self._still_waiting(ns, name, uid):
                raw = self.rt.kube.get("pods", ns, pod_name)
                pod = PodView.from_api(raw) if raw else None
                if pod is None or pod.deleting or pod.post_start_hooks or set(pod.started) >= set(pod.containers):
                    return  # gone, or only the kubelet's word counts, or it already gave it (the watch above)
                request = pb.RestoreStateRequest(
                    checkpoint_id=checkpoint_id,
                    container_names=list(pod.containers),
                    wait=self.POLL,
                    wait_for_start=True,
                )
                out = self.rt.agents.call(GetRestoreState(target, request))
                if not out.ok:
                    self.stop.wait(1.0)
                    continue
                if out.value.get("aborted"):
                    return
                states = {str(x.get("container_name")): x for x in out.value.get("containers") or []}
                if all(states.get(n, {}).get("started") for n in pod.containers):
                    log.debug("PodMigration %s/%s: %s runs on %s by its agent's word", ns, name, pod_name, target)
                    self.rt.reconcile(PODMIGRATIONS, ns, name)
                    return
        except Exception:  # best effort: the resync timer covers this migration
            log.exception("PodMigration %s/%s: waiting for its replacement to start failed", ns, name)
        finally:
            with self._guard:
                self._active.discard(uid)

    def _still_waiting(self, ns: str, name: str, uid: str) -> bool:
        raw = self.rt.kube.get(c.PLURAL_POD_MIGRATIONS, ns, name)
        if raw is None or (raw.get("metadata") or {}).get("uid") != uid:
            return False
        return decode(PodMigration, raw).status.phase in self.PHASES
