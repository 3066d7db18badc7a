"""Debian's redis-server migrates under load from real clients (issue 14), on both engines.

- Inside the pod, other containers run `redis-cli -r -1 ...`: one connection over 127.0.0.1 each, for their
  whole life. They must go on across the move on that same connection: no reconnect (the restored server still
  lists the client, as old as before plus the time since), no value lost or repeated.
- On the other node, a client pod runs `redis-cli -h <ClusterIP> INCR ext` in a loop through the Service, and
  prints each acknowledged value. It reconnects by itself after the move, and no acknowledged write is lost:
  the restored server's value is at least every value a client was told, and no value was told twice.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from e2e import lpmctl as k
from e2e import redis

pytestmark = pytest.mark.usefixtures("lpm_cluster")


@pytest.fixture(scope="module")
def redis_image() -> str:
    return redis.image()


def _age(client_line: str) -> int:
    return int(next(f for f in client_line.split() if f.startswith("age=")).split("=")[1])


@pytest.mark.parametrize("engine", ["Live", "Image"])
def test_redis_keeps_its_in_pod_clients_and_loses_no_acknowledged_write(engine: str, redis_image: str) -> None:
    setup = redis.start(f"redis-{engine.lower()}", redis_image)
    mig = f"mig-redis-{engine.lower()}"
    source_inpod = k.Follow(setup.server, "inpod")
    inpod_client, seen_at = redis.client_line(setup.server, "incr"), time.monotonic()
    assert inpod_client, "the in-pod client is not connected"

    res = k.lpm("migrate", setup.server, "--to", k.NODE_2, "--name", mig, "--engine", engine, "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    restored = k.migration(mig)["status"]["restoredPodName"]
    acked_before = len(redis.acked(setup.client))

    # The in-pod client: the same connection, counting on with no value lost or repeated.
    printed: list[Any] = source_inpod.lines()  # redis-cli prints bare integers (JSON numbers)
    last = max(v for v in printed if isinstance(v, int))

    def after() -> list[int]:
        return sorted({v for v in redis.ints(restored, "inpod") if v > last})

    k.wait_for("the in-pod client counting on the target", lambda: len(after()) > 20)
    values = after()
    assert values[0] == last + 1 and values == list(range(last + 1, values[-1] + 1)), values[:10]
    again, elapsed = redis.client_line(restored, "incr"), time.monotonic() - seen_at
    assert again and again.split()[0] == inpod_client.split()[0], (inpod_client, again)  # the same client id
    # Its connection is as old as it was plus the time since: not a new one (the server's clock went on).
    assert _age(again) >= _age(inpod_client) + elapsed - 2, (inpod_client, again, elapsed)
    assert redis.largest_gap(redis.server_clock(restored)) > 0, "the tick client printed nothing"

    # The client on the other node: reconnected by itself, and every acknowledged write is there.
    k.wait_for(
        "the outside client acknowledged after the move", lambda: len(redis.acked(setup.client)) > acked_before + 20
    )
    acked = redis.acked(setup.client)
    assert acked == sorted(set(acked)), "an acknowledged value repeated or went back: a write was lost"
    assert int(redis.cli(restored, "GET", "ext")) >= acked[-1]
    redis.stop(setup, restored)


def test_a_rolled_back_migration_leaves_the_source_serving_its_outside_client(redis_image: str) -> None:
    """While its source is frozen for a migration, new connections to it are refused at once
    (deploy/node/lpm-criu-action), so the outside client retries instead of waiting for an answer. A rollback
    lifts that with the thaw: the same client writes to the source again, through the Service, and no
    acknowledged write is lost."""
    setup = redis.start("redis-rollback", redis_image)
    # 300 MB in the server: its checkpoint and transfer take seconds, so the migration is deleted before its
    # commit point (the restore on the target), which rolls it back.
    fill = "head -c 300000000 /dev/urandom | redis-cli -x SET ballast >/dev/null && redis-cli STRLEN ballast"
    size = k.kubectl("-n", k.NAMESPACE, "exec", setup.server, "-c", "redis", "--", "sh", "-c", fill).stdout
    assert int(size) == 300_000_000, size
    mig = "mig-redis-rollback"
    started = time.time()  # the client's clock is this machine's (the nodes share its kernel)
    k.apply(
        {
            "apiVersion": "lpm.my.domain/v1",
            "kind": "PodMigration",
            "metadata": {"name": mig, "namespace": k.NAMESPACE},
            "spec": {"podName": setup.server, "targetNode": k.NODE_2, "engine": "Live"},
        }
    )
    k.wait_for(f"{mig} past its freeze", lambda: k.phase(mig) in ("Checkpointing", "Transferring"), 120, 0.05)
    k.kubectl("-n", k.NAMESPACE, "delete", "podmigration", mig, "--wait=true", "--timeout=120s")
    rolled_back = time.time()
    pod = k.kubectl_json("-n", k.NAMESPACE, "get", "pod", setup.server)
    assert pod["spec"]["nodeName"] == k.NODE_1 and not pod["metadata"].get("deletionTimestamp")

    def acked_since_the_rollback() -> int:
        return sum(1 for _, at in redis.acks(setup.client) if at > rolled_back)

    k.wait_for("the outside client writing to the thawed source", lambda: acked_since_the_rollback() > 20)
    refused = [t for t, ok in redis.attempts(setup.client) if not ok and started < t < rolled_back]
    assert refused, "no connection to the frozen source was refused: the client waited for it instead"
    acked = redis.acked(setup.client)
    assert acked == sorted(set(acked)), "an acknowledged value repeated or went back: a write was lost"
    assert int(redis.cli(setup.server, "GET", "ext")) >= acked[-1]
    leftovers = k.kubectl_json("-n", k.NAMESPACE, "get", "pods", "-l", "lpm.my.domain/restored")["items"]
    assert not [
        p for p in leftovers if p["metadata"].get("annotations", {}).get("lpm.my.domain/source-pod") == setup.server
    ]
    redis.stop(setup)
