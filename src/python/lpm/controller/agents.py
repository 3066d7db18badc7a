"""The controller's only door to the checkpoint agents: find the agent on a node, call it over (m)TLS gRPC.

The agent is the DaemonSet pod labelled `app.kubernetes.io/name=lpm-agent` in the agent namespace whose
`spec.nodeName` is the node; its address is the pod IP (the host IP when it has none) and the container port
named `grpc` (AGENT_PORT when no port is named). gRPC status codes become retryable or permanent `Outcome`s
whose message tells a user what to check.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from lpm.api import constants as c
from lpm.api.agent.v1 import agent_pb2, agent_pb2_grpc
from lpm.api.messages import scrub_paths
from lpm.controller.effects import AgentCall, Outcome

log = logging.getLogger(__name__)

# method -> deadline in seconds
DEADLINE_SECONDS: dict[str, float] = {
    "GetCapabilities": 5.0,
    "Freeze": 30.0,
    "Thaw": 30.0,
    "Checkpoint": 900.0,
    "CompleteCheckpoint": 60.0,
    "DeleteCheckpoint": 120.0,
    "ListCheckpoints": 60.0,
    "ConvertCheckpointToImage": 600.0,
    "CheckEligibility": 30.0,
    "DescribeRestoreFailure": 10.0,
    "GetRestoreState": 10.0,
    "StageRestore": 600.0,
    "AbortRestore": 10.0,
    # In memory on the agent; short, because a migration's cycle waits for it while its checkpoint is taken.
    "GetProgress": 1.0,
}
RECONNECT_BACKOFF_MS = (250, 2000)  # (initial, maximum) wait between reconnects to an agent
REASON_KEY = "lpm-reason"  # trailing metadata: the agent's CamelCase reason, when it knows more than the code
# Reasons that make a retryable-looking code permanent: a full repository (RESOURCE_EXHAUSTED, like a busy agent)
# does not empty itself while the source waits frozen, and an unreachable kubelet (UNAVAILABLE) was already
# retried by the agent with the seed's backoff (5 retries, 2 s doubling): retrying that again would multiply it.
# So was an unreachable checkpoint repository (StorageUnavailable: the NFS backend's own reconnect budget).
PERMANENT_REASONS = frozenset(
    {
        "StorageFull",
        "StorageUnavailable",
        "CheckpointRefused",
        "CheckpointFenced",
        "KubeletUnavailable",
        "RestoreAborted",
    }
)

RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)

_HINTS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAVAILABLE: "is the lpm-agent pod on that node running and reachable from the controller?",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the agent did not answer in time; check its logs and the node's load",
    grpc.StatusCode.UNAUTHENTICATED: "check that the controller's client certificate (LPM_AGENT_CLIENT_CERT) is "
    "signed by the CA the agents trust",
    grpc.StatusCode.PERMISSION_DENIED: "the agent refused the controller's identity; check the client certificate",
    grpc.StatusCode.UNIMPLEMENTED: "the agent is older than the controller; upgrade the agent DaemonSet",
}


def _camel(code: grpc.StatusCode) -> str:
    return "".join(part.capitalize() for part in code.name.split("_"))


_REASON_HINTS: dict[str, str] = {
    "KubeletUnavailable": "the agent runs, but the kubelet on that node did not answer; check the kubelet",
    "StorageFull": "free space in the checkpoint repository (or delete old PodMigrations with their checkpoints)",
}


def grpc_outcome(code: grpc.StatusCode, details: str, node: str, method: str, reason: str = "") -> Outcome:
    """A gRPC failure as a value a user can act on. The agent's own reason (trailing metadata) wins over the
    code's, so a CRIU refusal is never called an unavailable agent; whether to retry follows the code."""
    hint = _REASON_HINTS.get(reason, "") if reason else _HINTS.get(code, "")
    # Every agent failure that reaches a status passes here: no node-internal path goes further.
    said = scrub_paths(details) or code.name
    message = f"agent on node {node}: {method} failed: {said}" + (f" ({hint})" if hint else "")
    retryable = code in RETRYABLE and reason not in PERMANENT_REASONS
    return Outcome.failure(reason or f"Agent{_camel(code)}", message, retryable=retryable)


def _reason(exc: grpc.RpcError) -> str:
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == REASON_KEY and isinstance(value, str) and value.isalnum():
            return value
    return ""


@dataclass(frozen=True)
class TLS:
    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    server_name: str | None = None
    insecure: bool = False

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca), private_key=read(self.key), certificate_chain=read(self.cert)
        )


class AgentNotFound(Exception):
    pass


class Agents:
    """Finds agents and calls them. Thread-safe; channels are cached per address."""

    def __init__(
        self,
        list_agent_pods: Callable[[str], list[dict[str, Any]]],
        namespace: str,
        tls: TLS,
        address_ttl: float = 30.0,
    ) -> None:
        self._list = list_agent_pods  # node name -> agent pods on it (a Kubernetes list call)
        self.namespace = namespace
        self.tls = tls
        self.address_ttl = address_ttl
        self._lock = threading.Lock()
        self._addresses: dict[str, tuple[str, float]] = {}
        self._channels: dict[str, grpc.Channel] = {}

    def address(self, node: str) -> str:
        with self._lock:
            hit = self._addresses.get(node)
            if hit and time.monotonic() - hit[1] < self.address_ttl:
                return hit[0]
        pods = [p for p in self._list(node) if (p.get("status") or {}).get("phase") == "Running"]
        for pod in pods:
            ip = (pod.get("status") or {}).get("podIP") or (pod.get("status") or {}).get("hostIP")
            if not ip:
                continue
            port = c.AGENT_PORT
            for ctr in (pod.get("spec") or {}).get("containers") or []:
                for p in ctr.get("ports") or []:
                    if p.get("name") == "grpc":
                        port = int(p["containerPort"])
            addr = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
            with self._lock:
                self._addresses[node] = (addr, time.monotonic())
            return addr
        raise AgentNotFound(
            f"no Running lpm-agent pod ({c.AGENT_LABEL_SELECTOR}) on node {node} in namespace {self.namespace}; "
            "is the agent DaemonSet scheduled there?"
        )

    def _channel(self, addr: str) -> grpc.Channel:
        with self._lock:
            ch = self._channels.get(addr)
            if ch is None:
                options: list[tuple[str, Any]] = [
                    ("grpc.max_receive_message_length", 16 << 20),
                    # gRPC's default reconnect back-off (1 s growing 1.6x to 120 s) kept calls failing for ~17 s
                    # after a killed agent was Ready again 3 s later (measured), with its source frozen meanwhile.
                    # Not grpc.min_reconnect_backoff_ms: that is also the connect timeout (20 s by default), and
                    # at 250 ms a busy node's TLS handshake never finished ("Handshake read failed", seen here).
                    ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
                    ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[1]),
                ]
                if self.tls.server_name:
                    options.append(("grpc.ssl_target_name_override", self.tls.server_name))
                if self.tls.insecure:
                    ch = grpc.insecure_channel(addr, options=options)
                else:
                    ch = grpc.secure_channel(addr, self.tls.credentials(), options=options)
                self._channels[addr] = ch
            return ch

    def _forget(self, node: str) -> None:
        with self._lock:
            self._addresses.pop(node, None)

    def call(self, effect: AgentCall[Message]) -> Outcome:
        return self.invoke(effect.node, effect.METHOD, effect.request)

    def invoke(self, node: str, method: str, request: Message) -> Outcome:
        deadline = DEADLINE_SECONDS[method]
        try:
            addr = self.address(node)
        except AgentNotFound as exc:
            return Outcome.failure("AgentNotFound", str(exc), retryable=True)
        except Exception as exc:
            return Outcome.failure("AgentLookupFailed", f"listing agent pods for node {node}: {exc}", retryable=True)
        request = self._with_peer_address(request)
        stub = agent_pb2_grpc.CheckpointServiceStub(self._channel(addr))
        try:
            response = getattr(stub, method)(request, timeout=deadline)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = exc.details() if hasattr(exc, "details") else str(exc)
            if code is grpc.StatusCode.UNAVAILABLE:
                self._forget(node)  # the agent may have moved to another IP
            log.info("agent %s (%s) %s: %s %s", node, addr, method, code.name, details)
            return grpc_outcome(code, details, node, method, _reason(exc))
        value = json_format.MessageToDict(response, preserving_proto_field_name=True)
        return Outcome.success(value)

    def _with_peer_address(self, request: Message) -> Message:
        """A checkpoint to stage on another node also names that node's agent address (decided by node name;
        an address is the shell's business). Unresolvable: no push, the target fetches from the store."""
        if not isinstance(request, agent_pb2.CheckpointRequest) or not request.options.stage_on_node:
            return request
        node = request.options.stage_on_node
        try:
            address = self.address(node)
        except Exception as exc:  # the push is an optimisation: its absence is never an error
            log.info("no address for the agent on %s, the archive is not pushed: %s", node, exc)
            return request
        addressed = agent_pb2.CheckpointRequest()
        addressed.CopyFrom(request)  # the effect's own request stays as the decider built it
        addressed.options.stage_on_address = address
        return addressed

    def close(self) -> None:
        with self._lock:
            for ch in self._channels.values():
                ch.close()
            self._channels.clear()
