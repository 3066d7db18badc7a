"""Client-observed outage of Debian's Redis during a migration, next to the pod's own downtime (issue 14).

    ./pants package src/docker:: src/python/lpm/cli:kubectl-lpm
    PYTHONPATH=tests python3 tests/bench/e2e/bench_connections.py --runs 5

Each run starts the setup of tests/e2e/redis.py (redis-server with in-pod clients on lpm-node-1, a client on
lpm-node-2 writing through the ClusterIP Service every 10 ms) and moves the server pod to lpm-node-2:
- pod downtime: the largest gap in the server's own clock as its in-pod `tick` client reads it (TIME every
  10 ms over one loopback connection), minus the 10 ms tick: how long Redis answered nothing;
- client-observed outage: the largest gap between two acknowledged writes of the outside client, by its clock
  (from the last reply before the move to the first after it), minus its ~10 ms loop;
- writes lost: acknowledged values missing from the restored server (must be 0).
Baseline: delete the pod and create it again on lpm-node-2 (the data is lost; the outage is the client's).
Prints medians over the runs. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from typing import Any

from e2e import lpmctl as k
from e2e import redis

TICK = 0.01


def _pairs(values: list[Any]) -> list[float]:
    ints = [v for v in values if isinstance(v, int)]
    return [s + us / 1e6 for s, us in zip(ints[::2], ints[1::2], strict=False)]


def lpm_run(i: int, engine: str, tag: str) -> dict[str, float]:
    setup = redis.start(f"bench-redis-{engine.lower()}-{i}", tag)
    time.sleep(2)
    source_tick = k.Follow(setup.server, "tick")
    mig = f"{setup.server}-mig"
    t0 = time.monotonic()
    res = k.lpm("migrate", setup.server, "--to", k.NODE_2, "--name", mig, "--engine", engine, "--wait")
    total = time.monotonic() - t0
    if res.returncode != 0:
        raise SystemExit(f"migration {mig} failed: {res.stdout}{res.stderr}")
    restored = k.migration(mig)["status"]["restoredPodName"]
    before = len(redis.acked(setup.client))
    k.wait_for("writes after the move", lambda: len(redis.acked(setup.client)) > before + 100)
    clock = _pairs(source_tick.lines()) + redis.server_clock(restored)
    acks = redis.acks(setup.client)
    tried = redis.attempts(setup.client)
    final = int(redis.cli(restored, "GET", "ext"))
    lost = sum(1 for v, _ in acks if v > final)
    redis.stop(setup, restored)
    k.kubectl("-n", k.NAMESPACE, "delete", "podmigration", mig, "--wait=false", check=False)
    return {
        "total_s": total,
        "downtime_s": redis.largest_gap(clock) - TICK,
        "outage_s": redis.largest_gap([t for _, t in acks]) - TICK,
        **_waits(tried),
        "lost": lost,
    }


def _waits(tried: list[tuple[float, bool]]) -> dict[str, float]:
    """Within the outage: the longest single attempt (a connection that hung) and the failed attempts (each one
    an error the client got at once, e.g. a refused connection, and retried)."""
    ok = [t for t, acked in tried if acked]
    start, end = max(itertools.pairwise(sorted(ok)), key=lambda p: p[1] - p[0], default=(0.0, 0.0))
    inside = sorted(t for t, _ in tried if start <= t <= end)
    return {
        "hang_s": redis.largest_gap(inside) - TICK,
        "failed": float(sum(1 for t, acked in tried if start < t < end and not acked)),
    }


def baseline_run(i: int, tag: str) -> dict[str, float]:
    setup = redis.start(f"bench-redis-base-{i}", tag)
    time.sleep(2)
    t0 = time.monotonic()
    k.kubectl("-n", k.NAMESPACE, "delete", "pod", setup.server, "--wait=true")
    k.kubectl("apply", "-f", "-", input=json.dumps(redis.server_pod(setup.server, tag, k.NODE_2)))
    before = len(redis.acked(setup.client))
    k.wait_for("writes after the re-creation", lambda: len(redis.acked(setup.client)) > before + 100, timeout=180)
    total = time.monotonic() - t0
    acks = redis.acks(setup.client)
    tried = redis.attempts(setup.client)
    redis.stop(setup)
    return {"total_s": total, "outage_s": redis.largest_gap([t for _, t in acks]) - TICK, **_waits(tried)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--engines", nargs="*", default=["Live", "Image"], choices=["Live", "Image"])
    args = ap.parse_args()
    k.install_lpm()
    tag = redis.image()
    runs: dict[str, list[dict[str, float]]] = {}
    for i in range(args.runs):  # interleaved, so a slow spell of the machine hits every method alike
        for engine in args.engines:
            runs.setdefault(engine, []).append(lpm_run(i, engine, tag))
        runs.setdefault("baseline", []).append(baseline_run(i, tag))
    print(f"Redis, medians of {args.runs} runs; outside client writes through a ClusterIP Service every ~10 ms")
    print("(longest hang: the longest single attempt within the outage; failed: attempts that failed at once)")
    print(
        f"{'method':>9} {'total':>8} {'pod downtime':>13} {'client outage':>14} {'beyond':>8} {'longest hang':>13} "
        f"{'failed':>7}  acknowledged writes lost"
    )
    for engine in args.engines:
        rs = runs[engine]
        med = {key: statistics.median(r[key] for r in rs) for key in ("total_s", "downtime_s", "outage_s", "hang_s")}
        beyond = statistics.median(r["outage_s"] - r["downtime_s"] for r in rs)
        print(
            f"{engine:>9} {med['total_s']:7.2f}s {med['downtime_s']:12.3f}s {med['outage_s']:13.3f}s "
            f"{beyond:7.3f}s {med['hang_s']:12.3f}s {statistics.median(r['failed'] for r in rs):7.0f}  "
            f"{sum(int(r['lost']) for r in rs)} in {len(rs)} runs"
        )
    base = runs["baseline"]
    print(
        f"{'baseline':>9} {statistics.median(r['total_s'] for r in base):7.2f}s {'-':>13} "
        f"{statistics.median(r['outage_s'] for r in base):13.3f}s {'-':>8} "
        f"{statistics.median(r['hang_s'] for r in base):12.3f}s {statistics.median(r['failed'] for r in base):7.0f}  "
        "every write (the data is lost)"
    )
    for method, rs in runs.items():  # every run: the medians hide which runs hung
        print(
            f"{method}: "
            + "; ".join(f"outage {r['outage_s']:.2f}s hang {r['hang_s']:.2f}s failed {r['failed']:.0f}" for r in rs)
        )


if __name__ == "__main__":
    main()
