"""`kubectl lpm drain`'s planner: which pods move where, which are left, and when the drain is refused."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from lpm.api.placement import MIRROR_ANNOTATION, Taint, plan_drain, tolerates
from lpm.api.views import NodeView, PodView

SRC = "node-1"


def pod(
    name: str,
    *,
    node: str = SRC,
    phase: str = "Running",
    owner: str | None = None,
    mirror: bool = False,
    deleting: bool = False,
    tolerations: list[dict[str, Any]] | None = None,
    host_network: bool = False,
) -> PodView:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "uid": f"uid-{name}"}
    if owner:
        kind, _, owner_name = owner.partition("/")
        meta["ownerReferences"] = [{"kind": kind, "name": owner_name, "controller": True}]
    if mirror:
        meta["annotations"] = {MIRROR_ANNOTATION: "hash"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-30T00:00:00Z"
    return PodView.from_api(
        {
            "metadata": meta,
            "spec": {
                "nodeName": node,
                "containers": [{"name": "c"}],
                "tolerations": tolerations or [],
                "hostNetwork": host_network,
            },
            "status": {"phase": phase},
        }
    )


def node(name: str, *, ready: bool = True, cordoned: bool = False) -> NodeView:
    return NodeView(name, ready, "" if ready else "kubelet stopped posting", cordoned)


NODES = [node(SRC), node("node-2"), node("node-3")]
MIGRATABLE = {"lpm.my.domain/migratable": "true"}


def test_each_kind_of_pod_lands_in_its_bucket() -> None:
    pods = [
        pod("bare"),
        pod("ds", owner="DaemonSet/agent"),
        pod("static", mirror=True),
        pod("done", phase="Succeeded"),
        pod("going", deleting=True),
        pod("web", owner="ReplicaSet/web-5d8f"),
        pod("elsewhere", node="node-2"),
    ]
    plan = plan_drain(SRC, pods, NODES, {})
    assert [m.pod.name for m in plan.moves] == ["bare"]
    assert sorted(x.pod.name for x in plan.skipped) == ["done", "ds", "going", "static"]
    assert [x.pod.name for x in plan.owned] == ["web"] and "kubectl drain" in plan.owned[0].why
    assert plan.ok


def test_a_pod_on_its_nodes_network_is_left_to_its_owner_or_refuses_the_drain_when_bare() -> None:
    opted_in = pod("edge", owner="StatefulSet/edge", host_network=True)
    opted_in = PodView.from_api({**opted_in.raw, "metadata": {**opted_in.raw["metadata"], "labels": MIGRATABLE}})
    plan = plan_drain(SRC, [opted_in], NODES, {})
    assert not plan.moves and [x.pod.name for x in plan.owned] == ["edge"] and plan.ok
    assert "(hostNetwork)" in plan.owned[0].why and "StatefulSet/edge starts it elsewhere" in plan.owned[0].why
    bare = plan_drain(SRC, [pod("proxy", host_network=True), pod("app")], NODES, {})
    assert [m.pod.name for m in bare.moves] == ["app"] and not bare.ok
    assert bare.blocked[0].pod.name == "proxy" and "cannot be migrated" in bare.blocked[0].why


def test_pods_are_spread_over_ready_schedulable_nodes_never_the_source() -> None:
    nodes = [node(SRC), node("node-2"), node("node-3"), node("down", ready=False), node("cordoned", cordoned=True)]
    plan = plan_drain(SRC, [pod(f"p{i}") for i in range(5)], nodes, {})
    targets = [m.target for m in plan.moves]
    assert sorted(targets) == ["node-2", "node-2", "node-2", "node-3", "node-3"]


def test_a_pending_pod_or_no_possible_target_refuses_the_whole_drain() -> None:
    assert not plan_drain(SRC, [pod("a"), pod("b", phase="Pending")], NODES, {}).ok
    lonely = plan_drain(SRC, [pod("a")], [node(SRC), node("node-2", ready=False)], {})
    assert not lonely.ok and "no other node" in lonely.blocked[0].why


def test_explicit_target_must_be_usable() -> None:
    for to, words in [("nope", "does not exist"), (SRC, "being drained"), ("node-2", "not Ready")]:
        nodes = [node(SRC), node("node-2", ready=False)]
        plan = plan_drain(SRC, [pod("a")], nodes, {}, to=to)
        assert not plan.ok and words in plan.blocked[0].why
    assert plan_drain(SRC, [pod("a")], NODES, {}, to="node-3").moves[0].target == "node-3"


def test_taints_keep_pods_off_nodes_that_do_not_tolerate_them() -> None:
    taints = {"node-2": [Taint("dedicated", "gpu", "NoSchedule")], "node-3": [Taint("x", "", "PreferNoSchedule")]}
    plain = plan_drain(SRC, [pod("a"), pod("b")], NODES, taints)
    assert {m.target for m in plain.moves} == {"node-3"}
    gpu = pod("g", tolerations=[{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}])
    only_2 = {"node-2": taints["node-2"], "node-3": [Taint("other", "", "NoExecute")]}
    assert [m.target for m in plan_drain(SRC, [gpu], NODES, only_2).moves] == ["node-2"]


def test_toleration_matching_follows_the_scheduler() -> None:
    t = Taint("k", "v", "NoSchedule")
    assert tolerates([{"operator": "Exists"}], t)
    assert tolerates([{"key": "k", "operator": "Exists"}], t)
    assert tolerates([{"key": "k", "value": "v"}], t)
    assert not tolerates([{"key": "k", "value": "w"}], t)
    assert not tolerates([{"key": "k", "operator": "Exists", "effect": "NoExecute"}], t)
    assert not tolerates([], t)


# Weighted toward pods that move, so the spreading and target rules are exercised as often as the skips.
owners = st.sampled_from([None, None, None, None, "DaemonSet/ds", "ReplicaSet/rs", "StatefulSet/ss", "Job/j"])
phases = st.sampled_from(["Running", "Running", "Running", "Pending", "Succeeded", "Failed"])
rarely = st.sampled_from([False, False, False, True])
pods_st = st.lists(
    st.builds(
        pod,
        st.uuids().map(lambda u: f"p-{u.hex[:8]}"),
        node=st.sampled_from([SRC, SRC, "node-2"]),
        phase=phases,
        owner=owners,
        mirror=rarely,
        deleting=rarely,
    ),
    max_size=12,
    unique_by=lambda p: p.name,
)
nodes_st = st.lists(
    st.builds(
        node,
        st.sampled_from(["node-2", "node-3", "node-4"]),
        ready=st.sampled_from([True, True, False]),
        cordoned=rarely,
    ),
    max_size=3,
    unique_by=lambda n: n.name,
)


@given(pods_st, nodes_st, st.sampled_from([None, None, "node-2", "node-9", SRC]))
def test_plan_invariants(pods: list[PodView], others: list[NodeView], to: str | None) -> None:
    nodes = [node(SRC), *others]
    plan = plan_drain(SRC, pods, nodes, {}, to=to)
    buckets = [m.pod for m in plan.moves] + [x.pod for x in plan.skipped + plan.owned + plan.blocked]
    # Every pod on the drained node is in exactly one bucket; no pod from elsewhere is.
    assert sorted(p.name for p in buckets) == sorted(p.name for p in pods if p.node_name == SRC)
    usable = {n.name for n in nodes if n.ready and not n.unschedulable and n.name != SRC}
    for m in plan.moves:
        # Only what the controller would accept moves, and only to a node that can take it.
        assert m.pod.running and m.pod.controller is None and MIRROR_ANNOTATION not in m.pod.annotations
        assert m.target in usable and (to is None or m.target == to)
    # Nothing a controller owns is ever migrated; a Running bare pod is never silently left behind.
    for left in plan.skipped + plan.owned:
        mirror = MIRROR_ANNOTATION in left.pod.annotations
        assert left.pod.controller or left.pod.deleting or not left.pod.running or mirror
    assert plan.ok == (not plan.blocked)
    # Spreading: with no explicit target, no node gets two more pods than another usable node.
    if to is None and plan.moves:
        counts = {n: sum(1 for m in plan.moves if m.target == n) for n in usable}
        assert max(counts.values()) - min(counts.values()) <= 1
