"""Watches the restored pods (server-side label selector, so only LPM's own pods) and reconciles their
PodMigration as soon as one changes: "the restored pod is Running" is then seen in milliseconds instead of
at the next resync. Best effort by design: the resync timer still covers anything this misses."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client, watch

from lpm.api import constants as c
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
