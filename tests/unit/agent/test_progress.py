"""The agent's progress registry (GetProgress): stages, bytes, concurrency, and what is kept after the end."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

from lpm.agent.progress import Counted, Progress


def test_a_checkpoint_goes_through_its_stages_and_counts_only_its_current_stages_bytes() -> None:
    p = Progress()
    p.stage("ck", "app", "dumping")
    p.moved("ck", "app", "sending", 10)  # not in that stage yet: ignored
    (step,) = p.report("ck")
    assert (step.stage, step.done, step.total) == ("dumping", 0, 0)
    p.stage("ck", "app", "sending", total=100)
    p.moved("ck", "app", "sending", 40)
    p.moved("ck", "app", "storing", 99)  # the durable copy's bytes do not count while sending
    (step,) = p.report("ck")
    assert (step.stage, step.done, step.total) == ("sending", 40, 100)
    p.end("ck", "app")
    (step,) = p.report("ck")
    assert (step.stage, step.done) == ("done", 100)
    assert p.report("other") == []


def test_reports_are_copies_and_concurrent_counting_loses_nothing() -> None:
    p = Progress()
    p.stage("ck", "app", "sending", total=8000)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: p.moved("ck", "app", "sending", 1), range(8000)))
    (step,) = p.report("ck")
    step.done = -1
    assert p.report("ck")[0].done == 8000


def test_finished_checkpoints_are_forgotten_after_the_keep_time() -> None:
    p = Progress(keep_seconds=0.0)
    p.stage("old", "app", "sending", total=1)
    p.end("old", "app")
    p.stage("new", "app", "dumping")  # any new stage sweeps what ended longer ago than the keep time
    assert p.report("old") == []
    assert [s.stage for s in p.report("new")] == ["dumping"]


def test_counted_reader_reports_every_byte_read() -> None:
    seen: list[int] = []
    reader = Counted(io.BytesIO(b"x" * 2500), seen.append)
    while reader.read(1000):
        pass
    assert sum(seen) == 2500
