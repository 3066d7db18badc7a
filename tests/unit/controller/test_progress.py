"""status.progress while the checkpoint is taken: asked from the source's agent at most once a second, rate and
ETA from consecutive reports, and never a reason to fail."""

from __future__ import annotations

from datetime import timedelta

from unit.controller.test_podmigration_decide import NOW, PUID, _ready_checkpoint, migration, obs, pod, status

from lpm.api.agent.v1 import agent_pb2 as pb
from lpm.api.models import CheckpointPhase, MigrationPhase, MigrationProgress
from lpm.app import clock
from lpm.cli.commands import progress_line
from lpm.controller.effects import GetProgress, Outcome, PatchStatus
from lpm.controller.podmigration.decide import decide

ASK = GetProgress("node-a", pb.ProgressRequest(checkpoint_id="ck"))


def _checkpointing(progress=None):
    return migration(
        MigrationPhase.CHECKPOINTING,
        pod_uid=PUID,
        source_node="node-a",
        checkpoint_id="ck",
        source_frozen=True,
        progress=progress,
    )


def _busy():
    pc = _ready_checkpoint()
    pc.status.phase = CheckpointPhase.IN_PROGRESS
    return pc


def _decide(m, **outcomes):
    return decide(obs(m, source_pod=pod(), pod_checkpoint=_busy(), outcomes=outcomes))


def _reply(stage, done, total, elapsed="2s"):
    return Outcome.success(
        {
            "containers": [
                {
                    "container_name": "app",
                    "stage": stage,
                    "bytes_done": str(done),
                    "bytes_total": str(total),
                    "elapsed": elapsed,
                }
            ]
        }
    )


def test_the_first_report_takes_its_rate_from_the_stages_elapsed_time():
    p = status(_decide(_checkpointing(), **{ASK.key: _reply("sending", 100, 400)})).progress
    assert (p.stage, p.bytes_done, p.bytes_total, p.bytes_per_second, p.eta_seconds) == ("sending", 100, 400, 50.0, 6.0)
    assert p.updated_at == clock.fmt(NOW)


def test_the_agent_is_asked_at_most_once_a_second_and_the_rate_comes_from_the_last_report():
    recent = MigrationProgress(stage="sending", updated_at=clock.fmt(NOW - timedelta(seconds=0.5)), bytes_done=100)
    assert not any(isinstance(a, GetProgress) for a in _decide(_checkpointing(recent)))
    older = MigrationProgress(stage="sending", updated_at=clock.fmt(NOW - timedelta(seconds=2)), bytes_done=100)
    p = status(_decide(_checkpointing(older), **{ASK.key: _reply("sending", 300, 400)})).progress
    assert (p.bytes_per_second, p.eta_seconds) == (100.0, 1.0)


def test_a_dump_has_no_bytes_yet_and_an_agent_that_cannot_answer_changes_nothing():
    p = status(_decide(_checkpointing(), **{ASK.key: _reply("dumping", 0, 0)})).progress
    assert p.stage == "dumping" and p.eta_seconds is None
    assert progress_line({"stage": "dumping"}) == "dumping (CRIU writes the memory)"
    failed = Outcome.failure("Unimplemented", "older agent", retryable=False)
    assert not any(isinstance(a, PatchStatus) for a in _decide(_checkpointing(), **{ASK.key: failed}))


def test_no_progress_call_delays_a_cycle_that_moves_the_frozen_source_on():
    stale = MigrationProgress(stage="sending", updated_at=clock.fmt(NOW - timedelta(seconds=5)))
    for pc in (None, _ready_checkpoint()):
        actions = decide(obs(_checkpointing(stale), source_pod=pod(), pod_checkpoint=pc))
        assert not any(isinstance(a, GetProgress) for a in actions)


def test_the_progress_line_says_bytes_rate_and_eta():
    line = progress_line(
        {
            "stage": "sending",
            "bytesDone": 120 * 2**20,
            "bytesTotal": 256 * 2**20,
            "bytesPerSecond": 95 * 2**20,
            "etaSeconds": 1.43,
        }
    )
    assert line == "sending 120.0 MiB of 256.0 MiB (95.0 MiB/s, ETA 1.4s)"
