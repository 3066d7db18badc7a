"""The agent client: finding the agent on a node, and gRPC failures as retryable/permanent outcomes,
against a real gRPC server (the agent double) on localhost."""

from __future__ import annotations

import grpc
import pytest
from integration.controller import agent_double

from lpm.api.agent.v1 import agent_pb2 as pb
from lpm.controller import effects
from lpm.controller.agents import DEADLINE_SECONDS, TLS, Agents, grpc_outcome
from lpm.controller.effects import CallCheckpoint, ProbeAgent

UID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def agent_pods(port, node="node-a", ip="127.0.0.1"):
    pod = agent_double.agent_pod(node, port, "lpm-system")
    pod["status"] = {"phase": "Running", "podIP": ip}
    return [pod]


@pytest.fixture
def double():
    d = agent_double.serve("node-a")
    yield d
    d.server.stop(0)


def test_checkpoint_call_returns_the_artifact(double):
    agents = Agents(lambda node: agent_pods(double.port), "lpm-system", TLS(insecure=True))
    req = pb.CheckpointRequest(
        pod_namespace="ns", pod_name="web", container_name="app", pod_uid=UID, checkpoint_id="c1"
    )
    out = agents.call(CallCheckpoint("node-a", req))
    assert out.ok, out
    assert out.value["artifact"]["artifact_uri"] == f"shared://{UID}/c1/app/dump.tar.zst"
    assert double.calls_to("Checkpoint")[0]["container_name"] == "app"
    agents.close()


def test_a_checkpoint_staged_elsewhere_names_that_nodes_agent_and_leaves_the_effect_as_decided(double):
    agents = Agents(lambda node: agent_pods(double.port, node), "lpm-system", TLS(insecure=True))
    options = pb.CheckpointOptions(leave_running=True, stage_on_node="node-b")
    request = pb.CheckpointRequest(container_name="app", pod_uid=UID, checkpoint_id="c1", options=options)
    effect = CallCheckpoint("node-a", request)
    key = effect.key
    assert agents.call(effect).ok
    sent = double.calls_to("Checkpoint")[0]["options"]
    assert sent == {"leave_running": True, "stage_on_node": "node-b", "stage_on_address": f"127.0.0.1:{double.port}"}
    assert effect.key == key and not effect.request.options.stage_on_address, "the address is the shell's business"
    agents.close()


def test_an_agent_requests_key_is_its_method_node_and_canonical_json():
    first = CallCheckpoint("node-a", pb.CheckpointRequest(pod_uid=UID, checkpoint_id="c1", container_name="app"))
    again = CallCheckpoint("node-a", pb.CheckpointRequest(container_name="app", checkpoint_id="c1", pod_uid=UID))
    assert first.key == again.key and first.key.startswith("Checkpoint:node-a:{")
    assert CallCheckpoint("node-b", first.request).key != first.key
    assert ProbeAgent("node-a").key == "GetCapabilities:node-a:{}"


def test_permanent_agent_error_keeps_its_details(double):
    double.fail("GetCapabilities", grpc.StatusCode.FAILED_PRECONDITION, "CRIU 3.x is too old")
    agents = Agents(lambda node: agent_pods(double.port), "lpm-system", TLS(insecure=True))
    out = agents.call(ProbeAgent("node-a"))
    assert not out.ok and not out.retryable
    assert out.reason == "AgentFailedPrecondition" and "CRIU 3.x is too old" in out.message and "node-a" in out.message


def test_unreachable_agent_is_retryable_with_a_hint():
    agents = Agents(lambda node: agent_pods(1), "lpm-system", TLS(insecure=True))
    out = agents.call(ProbeAgent("node-a"))
    assert not out.ok and out.retryable and out.reason == "AgentUnavailable"
    assert "running and reachable" in out.message


def test_no_agent_pod_on_the_node_says_so():
    agents = Agents(lambda node: [], "lpm-system", TLS(insecure=True))
    out = agents.call(ProbeAgent("node-x"))
    assert out.reason == "AgentNotFound" and "node-x" in out.message and "lpm-system" in out.message


def test_address_prefers_the_named_grpc_port_and_falls_back_to_host_ip():
    pod = agent_double.agent_pod("n", 7443, "lpm-system")
    pod["status"] = {"phase": "Running", "hostIP": "10.1.2.3"}
    assert Agents(lambda node: [pod], "lpm-system", TLS(insecure=True)).address("n") == "10.1.2.3:7443"
    del pod["spec"]["containers"][0]["ports"]
    assert Agents(lambda node: [pod], "lpm-system", TLS(insecure=True)).address("n") == "10.1.2.3:50051"


@pytest.mark.parametrize(
    ("code", "retryable"),
    [
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, True),
        (grpc.StatusCode.INVALID_ARGUMENT, False),
        (grpc.StatusCode.NOT_FOUND, False),
        (grpc.StatusCode.FAILED_PRECONDITION, False),
        (grpc.StatusCode.UNAUTHENTICATED, False),
        (grpc.StatusCode.PERMISSION_DENIED, False),
        (grpc.StatusCode.UNIMPLEMENTED, False),
        (grpc.StatusCode.INTERNAL, False),
    ],
)
def test_status_codes_map_to_retryable_or_permanent(code, retryable):
    out = grpc_outcome(code, "details", "node-a", "Checkpoint")
    assert out.retryable is retryable and out.reason.startswith("Agent") and "node-a" in out.message


def test_authentication_failures_point_at_the_certificates():
    out = grpc_outcome(grpc.StatusCode.UNAUTHENTICATED, "bad cert", "node-a", "Freeze")
    assert "LPM_AGENT_CLIENT_CERT" in out.message


def test_the_agents_own_reason_wins_so_a_criu_refusal_is_never_called_an_unavailable_agent(double):
    double.fail(
        "Checkpoint",
        grpc.StatusCode.FAILED_PRECONDITION,
        "CRIU could not checkpoint container app: CRIU: inet: Connected TCP socket",
        reason="CheckpointRefused",
    )
    double.fail("Checkpoint", grpc.StatusCode.UNAVAILABLE, "kubelet unreachable", reason="KubeletUnavailable")
    agents = Agents(lambda node: agent_pods(double.port), "lpm-system", TLS(insecure=True))
    req = pb.CheckpointRequest(
        pod_namespace="ns", pod_name="web", container_name="app", pod_uid=UID, checkpoint_id="c1"
    )
    refused = agents.call(CallCheckpoint("node-a", req))
    assert (refused.reason, refused.retryable) == ("CheckpointRefused", False)
    assert "Connected TCP socket" in refused.message and "lpm-agent pod" not in refused.message
    kubelet = agents.call(CallCheckpoint("node-a", req))
    # The agent already retried the kubelet with the seed's backoff: the controller does not multiply that.
    assert (kubelet.reason, kubelet.retryable) == ("KubeletUnavailable", False)
    assert "kubelet" in kubelet.message
    agents.close()


def test_an_unreachable_repository_is_permanent_although_its_code_is_an_unreachable_agents(double):
    """The NFS backend already reconnected with backoff; the controller must not retry it for the whole
    timeout while the source waits frozen (measured: a 60 s pause before this)."""
    double.fail("Checkpoint", grpc.StatusCode.UNAVAILABLE, "NFS server unavailable", reason="StorageUnavailable")
    agents = Agents(lambda node: agent_pods(double.port), "lpm-system", TLS(insecure=True))
    req = pb.CheckpointRequest(
        pod_namespace="ns", pod_name="web", container_name="app", pod_uid=UID, checkpoint_id="c1"
    )
    out = agents.call(CallCheckpoint("node-a", req))
    assert (out.reason, out.retryable) == ("StorageUnavailable", False)
    agents.close()


def test_a_full_repository_is_permanent_although_its_code_is_the_busy_agents(double):
    double.fail(
        "Checkpoint", grpc.StatusCode.RESOURCE_EXHAUSTED, "no space left on /mnt/checkpoints", reason="StorageFull"
    )
    double.fail("Checkpoint", grpc.StatusCode.RESOURCE_EXHAUSTED, "all 4 slots busy")
    agents = Agents(lambda node: agent_pods(double.port), "lpm-system", TLS(insecure=True))
    req = pb.CheckpointRequest(
        pod_namespace="ns", pod_name="web", container_name="app", pod_uid=UID, checkpoint_id="c1"
    )
    full = agents.call(CallCheckpoint("node-a", req))
    assert (full.reason, full.retryable) == ("StorageFull", False) and "free space" in full.message
    busy = agents.call(CallCheckpoint("node-a", req))
    assert (busy.reason, busy.retryable) == ("AgentResourceExhausted", True)
    agents.close()


def test_a_restarted_agent_is_reached_again_within_seconds_not_after_grpcs_default_backoff():
    """Kill the agent, let the channel fail a few times, bring the agent back on the same port: the next calls
    get through within the short reconnect back-off (gRPC's default would wait up to 120 s between tries)."""
    import time

    d = agent_double.serve("node-a")
    port = d.port
    agents = Agents(lambda node: agent_pods(port), "lpm-system", TLS(insecure=True))
    assert agents.call(ProbeAgent("node-a")).ok
    d.server.stop(0)
    for _ in range(20):  # a 10 s outage: gRPC's default back-off has grown to ~6 s between tries by then
        out = agents.call(ProbeAgent("node-a"))
        assert not out.ok and out.retryable
        time.sleep(0.5)
    again = agent_double.AgentDouble(node="node-a")
    server = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(max_workers=4))
    agent_double.agent_pb2_grpc.add_CheckpointServiceServicer_to_server(again, server)
    assert server.add_insecure_port(f"127.0.0.1:{port}") == port
    server.start()
    back = time.monotonic()
    try:
        while not agents.call(ProbeAgent("node-a")).ok:
            assert time.monotonic() - back < 3, "not reconnected within 3 s of the agent's return"
            time.sleep(0.1)
    finally:
        agents.close()
        server.stop(0)


def test_agent_messages_reach_statuses_without_node_paths():
    out = grpc_outcome(
        grpc.StatusCode.UNAVAILABLE,
        "kubelet https://10.0.0.1:10250: checkpoint -> 503 open /var/lib/kubelet/checkpoints/x.tar: busy",
        "node-a",
        "Checkpoint",
        "KubeletUnavailable",
    )
    assert "x.tar" in out.message and "/var/lib/kubelet" not in out.message
    assert "https://10.0.0.1:10250" in out.message


def test_every_agent_call_a_decider_can_make_has_a_deadline_and_an_rpc():
    # A call without a deadline raised KeyError in the controller's cycle (found on the cluster with GetProgress).
    calls = {cls.METHOD for cls in _subclasses(effects.AgentCall) if cls.METHOD}
    assert calls <= set(DEADLINE_SECONDS), calls - set(DEADLINE_SECONDS)
    rpcs = set(pb.DESCRIPTOR.services_by_name["CheckpointService"].methods_by_name)
    assert calls <= rpcs, calls - rpcs


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)
