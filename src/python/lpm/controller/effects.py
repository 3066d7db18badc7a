"""The vocabulary shared by the three reconcilers: effects a decider asks for, and their outcomes.

A reconcile cycle is: read the world -> `decide(observed)` -> execute the effects it asked for -> feed their
outcomes back into `decide` (same observation, plus outcomes) until it asks for nothing new -> apply the one
status patch and the events of the last answer. Deciders look outcomes up by `Effect.key`, so an effect whose
outcome is known is never asked for twice in a cycle, and the pure part stays free of I/O.

Effects are idempotent by construction (deterministic names, UID preconditions, agent calls keyed by
checkpoint ID), which is what makes a cycle safe to kill and rerun at any point.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from lpm.api.agent.v1 import agent_pb2 as pb


@dataclass(frozen=True)
class Outcome:
    """What an effect did. `reason` is CamelCase, `message` tells a user what to do about it."""

    ok: bool
    retryable: bool = False
    reason: str = ""
    message: str = ""
    value: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def success(cls, value: Mapping[str, Any] | None = None, reason: str = "") -> Outcome:
        return cls(ok=True, reason=reason, value=dict(value or {}))

    @classmethod
    def failure(cls, reason: str, message: str, retryable: bool) -> Outcome:
        return cls(ok=False, retryable=retryable, reason=reason, message=message)


class Effect:
    """Something the shell does to the world. Subclasses are frozen dataclasses."""

    @property
    def key(self) -> str:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------- agent calls


RequestT = TypeVar("RequestT", bound=Message)


@dataclass(frozen=True)
class AgentCall(Effect, Generic[RequestT]):
    """One CheckpointService rpc on the agent of `node`, with its request as the generated protobuf message (a
    misspelled field is an error where the decider builds it, not an empty field on the wire)."""

    METHOD: ClassVar[str] = ""
    node: str
    request: RequestT

    @property
    def key(self) -> str:
        # The canonical proto3 JSON with sorted keys: the same request always gives the same key.
        body = json_format.MessageToJson(self.request, preserving_proto_field_name=True, sort_keys=True, indent=None)
        return f"{self.METHOD}:{self.node}:{body}"


@dataclass(frozen=True)
class ProbeAgent(AgentCall[pb.GetCapabilitiesRequest]):
    METHOD: ClassVar[str] = "GetCapabilities"
    request: pb.GetCapabilitiesRequest = field(default_factory=pb.GetCapabilitiesRequest)


@dataclass(frozen=True)
class CheckEligibility(AgentCall[pb.EligibilityRequest]):
    METHOD: ClassVar[str] = "CheckEligibility"


@dataclass(frozen=True)
class DescribeRestoreFailure(AgentCall[pb.RestoreFailureRequest]):
    METHOD: ClassVar[str] = "DescribeRestoreFailure"


@dataclass(frozen=True)
class FreezeSource(AgentCall[pb.FreezeRequest]):
    METHOD: ClassVar[str] = "Freeze"


@dataclass(frozen=True)
class ThawSource(AgentCall[pb.ThawRequest]):
    METHOD: ClassVar[str] = "Thaw"


@dataclass(frozen=True)
class CallCheckpoint(AgentCall[pb.CheckpointRequest]):
    METHOD: ClassVar[str] = "Checkpoint"


@dataclass(frozen=True)
class CompleteCheckpoint(AgentCall[pb.CompleteCheckpointRequest]):
    METHOD: ClassVar[str] = "CompleteCheckpoint"


@dataclass(frozen=True)
class DeleteCheckpoint(AgentCall[pb.DeleteCheckpointRequest]):
    METHOD: ClassVar[str] = "DeleteCheckpoint"


@dataclass(frozen=True)
class ListCheckpoints(AgentCall[pb.ListCheckpointsRequest]):
    METHOD: ClassVar[str] = "ListCheckpoints"
    request: pb.ListCheckpointsRequest = field(default_factory=pb.ListCheckpointsRequest)


@dataclass(frozen=True)
class ConvertImage(AgentCall[pb.ConvertRequest]):
    METHOD: ClassVar[str] = "ConvertCheckpointToImage"


@dataclass(frozen=True)
class GetRestoreState(AgentCall[pb.RestoreStateRequest]):
    METHOD: ClassVar[str] = "GetRestoreState"


@dataclass(frozen=True)
class GetProgress(AgentCall[pb.ProgressRequest]):
    METHOD: ClassVar[str] = "GetProgress"


@dataclass(frozen=True)
class StageRestore(AgentCall[pb.StageRestoreRequest]):
    METHOD: ClassVar[str] = "StageRestore"


@dataclass(frozen=True)
class AbortRestore(AgentCall[pb.AbortRestoreRequest]):
    METHOD: ClassVar[str] = "AbortRestore"


# ------------------------------------------------------------------------------------- Kubernetes writes


@dataclass(frozen=True)
class CreateObject(Effect):
    """Create `body` (a full manifest). AlreadyExists counts as success: names are deterministic."""

    plural: str
    namespace: str | None
    body: Mapping[str, Any]

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def key(self) -> str:
        return f"create:{self.plural}:{self.namespace}:{self.name}"


@dataclass(frozen=True)
class CreatePodCheckpoint(CreateObject):
    pass


@dataclass(frozen=True)
class CreateContainerCheckpoint(CreateObject):
    pass


@dataclass(frozen=True)
class CreateContent(CreateObject):
    pass


@dataclass(frozen=True)
class CreateRestoredPod(CreateObject):
    pass


@dataclass(frozen=True)
class DeleteObject(Effect):
    """Delete by name, only if the object still has `uid` (never someone else's object of the same name).
    NotFound counts as success."""

    plural: str
    namespace: str | None = None
    name: str = ""
    uid: str | None = None
    grace_period_seconds: int | None = None

    @property
    def key(self) -> str:
        return f"delete:{self.plural}:{self.namespace}:{self.name}"


@dataclass(frozen=True)
class DeletePod(DeleteObject):
    plural: str = "pods"


@dataclass(frozen=True)
class PatchPod(Effect):
    """A merge patch of a pod's metadata (labels, annotations); `body` carries metadata.uid as a precondition."""

    namespace: str
    name: str
    body: Mapping[str, Any]

    @property
    def key(self) -> str:
        return f"patch:pods:{self.namespace}:{self.name}:{json.dumps(self.body, sort_keys=True)}"


@dataclass(frozen=True)
class ProbeWebhook(Effect):
    """A dry-run create of `body` (a pod that LPM's mutating webhook selects): its outcome's value holds the pod as
    admission left it, so the decider sees whether the webhook was called. Nothing is stored."""

    namespace: str
    body: Mapping[str, Any]

    @property
    def key(self) -> str:
        return f"probe-webhook:{self.namespace}:{self.body['metadata']['name']}"


@dataclass(frozen=True)
class MarkContentReady(Effect):
    """Set `status.readyToUse: true` on a cluster-scoped *Content."""

    plural: str
    name: str

    @property
    def key(self) -> str:
        return f"ready:{self.plural}:{self.name}"


# ------------------------------------------------------------------------ records of the reconciled object


@dataclass(frozen=True)
class PatchStatus:
    """The reconciled object's new status (a model); applied once, at the end of the cycle."""

    status: Any


@dataclass(frozen=True)
class EmitEvent:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class HoldFinalizer:
    """A finalizer's answer: the object may not go yet, and why (it is asked again later)."""

    why: str


Action = Effect | PatchStatus | EmitEvent | HoldFinalizer


def effects_of(actions: list[Action]) -> list[Effect]:
    return [a for a in actions if isinstance(a, Effect)]


def status_of(actions: list[Action]) -> PatchStatus | None:
    patches = [a for a in actions if isinstance(a, PatchStatus)]
    assert len(patches) <= 1, "a decider patches status at most once per answer"
    return patches[0] if patches else None


def events_of(actions: list[Action]) -> list[EmitEvent]:
    return [a for a in actions if isinstance(a, EmitEvent)]


def holds_of(actions: list[Action]) -> list[HoldFinalizer]:
    return [a for a in actions if isinstance(a, HoldFinalizer)]
