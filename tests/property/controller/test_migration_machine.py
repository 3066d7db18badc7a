"""Hypothesis state machine: the three reconcilers (their real observe, deciders and reconcile cycle) driven
through a simulated cluster with random interleavings of reconciles, controller crashes mid-cycle, agent
outages and failures, lost replies, API conflicts, kubelet outcomes, node changes and time passing. After
every step the safety invariants hold; at the end, once the world calms down, the migration always reaches a
terminal phase."""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from property.controller.world import SOURCE, TARGET, World

from lpm.api.models import Engine, MigrationPhase, SourceCleanup, SourcePolicy

METHODS = [
    "GetCapabilities",
    "CheckEligibility",
    "DescribeRestoreFailure",
    "Freeze",
    "Thaw",
    "Checkpoint",
    "CompleteCheckpoint",
    "ConvertCheckpointToImage",
    "GetRestoreState",
    "StageRestore",
    "AbortRestore",
    "GetProgress",
]


class MigrationMachine(RuleBasedStateMachine):
    world: World

    @initialize(
        containers=st.lists(st.sampled_from(["app", "db", "cache"]), min_size=1, max_size=3, unique=True),
        policy=st.sampled_from(["Freeze", "Freeze", "KeepRunning"]),
        cleanup=st.sampled_from(["Delete", "Delete", "Retain"]),
        timeout=st.sampled_from([30, 120, 600]),
        live=st.booleans(),
        owned=st.booleans(),
        owned_usual=st.booleans(),
        stateful=st.booleans(),
        keep_name=st.booleans(),
        post_copy=st.booleans(),
        hand_off=st.booleans(),
    )
    def setup(
        self,
        containers,
        policy,
        cleanup,
        timeout,
        live,
        owned=False,
        owned_usual=False,
        stateful=False,
        keep_name=False,
        post_copy=False,
        hand_off=False,
    ):
        if owned and owned_usual:  # half the owned runs as a user would start them: live, Freeze, Delete
            policy, cleanup, live = "Freeze", "Delete", True
        self.world = World(containers, policy, cleanup, timeout, live, owned, stateful, keep_name, post_copy, hand_off)
        kind = ("StatefulSet" if self.world.stateful else "ReplicaSet") if owned else "bare"
        event(f"engine {'Live' if live else 'Image'}, {kind}{', keepName' if keep_name and not owned else ''}")
        if post_copy and live:
            event("both nodes can post-copy")
        if hand_off and policy == "Freeze":
            event("the checkpoint waits for the freeze")
        self.idle_advances = 0

    # ------------------------------------------------------------------------------------------ rules
    @rule(crash_after=st.none() | st.integers(min_value=0, max_value=3))
    def reconcile_migration(self, crash_after):
        self.world.reconcile_migration(crash_after)
        self.idle_advances = 0

    @rule(crash_after=st.none() | st.integers(min_value=0, max_value=3))
    def reconcile_checkpoints(self, crash_after):
        self.world.reconcile_checkpoints(crash_after)

    # Two plain "everything reconciles" rules make progress likelier than any single fault.
    @rule()
    def reconcile_everything(self):
        self.world.reconcile_checkpoints()
        self.world.reconcile_migration()
        self.idle_advances = 0

    @rule()
    def reconcile_everything_and_kubelet(self):
        self.reconcile_everything()
        self.world.kubelet()

    @rule(node=st.sampled_from([SOURCE, TARGET]), down=st.booleans())
    def agent_availability(self, node, down):
        self.world.agents[node].down = down

    @rule(node=st.sampled_from([SOURCE, TARGET]), method=st.sampled_from(METHODS), permanent=st.booleans())
    def agent_fails_next_call(self, node, method, permanent):
        self.world.agents[node].fail_next[method] = permanent

    @rule()
    def store_fills_up(self):
        """The next checkpoint's durable copy fails after its push reached the target (Live engine)."""
        self.world.agents[SOURCE].store_fails_next = True

    @rule(broken=st.booleans())
    def page_streams_end(self, broken):
        self.world.page_streams_end(broken)

    @rule(sticks=st.booleans())
    def runtime_keeps_the_source_paused_after_a_thaw(self, sticks):
        self.world.agents[SOURCE].thaw_sticks = sticks

    @rule(node=st.sampled_from([SOURCE, TARGET]))
    def agent_loses_next_reply(self, node):
        self.world.agents[node].lose_reply_next = True

    @rule(fault=st.sampled_from(["reject", "lost"]))
    def api_fault(self, fault):
        self.world.api_faults.append(fault)

    @rule(crashes=st.booleans())
    def kubelet(self, crashes):
        self.world.kubelet_crashes = crashes
        self.world.kubelet()

    @rule(ready=st.booleans())
    def target_node_readiness(self, ready):
        self.world.set_target_ready(ready)

    @rule()
    def owner_reconciles(self):
        self.world.owner_sync()

    @rule(up=st.booleans())
    def webhook_availability(self, up):
        self.world.webhook_up = up

    # The controller is never down for long: time moves at most a few steps between reconciles.
    @precondition(lambda self: self.idle_advances < 3)
    @rule(seconds=st.sampled_from([1, 5, 30]))
    def time_passes(self, seconds):
        self.world.advance(seconds)
        self.idle_advances += 1

    # ------------------------------------------------------------------------------------- invariants
    @invariant()
    def no_violation_recorded(self):
        # includes: source deleted only once a restored pod runs; terminal phases never change
        assert not self.world.violations, self.world.violations

    @invariant()
    def at_most_one_restored_pod(self):
        assert len(self.world.restored_names_created) <= 1, self.world.restored_names_created
        assert len(self.world.restored_pods()) <= 1

    @invariant()
    def never_two_unfrozen_copies(self):
        w = self.world
        if w.migration.spec.source_policy is not SourcePolicy.FREEZE:
            return  # a clone runs both copies on purpose
        source = w.source()
        running_copy = [
            p
            for p in w.restored_pods()
            if p["status"]["phase"] == "Running"
            and all("waiting" not in cs["state"] for cs in p["status"].get("containerStatuses") or [])
        ]
        if source is not None and running_copy:
            assert w.source_uid in w.frozen, "source unfrozen while the restored pod runs"

    @invariant()
    def failure_has_reason_and_leaves_source_thawed(self):
        w = self.world
        st_ = w.migration.status
        if st_.phase is MigrationPhase.FAILED:
            assert st_.reason and st_.message
            if w.source() is not None and st_.reason != "SourceStillFrozen":
                assert w.source_uid not in w.frozen, f"Failed ({st_.reason}) but the source is still frozen"
            if st_.reason == "SourceStillFrozen":
                assert "STILL BE FROZEN" in st_.message and "THAWED" not in (st_.source_state or "")
            assert not w.restored_pods() or st_.reason == "RestoredPodNameTaken"

    @invariant()
    def owner_never_runs_two_replicas(self):
        """Replicas: 1. The released source is not the owner's; the owner's own pods are at most one Running, and
        at most one more that is not (the waiting replacement, during the moment the owner scales it away)."""
        owned = self.world.owned_pods()
        assert len([p for p in owned if p["status"]["phase"] == "Running"]) <= 1, [p["metadata"]["name"] for p in owned]

    @invariant()
    def status_claims_thawed_only_when_the_runtime_said_so(self):
        w = self.world
        st_ = w.migration.status
        verified = [cd for cd in st_.conditions if cd.type == "SourceFrozen" and cd.reason == "ThawVerified"]
        if verified and w.source() is not None:
            assert w.source_uid not in w.frozen, "status says thawed (verified) but the source is frozen"
            assert st_.source_state and "FROZEN" not in st_.source_state

    @invariant()
    def user_facing_messages_name_no_node_paths(self):
        for (plural, _, _), obj in self.world.store.items():
            message = (obj.get("status") or {}).get("message") or ""
            if plural in ("podmigrations", "podcheckpoints", "containercheckpoints"):
                assert "/run/containerd" not in message, message

    @invariant()
    def checkpoint_failures_have_reasons(self):
        for (plural, _, _), obj in self.world.store.items():
            status = obj.get("status") or {}
            if plural.endswith("checkpoints") and status.get("phase") == "Failed":
                assert status.get("reason") and status.get("message"), obj

    @invariant()
    def contents_bound_one_to_one(self):
        store = self.world.store
        refs: dict[str, str] = {}
        for (plural, _, name), obj in store.items():
            if plural == "containercheckpointcontents":
                ref = obj["spec"]["containerCheckpointRef"]["uid"]
            elif plural == "podcheckpointcontents":
                ref = obj["spec"]["podCheckpointRef"]["uid"]
            else:
                continue
            assert ref not in refs, f"two contents bound to {ref}"
            refs[ref] = name
        for (plural, _, _), obj in store.items():
            bound = (obj.get("status") or {}).get("boundContentName")
            if plural in ("containercheckpoints", "podcheckpoints") and bound:
                assert refs.get(obj["metadata"]["uid"]) == bound

    def teardown(self):
        """Liveness: once agents and API calm down, the migration finishes (either way)."""
        w = getattr(self, "world", None)
        if w is None:
            return
        for agent in w.agents.values():
            agent.down = False
            agent.fail_next.clear()
            agent.lose_reply_next = False
            agent.thaw_sticks = False
        w.api_faults.clear()
        w.webhook_up = True
        for _ in range(200):
            if w.migration.status.phase.terminal:
                break
            w.page_streams_end(broken=False)
            w.reconcile_checkpoints()
            w.reconcile_migration()
            w.owner_sync()
            w.kubelet()
            w.advance(5)
            self.no_violation_recorded()
            self.never_two_unfrozen_copies()
        engine = w.migration.status.engine
        kind = ("StatefulSet" if w.stateful else "ReplicaSet") if w.owned else "bare"
        event(f"ended {w.migration.status.phase.value} ({w.migration.status.reason}), engine {engine}, {kind}")
        if any(cond.type == "DurableCopy" for cond in w.migration.status.conditions):
            event(f"went on without its durable copy, ended {w.migration.status.phase.value}")
        if w.migration.status.post_copy_above_bytes:
            event(f"post-copy asked for, ended {w.migration.status.phase.value} ({w.migration.status.reason})")
        assert w.migration.status.phase.terminal, f"stuck in {w.migration.status.phase}: {w.migration.status}"
        self.failure_has_reason_and_leaves_source_thawed()
        if w.migration.status.phase is MigrationPhase.COMPLETED:
            assert len(w.restored_pods()) == 1
            live = w.restored_pods()[0]["spec"].get("runtimeClassName") == "lpm"
            assert live == w.live == (engine is Engine.LIVE)
            if w.migration.spec.source_cleanup is SourceCleanup.DELETE:
                assert w.source() is None
        if w.owned:
            w.owner_sync()
            owned = w.owned_pods()
            assert len(owned) == 1, [p["metadata"]["name"] for p in owned]
            if w.migration.status.phase is MigrationPhase.COMPLETED:
                assert owned[0]["metadata"]["name"] == w.restored_pods()[0]["metadata"]["name"]


MigrationMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMigrationMachine = MigrationMachine.TestCase


@settings(max_examples=1, database=None, deadline=None)
@given(st.none())  # a hypothesis context, which the machine's `event` calls need; the steps below are fixed
def test_validation_failure_removes_a_replacement_whose_preparing_was_lost(_):
    """Found by the machine: Preparing created the replacement, the write that recorded Preparing was lost, and
    the retried validation then failed (target NotReady). The migration ended Failed with the replacement left
    running next to the source. It must roll back: delete the replacement, then end Failed."""
    machine = MigrationMachine()
    machine.setup(containers=["app"], policy="Freeze", cleanup="Delete", timeout=600, live=True)
    w = machine.world
    machine.api_fault("lost")
    machine.api_fault("reject")
    machine.api_fault("reject")  # and the write again over a fresh resourceVersion (`reconciler.apply`)
    for _ in range(5):
        machine.reconcile_migration(crash_after=None)
        if w.restored_pods():
            break
    assert w.restored_pods(), "the scenario needs a replacement created by Preparing"
    assert w.migration.status.phase in (MigrationPhase.PENDING, MigrationPhase.VALIDATING)
    machine.target_node_readiness(ready=False)
    for _ in range(10):
        machine.reconcile_migration(crash_after=None)
        machine.failure_has_reason_and_leaves_source_thawed()
        machine.at_most_one_restored_pod()
    assert w.migration.status.phase is MigrationPhase.FAILED, w.migration.status
    assert w.migration.status.reason == "TargetNodeNotReady"
    assert not w.restored_pods()
    machine.teardown()


@settings(max_examples=1, database=None, deadline=None)
@given(st.none())
def test_a_rollback_whose_status_write_was_rejected_never_leaves_a_thawed_source_to_be_migrated_on(_):
    """Found by the machine: the conversion failed for good, the rollback thawed the source in the same cycle, and
    the status write that recorded RollingBack was rejected. The next cycle, still in Converting, converted again
    and restored the pod from the checkpoint the running source had left behind: two copies ran. A rollback is now
    recorded before anything is undone."""
    machine = MigrationMachine()
    machine.setup(containers=["app"], policy="Freeze", cleanup="Delete", timeout=30, live=False)
    for _ in range(5):
        machine.reconcile_everything()
    assert machine.world.migration.status.phase is MigrationPhase.CONVERTING
    machine.api_fault(fault="reject")
    machine.api_fault(fault="reject")  # its retry over a fresh resourceVersion too
    machine.agent_fails_next_call(method="ConvertCheckpointToImage", node=TARGET, permanent=True)
    machine.reconcile_everything()
    machine.teardown()  # the invariants after every step, to the end
