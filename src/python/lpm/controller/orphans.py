"""Sweeps stored checkpoints whose objects are gone.

A checkpoint in the shared repository belongs to the objects that name it (pod UID + checkpoint ID): a
PodCheckpoint or ContainerCheckpoint (status), their cluster-scoped Contents (spec; these outlive a
PodCheckpoint deleted with `deletionPolicy: Retain`, as a VolumeSnapshotContent does), or a PodMigration
(status; it names its checkpoint before the PodCheckpoint exists). One that no object names is an orphan: its
objects were deleted while their controller was down, an agent wrote it for an object deleted meanwhile, or
someone copied it in. Every `interval` the sweeper asks one agent for the repository's listing
(ListCheckpoints) and deletes, through that agent, each orphan that was already an orphan one `grace` ago
(remembered in memory: a checkpoint being written while its object is created is never caught in between).
Runs only when the controller watches the whole cluster: objects in namespaces it cannot see would look gone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from lpm.api import constants as c
from lpm.api.agent.v1 import agent_pb2 as pb
from lpm.controller.effects import DeleteCheckpoint, ListCheckpoints

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (pod UID, checkpoint ID)


def referenced(objects: Mapping[str, Iterable[Mapping[str, Any]]]) -> set[Key]:
    """Every (pod UID, checkpoint ID) an object names, by plural."""
    out: set[Key] = set()
    for plural, items in objects.items():
        where = "spec" if plural.endswith("contents") else "status"
        for obj in items:
            part = obj.get(where) or {}
            uid, ckpt = part.get("podUID"), part.get("checkpointID")
            if uid and ckpt:
                out.add((str(uid), str(ckpt)))
    return out


def due(stored: Iterable[Key], named: set[Key], first_seen: dict[Key, float], now: float, grace: float) -> list[Key]:
    """The orphans old enough to delete; updates `first_seen` (forgets keys no longer orphans or gone)."""
    orphans = set(stored) - named
    for key in list(first_seen):
        if key not in orphans:
            del first_seen[key]
    for key in orphans:
        first_seen.setdefault(key, now)
    return sorted(k for k in orphans if now - first_seen[k] >= grace)


PLURALS = (
    c.PLURAL_POD_CHECKPOINTS,
    c.PLURAL_CONTAINER_CHECKPOINTS,
    c.PLURAL_POD_CHECKPOINT_CONTENTS,
    c.PLURAL_CONTAINER_CHECKPOINT_CONTENTS,
    c.PLURAL_POD_MIGRATIONS,
)


class OrphanSweeper:
    def __init__(self, rt: Any, interval: float, grace: float, stop: threading.Event) -> None:
        self.rt, self.interval, self.grace, self.stop = rt, interval, grace, stop
        self.first_seen: dict[Key, float] = {}
        self.thread = threading.Thread(target=self._run, name="orphan-sweep", daemon=True)

    def start(self) -> OrphanSweeper:
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.sweep_once()
            except Exception as exc:  # the next round tries again
                log.warning("orphan checkpoint sweep failed: %s", exc)

    def sweep_once(self, now: float | None = None) -> list[Key]:
        """One round; returns the checkpoints it deleted."""
        node, listing = self._listing()
        if node is None:
            return []
        named = referenced({plural: self.rt.kube.list(plural, None) for plural in PLURALS})
        deleted = []
        for uid, ckpt in due(listing, named, self.first_seen, time.monotonic() if now is None else now, self.grace):
            outcome = self.rt.execute(
                DeleteCheckpoint(node, pb.DeleteCheckpointRequest(pod_uid=uid, checkpoint_id=ckpt))
            )
            log.info("checkpoint %s/%s is named by no object: deleted through %s: %s", uid, ckpt, node, outcome)
            if outcome.ok:
                self.first_seen.pop((uid, ckpt), None)
                deleted.append((uid, ckpt))
        return deleted

    def _listing(self) -> tuple[str | None, list[Key]]:
        """The repository's listing from the first node whose agent answers."""
        for node in sorted(n["metadata"]["name"] for n in self.rt.kube.list("nodes", None)):
            outcome = self.rt.execute(ListCheckpoints(node))
            if outcome.ok:
                items = (outcome.value or {}).get("checkpoints") or []
                return node, [(str(i["pod_uid"]), str(i["checkpoint_id"])) for i in items]
        return None, []
