"""Benchmark: what the lpm-runc wrapper adds to every runc call it passes through.

    ./pants run tests/bench/runtime/bench_lpm_runc.py [-- --runs 300]

Needs root, runc at /usr/sbin/runc and Go (/usr/local/go); the wrapper is built through
src/go/lpm-runc/build.sh (cached).

containerd's runc shim calls the runtime of the `lpm` handler (lpm-runc) for every container operation on
the node; all but the create of a container being restored go straight to runc by exec. Measured, in the
same run and interleaved call by call: wall time of cheap runc calls made directly and through the wrapper
(`--version`; `state` of a container that does not exist; `create` of a bundle without a rootfs, which runc
rejects after reading config.json, so the wrapper's create path reads the config too), plus the same
pass-through written in Python (os.execv) for comparison. Prints median and p90 per call, the wrapper/direct
ratio and the difference in ms (goal: <= 10 ms). It measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNC = "/usr/sbin/runc"
PY_WRAPPER = f"""#!{sys.executable if os.path.basename(sys.executable).startswith("python3") else "/usr/bin/python3"}
import os, sys
os.execv({RUNC!r}, ["runc"] + sys.argv[1:])
"""


def repo_root() -> Path:
    for start in (Path.cwd(), Path(__file__).resolve()):
        for cand in (start, *start.parents):
            if (cand / "src" / "go" / "lpm-runc" / "build.sh").exists():
                return cand
    raise SystemExit("src/go/lpm-runc/build.sh not found: run from the repository")


def build_wrapper() -> str:
    proc = subprocess.run(
        [str(repo_root() / "src/go/lpm-runc/build.sh")], check=True, stdout=subprocess.PIPE, text=True
    )
    return proc.stdout.strip().splitlines()[-1]


def timed(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter_ns()
    subprocess.run(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False
    )
    return (time.perf_counter_ns() - t) / 1e6


def p90(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=10)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300, help="calls per runtime and case (>= 200 recommended)")
    args = parser.parse_args()
    if not os.path.exists(RUNC):
        raise SystemExit(f"{RUNC} not found (apt-get install runc)")
    wrapper = build_wrapper()
    with tempfile.TemporaryDirectory(prefix="lpm-bench-runc-") as td:
        work = Path(td)
        state = work / "state"
        bundle = work / "bundle"
        bundle.mkdir()
        subprocess.run([RUNC, "spec", "--bundle", str(bundle)], check=True)
        cfg = json.loads((bundle / "config.json").read_text())
        cfg["root"]["path"] = "missing-rootfs"  # runc reads the config, then fails: nothing is created
        cfg["annotations"] = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.container-name": "b"}
        (bundle / "config.json").write_text(json.dumps(cfg, indent=2))
        py = work / "py-runc"
        py.write_text(PY_WRAPPER)
        py.chmod(0o755)
        env = {**os.environ, "LPM_RUNC_RESTORE_ROOT": str(work / "restore")}
        env.pop("LPM_RUNC_RUNC", None)
        cases = {
            "--version": ["--version"],
            "state <nonexistent>": ["--root", str(state), "state", "nonexistent"],
            "create (no rootfs)": ["--root", str(state), "create", "--bundle", str(bundle), "bench-c"],
        }
        runtimes = {"direct": RUNC, "lpm-runc": wrapper, "python exec": str(py)}
        results: dict[tuple[str, str], list[float]] = {(c, r): [] for c in cases for r in runtimes}
        for case, argv in cases.items():
            for exe in runtimes.values():  # warm the page cache
                timed([exe, *argv], env)
            for _ in range(args.runs):
                for rt, exe in runtimes.items():
                    results[(case, rt)].append(timed([exe, *argv], env))
        shutil.rmtree(state, ignore_errors=True)
    print(f"\n{args.runs} calls each, interleaved; wall time per call in ms (median / p90)")
    head = f"{'call':<22} {'direct':>15} {'lpm-runc':>15} {'ratio':>6} {'+ms':>6} {'python exec':>15} {'+ms':>6}"
    print(head)
    print("-" * len(head))
    for case in cases:
        d, w, p = (results[(case, r)] for r in runtimes)
        dm, wm, pm = statistics.median(d), statistics.median(w), statistics.median(p)
        print(
            f"{case:<22} {dm:7.2f} / {p90(d):5.2f} {wm:7.2f} / {p90(w):5.2f} {wm / dm:6.2f} {wm - dm:6.2f} "
            f"{pm:7.2f} / {p90(p):5.2f} {pm - dm:6.2f}"
        )


if __name__ == "__main__":
    main()
