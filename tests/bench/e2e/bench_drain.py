"""`kubectl drain` with LPM against plain `kubectl drain`, on the real local cluster.

    ./pants package src/docker:: src/python/lpm/cli:kubectl-lpm
    PYTHONPATH=tests python3 tests/bench/e2e/bench_drain.py --runs 3 --pods 1 5 10

For N opted-in pods (the analytics counter as a Deployment of N, every pod on lpm-node-1, ticking every --tick
seconds), `kubectl drain lpm-node-1 --ignore-daemonsets` runs and is timed; LPM's eviction webhook turns each
eviction into a live migration to lpm-node-2. Each pod's downtime is the largest gap between two consecutive state
updates across source and restored pod, minus the tick (the workload's own timestamps), and its sequence must be
intact. The baseline drains the same Deployment without the opt-in label: the owner starts fresh pods elsewhere;
downtime = the evicted pods' last update -> the new pods' first ones (paired in order; negative means the empty
new pod ran before the old one stopped, reported as overlap), state lost = the updates the evicted pod had made.
Medians per N; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from e2e import lpmctl as k


def _setup(name: str, n: int, opted_in: bool, tick: float) -> dict[str, k.Follow]:
    k.kubectl("cordon", k.NODE_2)
    try:
        k.apply(k.deployment(name, n, opted_in, tick))
        pods = k.running_on(name, k.NODE_1, n)
        for pod in pods:
            pod_name = pod["metadata"]["name"]
            k.wait_for(f"{pod_name} counting", lambda p=pod_name: k.last_seq(p) >= 20, timeout=120)
    finally:
        k.kubectl("uncordon", k.NODE_2)
    k.controller_off(k.NODE_1)
    return {p["metadata"]["name"]: k.Follow(p["metadata"]["name"]) for p in pods}


def _drain(name: str) -> float:
    t0 = time.monotonic()
    res = k.kubectl(
        "drain",
        k.NODE_1,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        f"--pod-selector=app={name}",
        "--timeout=900s",
        check=False,
    )
    took = time.monotonic() - t0
    k.kubectl("uncordon", k.NODE_1)
    if res.returncode != 0:
        raise SystemExit(f"kubectl drain failed: {res.stderr}")
    return took


def _teardown(name: str) -> None:
    k.kubectl("-n", k.NAMESPACE, "delete", "deployment", name, "--wait=false", check=False)
    k.kubectl("-n", k.NAMESPACE, "delete", "podmigrations", "-l", "lpm.my.domain/eviction=true", check=False)
    k.wait_for(f"{name}'s pods gone", lambda: not k.pods_of(name), timeout=120)


def lpm_run(i: int, n: int, tick: float) -> dict[str, Any]:
    name = f"drain-lpm-{n}-{i}"
    follows = _setup(name, n, True, tick)
    took = _drain(name)
    moved = k.running_on(name, k.NODE_2, n)
    downs, intact = [], 0
    for pod in moved:
        source = pod["metadata"]["annotations"]["lpm.my.domain/source-pod"].split("/")[-1]
        k.wait_for("updates on the target", lambda p=pod: k.last_seq(p["metadata"]["name"]) > 0)
        time.sleep(1)
        before = follows[source].lines()
        last = before[-1]["seq"]
        lines = before + [s for s in k.states(pod["metadata"]["name"]) if s["seq"] > last]
        downtime, whole = k.updates_gap(lines, tick)
        downs.append(downtime)
        intact += whole
    _teardown(name)
    return {"drain_s": took, "downtimes": downs, "intact": intact, "n": n}


def baseline_run(i: int, n: int, tick: float) -> dict[str, Any]:
    name = f"drain-plain-{n}-{i}"
    follows = _setup(name, n, False, tick)
    took = _drain(name)
    fresh = k.running_on(name, k.NODE_2, n)
    ends = sorted((f.lines()[-1] for f in follows.values()), key=lambda s: s["ts"])  # the evicted pods' last
    firsts = []
    for pod in fresh:
        k.wait_for("the new pod's first update", lambda p=pod: k.states(p["metadata"]["name"]), timeout=120)
        firsts.append(k.states(pod["metadata"]["name"])[0])
    firsts.sort(key=lambda s: s["ts"])
    gaps = [b["ts"] - a["ts"] for a, b in zip(ends, firsts, strict=True)]
    _teardown(name)
    return {
        "drain_s": took,
        "downtimes": [max(0.0, g) for g in gaps],
        "overlaps": [max(0.0, -g) for g in gaps],
        "lost": [e["seq"] for e in ends],
        "restart": firsts[0]["seq"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pods", type=int, nargs="*", default=[1, 5, 10])
    ap.add_argument("--tick", type=float, default=0.01, help="the counter's update interval (seconds)")
    args = ap.parse_args()
    k.install_lpm()
    print(f"counter tick {args.tick * 1000:.0f} ms; medians of {args.runs} drains; downtime = largest gap - tick")
    print(f"{'pods':>5} {'method':>12} {'drain total':>12} {'downtime p50':>13} {'downtime max':>13}  notes")
    for n in args.pods:
        lpm, plain = [], []
        for i in range(args.runs):  # interleaved, so a slow spell of the machine hits both alike
            lpm.append(lpm_run(i, n, args.tick))
            plain.append(baseline_run(i, n, args.tick))
        for method, rs in (("LPM", lpm), ("kubectl", plain)):
            total = statistics.median(r["drain_s"] for r in rs)
            downs = [d for r in rs for d in r["downtimes"]]
            note = (
                f"state intact in {sum(r['intact'] for r in rs)}/{n * len(rs)} pods"
                if method == "LPM"
                else f"state lost in every pod (median {statistics.median(x for r in rs for x in r['lost'])} "
                f"updates; counters restart at {rs[0]['restart']}); old and new pod side by side "
                f"{statistics.median(x for r in rs for x in r['overlaps']):.2f}s"
            )
            print(f"{n:>5} {method:>12} {total:11.2f}s {statistics.median(downs):12.3f}s {max(downs):12.3f}s  {note}")
        ratio = statistics.median(r["drain_s"] for r in lpm) / statistics.median(r["drain_s"] for r in plain)
        print(f"{'':>5} LPM/kubectl drain total: {ratio:.2f}")


if __name__ == "__main__":
    main()
