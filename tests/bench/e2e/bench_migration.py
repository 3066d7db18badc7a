"""End-to-end migration benchmark on the real local cluster, against "delete the pod and recreate it".

    ./pants package src/docker:: src/python/lpm/cli:kubectl-lpm
    ./pants run tests/bench/e2e/bench_migration.py -- --runs 5
    (or, without holding Pants while it runs: PYTHONPATH=tests python3 tests/bench/e2e/bench_migration.py)

For each workload (the analytics counter, and the same with 256 MiB of in-memory state) and each run:
- LPM: create a PodMigration lpm-node-1 -> lpm-node-2 and wait for Completed. Reports end-to-end time (object
  created -> Completed), downtime (last state update the source made -> first update on the target, from the
  workload's own timestamps), whether any update was lost or repeated (sequence numbers), and the phase
  breakdown from the PodMigration's status.
- Baseline: delete the pod and create it again on lpm-node-2 (what a StatefulSet does). Downtime = last update
  of the old pod -> first update of the new one; the state lost = every event the old pod had processed.
Prints medians and the LPM/baseline ratios. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from typing import Any

from e2e import lpmctl as k


def _updates_gap(lines: list[dict[str, Any]]) -> tuple[float, bool]:
    """Largest gap between consecutive updates (the freeze), and whether the sequence is intact."""
    seqs = [s["seq"] for s in lines]
    intact = seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    gaps = [b["ts"] - a["ts"] for a, b in itertools.pairwise(lines)]
    return max(gaps), intact


def lpm_run(i: int, ballast: int) -> dict[str, Any]:
    pod, mig = f"bench-{ballast}-{i}", f"bench-{ballast}-{i}"
    k.start_counter(pod, ballast_mib=ballast)
    time.sleep(2)
    t0 = time.monotonic()
    res = k.lpm("migrate", pod, "--to", k.NODE_2, "--name", mig, "--wait", "--timeout", "600")
    total = time.monotonic() - t0
    if res.returncode != 0:
        raise SystemExit(f"migration {mig} failed: {res.stdout}{res.stderr}")
    st = k.migration(mig)["status"]
    restored = st["restoredPodName"]
    k.wait_for("updates on the target", lambda: len(k.states(restored)) > 30)
    time.sleep(2)
    downtime, intact = _updates_gap(k.states(restored))
    k.kubectl("-n", k.NAMESPACE, "delete", "pod", restored, "--grace-period=0", "--force", check=False)
    k.kubectl("-n", k.NAMESPACE, "delete", "podmigration", mig, "--wait=false", check=False)
    return {"total_s": total, "downtime_s": downtime, "intact": intact, "phases": st["phaseDurationsSeconds"]}


def baseline_run(i: int, ballast: int) -> dict[str, Any]:
    pod = f"base-{ballast}-{i}"
    k.start_counter(pod, ballast_mib=ballast)
    time.sleep(2)
    t0 = time.monotonic()
    k.kubectl("-n", k.NAMESPACE, "delete", "pod", pod, "--wait=true")
    last_old = time.time()  # the old pod stops updating no later than its deletion completing
    k.kubectl("apply", "-f", "-", input=json.dumps(k.counter_pod(pod, k.NODE_2, ballast_mib=ballast)))
    k.wait_for("the new pod's first update", lambda: k.states(pod), timeout=120, interval=0.1)
    total = time.monotonic() - t0
    first_new = k.states(pod)[0]
    k.kubectl("-n", k.NAMESPACE, "delete", "pod", pod, "--grace-period=0", "--force", check=False)
    return {
        "total_s": total,
        "downtime_s": first_new["ts"] - last_old,
        "events_lost": True,
        "restart_seq": first_new["seq"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ballast", type=int, nargs="*", default=[0, 256], help="MiB of in-memory state per workload")
    args = ap.parse_args()
    k.install_lpm()
    print(f"{'workload':>14} {'method':>9} {'median total':>13} {'median downtime':>16}  notes")
    for ballast in args.ballast:
        lpm = [lpm_run(i, ballast) for i in range(args.runs)]
        base = [baseline_run(i, ballast) for i in range(args.runs)]
        name = f"counter+{ballast}MiB" if ballast else "counter"
        med = {
            m: {key: statistics.median(r[key] for r in rs) for key in ("total_s", "downtime_s")}
            for m, rs in (("lpm", lpm), ("baseline", base))
        }
        phases = {p: statistics.median(r["phases"].get(p, 0.0) for r in lpm) for p in lpm[0]["phases"]}
        print(
            f"{name:>14} {'LPM':>9} {med['lpm']['total_s']:12.2f}s {med['lpm']['downtime_s']:15.2f}s  "
            f"state intact in {sum(r['intact'] for r in lpm)}/{len(lpm)} runs"
        )
        print(
            f"{name:>14} {'baseline':>9} {med['baseline']['total_s']:12.2f}s {med['baseline']['downtime_s']:15.2f}s  "
            f"state lost in every run (counter restarts at {base[0]['restart_seq']})"
        )
        print(
            f"{'':>14} ratio LPM/baseline: total {med['lpm']['total_s'] / med['baseline']['total_s']:.2f}, "
            f"downtime {med['lpm']['downtime_s'] / med['baseline']['downtime_s']:.2f}"
        )
        print(f"{'':>14} LPM phase medians: " + ", ".join(f"{p} {v:.2f}s" for p, v in phases.items()))


if __name__ == "__main__":
    main()
