"""Read-only views of Pods and Nodes: the few facts the deciders and the CLI use, parsed once from API JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Waiting reasons after which a restored container will not come up without someone changing something.
_STUCK_WAITING = frozenset(
    {
        "CrashLoopBackOff",
        "ErrImageNeverPull",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerError",
        "CreateContainerConfigError",
        "RunContainerError",
    }
)


@dataclass(frozen=True)
class PodView:
    name: str
    namespace: str
    uid: str
    node_name: str | None
    phase: str
    deleting: bool
    containers: tuple[str, ...]
    controller: str | None = None  # "ReplicaSet/web-5d8f" when a controller owns the pod
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    problem: str | None = None  # why a container is stuck, e.g. "container app: CrashLoopBackOff (...)"
    started: tuple[str, ...] = ()  # containers whose status is running
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def running(self) -> bool:
        return self.phase == "Running" and not self.deleting

    @property
    def host_namespaces(self) -> tuple[str, ...]:
        """The pod spec's hostNetwork, hostPID and hostIPC that are true: namespaces it shares with its node."""
        spec = self.raw.get("spec") or {}
        return tuple(key for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key) is True)

    @classmethod
    def from_api(cls, pod: Mapping[str, Any]) -> PodView:
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        controller = next(
            (
                f"{ref.get('kind')}/{ref.get('name')}"
                for ref in meta.get("ownerReferences") or []
                if ref.get("controller")
            ),
            None,
        )
        problem = None
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            terminated = (cs.get("state") or {}).get("terminated") or {}
            if waiting.get("reason") in _STUCK_WAITING:
                problem = f"container {cs.get('name')}: {waiting.get('reason')} ({waiting.get('message', '')})"
                break
            if terminated and terminated.get("exitCode", 0) != 0:
                problem = (
                    f"container {cs.get('name')}: exited {terminated.get('exitCode')} "
                    f"({terminated.get('reason', '')} {terminated.get('message', '')})".rstrip()
                )
                break
        return cls(
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace", "")),
            uid=str(meta.get("uid", "")),
            node_name=spec.get("nodeName"),
            phase=str(status.get("phase") or "Pending"),
            deleting=bool(meta.get("deletionTimestamp")),
            containers=tuple(str(c["name"]) for c in spec.get("containers") or []),
            controller=controller,
            labels=dict(meta.get("labels") or {}),
            annotations=dict(meta.get("annotations") or {}),
            problem=problem,
            started=tuple(
                str(cs.get("name"))
                for cs in status.get("containerStatuses") or []
                if (cs.get("state") or {}).get("running") is not None
            ),
            raw=pod,
        )


@dataclass(frozen=True)
class NodeView:
    name: str
    ready: bool
    ready_message: str
    unschedulable: bool
    deleting: bool = False
    # The runtime handlers the kubelet reports (status.runtimeHandlers); None when it reports none at all.
    runtime_handlers: tuple[str, ...] | None = None

    @classmethod
    def from_api(cls, node: Mapping[str, Any]) -> NodeView:
        meta = node.get("metadata") or {}
        reported = (node.get("status") or {}).get("runtimeHandlers")
        conds = (node.get("status") or {}).get("conditions") or []
        ready = next((c for c in conds if c.get("type") == "Ready"), None)
        return cls(
            name=str(meta.get("name", "")),
            ready=bool(ready and ready.get("status") == "True"),
            ready_message=str((ready or {}).get("message") or "no Ready condition reported"),
            unschedulable=bool((node.get("spec") or {}).get("unschedulable")),
            deleting=bool(meta.get("deletionTimestamp")),
            runtime_handlers=tuple(str(h.get("name") or "") for h in reported) if reported else None,
        )


def controller_owner(metadata: Mapping[str, Any], kind: str) -> tuple[str, str] | None:
    """(name, uid) of the object of `kind` that controls this one (ownerReferences with controller: true)."""
    for ref in metadata.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == kind and ref.get("name"):
            return str(ref["name"]), str(ref.get("uid") or "")
    return None


def owner_if_same(obj: Mapping[str, Any] | None, uid: str) -> Mapping[str, Any] | None:
    """`obj`, if it is still the very owner (same UID): a namesake created later is not our owner."""
    if obj is None or (uid and (obj.get("metadata") or {}).get("uid") != uid):
        return None
    return obj
