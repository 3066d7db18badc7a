"""Checkpoint retention: how many finished checkpoints of a pod to keep, and for how long.

Every migration leaves a PodCheckpoint (and, with the default `checkpointRetention: Retain`, its stored
archives: process memory) behind; without a bound they fill the repository. A policy is
`keep=N,maxAge=DURATION` (either part may be left out; 0 means no bound), read from the annotation
`lpm.my.domain/checkpoint-retention` on, in order of precedence: the PodCheckpoint itself, the pod it was
taken of (while that pod exists), its Namespace; else the controller's flags (`--checkpoint-keep`,
`--checkpoint-max-age`; by default 3 per pod and 7 days).

A finished (Ready or Failed) checkpoint expires when it is older than maxAge, or when `keep` newer finished
checkpoints of the same pod exist. One still being taken, or one a running PodMigration uses, never expires.
An expired checkpoint goes as a whole: its PodCheckpoint is set to `deletionPolicy: Delete` and deleted (its
finalizer then deletes the stored archives through an agent), with an Event saying which policy expired it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from lpm.api import constants as c
from lpm.api.models import CheckpointPhase, DeletionPolicy, MigrationPhase

log = logging.getLogger(__name__)

ANNOTATION: Final = f"{c.GROUP}/checkpoint-retention"
CHECK_SECONDS: Final = 60.0  # how late an expiry may be
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+)([smhd])")


def parse_duration(text: str) -> float:
    """`90s`, `30m`, `72h`, `7d`, or `0` (no bound)."""
    if text == "0":
        return 0.0
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"duration {text!r}: use a number and s, m, h or d (e.g. 72h), or 0 for no bound")
    return float(int(match.group(1)) * _UNITS[match.group(2)])


@dataclass(frozen=True)
class RetentionPolicy:
    keep: int = 3  # finished checkpoints kept per pod; 0: no bound
    max_age: float = 7 * 86400.0  # seconds after it finished; 0: no bound

    @classmethod
    def parse(cls, text: str, default: RetentionPolicy | None = None) -> RetentionPolicy:
        """`keep=N,maxAge=DURATION`; a part left out comes from `default`."""
        base = default or cls()
        keep, max_age = base.keep, base.max_age
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"retention {text!r}: {part!r} is not key=value (keep=N,maxAge=72h)")
            if key == "keep":
                if not value.isdigit():
                    raise ValueError(f"retention {text!r}: keep must be a whole number (0: no bound)")
                keep = int(value)
            elif key == "maxAge":
                max_age = parse_duration(value)
            else:
                raise ValueError(f"retention {text!r}: unknown key {key!r} (keep, maxAge)")
        return cls(keep, max_age)

    def describe(self) -> str:
        age = "no age bound" if not self.max_age else f"maxAge {self.max_age / 3600:g}h"
        return f"keep {self.keep or 'all'}, {age}"


@dataclass(frozen=True)
class Checkpoint:
    """What retention needs to know of one PodCheckpoint."""

    name: str
    finished_at: float | None  # None: still being taken
    in_use: bool = False  # a PodMigration that is not finished uses it


def policy_for(
    sources: Sequence[tuple[str, Mapping[str, str] | None]], default: RetentionPolicy
) -> tuple[RetentionPolicy, str]:
    """The first source (name, annotations) with the annotation wins; (policy, where it came from)."""
    for where, found in sources:
        text = (found or {}).get(ANNOTATION)
        if text is not None:
            return RetentionPolicy.parse(text, default), where
    return default, "the controller's default"


def expired(own: Checkpoint, group: Sequence[Checkpoint], policy: RetentionPolicy, now: float) -> str | None:
    """Why `own` (one of the pod's checkpoints in `group`) has expired, or None while it is kept."""
    if own.finished_at is None or own.in_use:
        return None
    if policy.max_age and now - own.finished_at > policy.max_age:
        return f"finished {(now - own.finished_at) / 3600:.1f}h ago, older than maxAge {policy.max_age / 3600:g}h"
    if policy.keep:
        newer = [
            other
            for other in group
            if other.finished_at is not None
            and other.name != own.name
            and (other.finished_at, other.name) > (own.finished_at, own.name)
        ]
        if len(newer) >= policy.keep:
            return f"{len(newer)} newer finished checkpoints of the pod exist, keep is {policy.keep}"
    return None


def _finished(obj: Mapping[str, Any]) -> bool:
    return CheckpointPhase((obj.get("status") or {}).get("phase") or CheckpointPhase.PENDING).terminal


def _migration_done(obj: Mapping[str, Any]) -> bool:
    return MigrationPhase((obj.get("status") or {}).get("phase") or MigrationPhase.PENDING).terminal


def _time(value: Any) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def summarize(obj: Mapping[str, Any], in_use: set[str]) -> Checkpoint:
    status = obj.get("status") or {}
    meta = obj.get("metadata") or {}
    finished = _finished(obj)
    at = _time(status.get("completionTime")) if finished else None
    if finished and at is None:
        at = _time(meta.get("creationTimestamp"))
    return Checkpoint(str(meta.get("name")), at, str(meta.get("name")) in in_use)


def sweep(rt: Any, obj: Mapping[str, Any], default: RetentionPolicy) -> str | None:
    """Expire one PodCheckpoint if its policy says so. Returns why it was expired, or None."""
    meta = obj.get("metadata") or {}
    ns, name = str(meta.get("namespace")), str(meta.get("name"))
    pod_name = str((obj.get("spec") or {}).get("podName") or "")
    if meta.get("deletionTimestamp") or not _finished(obj):
        return None
    migrations = rt.kube.list(c.PLURAL_POD_MIGRATIONS, ns)
    in_use = {str((m.get("status") or {}).get("podCheckpointName")) for m in migrations if not _migration_done(m)}
    group = [
        summarize(o, in_use)
        for o in rt.kube.list(c.PLURAL_POD_CHECKPOINTS, ns)
        if (o.get("spec") or {}).get("podName") == pod_name and not (o.get("metadata") or {}).get("deletionTimestamp")
    ]
    own = next((g for g in group if g.name == name), None)
    if own is None:
        return None
    pod = rt.kube.get("pods", ns, pod_name) if pod_name else None
    namespace = rt.kube.get("namespaces", None, ns)
    sources = [
        (f"PodCheckpoint {name}", meta.get("annotations")),
        (f"pod {pod_name}", (pod or {}).get("metadata", {}).get("annotations")),
        (f"namespace {ns}", (namespace or {}).get("metadata", {}).get("annotations")),
    ]
    try:
        policy, where = policy_for(sources, default)
    except ValueError as exc:
        rt.kube.emit_event(obj, "Warning", "InvalidRetention", f"{exc}; the checkpoint is kept")
        return None
    why = expired(own, group, policy, rt.now().timestamp())
    if why is None:
        return None
    message = f"checkpoint expired ({policy.describe()}, from {where}): {why}; deleting it and its stored data"
    rt.kube.emit_event(obj, "Normal", "CheckpointExpired", message)
    if (obj.get("spec") or {}).get("deletionPolicy") != DeletionPolicy.DELETE.value:
        outcome = rt.kube.patch(c.PLURAL_POD_CHECKPOINTS, ns, name, {"spec": {"deletionPolicy": "Delete"}})
        if not outcome.ok:
            log.warning("PodCheckpoint %s/%s expired but could not be set to Delete: %s", ns, name, outcome)
            return None
    outcome = rt.kube.delete(c.PLURAL_POD_CHECKPOINTS, ns, name, str(meta.get("uid")))
    log.info("PodCheckpoint %s/%s: %s: %s", ns, name, message, outcome)
    return why
