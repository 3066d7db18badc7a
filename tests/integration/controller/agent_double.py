"""A test double of the checkpoint agent that speaks the real gRPC protocol (generated CheckpointService stubs).

Replies are computed from the request the way the real agent names things (artifact URI layout, image
reference), calls are recorded, and failures can be scripted per method: `fail("Checkpoint", code, details)`
makes the next such call abort with that status. `delay` makes every call take that long (the benchmark).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format

from lpm.api.agent.v1 import agent_pb2, agent_pb2_grpc
from lpm.storage.uri import ArtifactRef


@dataclass
class Call:
    method: str
    request: dict[str, Any]


@dataclass
class AgentDouble(agent_pb2_grpc.CheckpointServiceServicer):
    node: str
    delay: float = 0.0
    calls: list[Call] = field(default_factory=list)
    frozen: set[tuple[str, str]] = field(default_factory=set)  # (pod uid, container)
    stored: list[tuple[str, str]] = field(default_factory=list)  # what ListCheckpoints answers: (pod uid, id)
    capabilities: dict[str, Any] = field(
        default_factory=lambda: {"checkpoint_supported": True, "freeze_supported": True, "convert_supported": True}
    )
    _script: dict[str, list[tuple[grpc.StatusCode, str, str]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0
    server: Any = None

    def fail(self, method: str, code: grpc.StatusCode, details: str, times: int = 1, reason: str = "") -> None:
        """The next `times` calls of `method` abort with `code`; `reason` goes out as `lpm-reason` like the agent's."""
        with self._lock:
            self._script.setdefault(method, []).extend([(code, details, reason)] * times)

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        with self._lock:
            return [c.request for c in self.calls if c.method == method]

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self._script.clear()
            self.frozen.clear()
            self.stored.clear()

    def _enter(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls.append(Call(method, json_format.MessageToDict(request, preserving_proto_field_name=True)))
            scripted = self._script.get(method)
            failure = scripted.pop(0) if scripted else None
        if self.delay:
            time.sleep(self.delay)
        if failure:
            if failure[2]:
                context.set_trailing_metadata((("lpm-reason", failure[2]),))
            context.abort(failure[0], failure[1])

    def GetCapabilities(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("GetCapabilities", request, context)
        return agent_pb2.Capabilities(node_name=self.node, agent_version="double", **self.capabilities)

    def Freeze(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("Freeze", request, context)
        with self._lock:
            self.frozen.update((request.pod_uid, n) for n in request.container_names)
        return agent_pb2.FreezeResponse(
            containers=[
                agent_pb2.ContainerFreezeStatus(container_name=n, state=agent_pb2.FREEZE_STATE_FROZEN)
                for n in request.container_names
            ]
        )

    def Thaw(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("Thaw", request, context)
        with self._lock:
            self.frozen.difference_update((request.pod_uid, n) for n in request.container_names)
        return agent_pb2.ThawResponse(
            containers=[
                agent_pb2.ContainerFreezeStatus(
                    container_name=n, state=agent_pb2.FREEZE_STATE_THAWED, evidence="double: thawed"
                )
                for n in request.container_names
            ]
        )

    def DescribeRestoreFailure(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("DescribeRestoreFailure", request, context)
        return agent_pb2.RestoreFailureResponse()

    def CheckEligibility(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("CheckEligibility", request, context)
        return agent_pb2.EligibilityResponse(checked=["double: nothing found"])

    def Checkpoint(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("Checkpoint", request, context)
        ref = ArtifactRef(request.pod_uid, request.checkpoint_id, request.container_name)
        resp = agent_pb2.CheckpointResponse(
            checkpoint_id=request.checkpoint_id,
            node_name=self.node,
            attempts=1,
            artifact=agent_pb2.ArtifactInfo(
                artifact_uri=ref.uri,
                compressed_size_bytes=1234,
                raw_size_bytes=4321,
                sha256=hashlib.sha256(ref.uri.encode()).hexdigest(),
            ),
        )
        resp.kubelet_duration.FromMilliseconds(120)
        resp.store_duration.FromMilliseconds(30)
        return resp

    def CompleteCheckpoint(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("CompleteCheckpoint", request, context)
        return agent_pb2.CompleteCheckpointResponse()

    def DeleteCheckpoint(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("DeleteCheckpoint", request, context)
        return agent_pb2.DeleteCheckpointResponse(existed=True)

    def ListCheckpoints(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("ListCheckpoints", request, context)
        return agent_pb2.ListCheckpointsResponse(
            checkpoints=[agent_pb2.StoredCheckpoint(pod_uid=u, checkpoint_id=i, complete=True) for u, i in self.stored]
        )

    def ConvertCheckpointToImage(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("ConvertCheckpointToImage", request, context)
        ref = ArtifactRef.parse(request.artifact_uri)
        image = request.image_name or f"localhost/lpm-checkpoint/{ref.container}:{ref.checkpoint_id}"
        return agent_pb2.ConvertResponse(image_ref=image, image_id="sha256:" + "0" * 64, node_name=self.node)

    # Live engine: no lpm-runc behind the double (it reports live_restore_supported false unless a test sets it),
    # so these answer as a target whose replacement waits at once and stages instantly.
    def GetRestoreState(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("GetRestoreState", request, context)
        waiting = agent_pb2.RestoreState.RESTORE_STATE_WAITING
        return agent_pb2.RestoreStateResponse(
            containers=[
                agent_pb2.ContainerRestoreState(container_name=n, state=waiting) for n in request.container_names
            ]
        )

    def StageRestore(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("StageRestore", request, context)
        return agent_pb2.StageRestoreResponse(image_bytes=4321)

    def ReceiveCheckpoint(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        first = next(request_iterator)
        self._enter("ReceiveCheckpoint", first, context)
        return agent_pb2.StageRestoreResponse(image_bytes=sum(len(c.data) for c in [first, *request_iterator]))

    def AbortRestore(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("AbortRestore", request, context)
        return agent_pb2.AbortRestoreResponse()

    def GetProgress(self, request: Any, context: grpc.ServicerContext) -> Any:
        # The double's checkpoints are instant: nothing in flight to report.
        self._enter("GetProgress", request, context)
        return agent_pb2.ProgressResponse()


def serve(node: str, delay: float = 0.0, workers: int = 32) -> AgentDouble:
    double = AgentDouble(node=node, delay=delay)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    agent_pb2_grpc.add_CheckpointServiceServicer_to_server(double, server)
    double.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    double.server = server
    return double


def agent_pod(node: str, port: int, namespace: str) -> dict[str, Any]:
    """The agent DaemonSet pod as the controller sees it: labelled, on `node`, serving gRPC on `port`."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"lpm-agent-{node}",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "lpm-agent"},
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {"name": "agent", "image": "lpm-agent:test", "ports": [{"name": "grpc", "containerPort": port}]}
            ],
        },
    }


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
