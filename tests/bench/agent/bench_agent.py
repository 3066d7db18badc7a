"""Benchmark: the agent's checkpoint pipeline vs the floor, for a process with 64 MiB and 512 MiB of dirty memory.

    ./pants run tests/bench/agent/bench_agent.py [-- --sizes 64 512 --rounds 3]

Needs root, runc, CRIU 4.2 and gcc (tests/integration/agent/setup-host.sh + build-essential from criu.sh).

Pipeline: a real `lpm-agent` process (`python -m lpm.agent.main --insecure`) is asked to Checkpoint a runc
container whose only process holds N MiB of dirty, incompressible anonymous memory; the kubelet stand-in
from the integration tests does `runc checkpoint --leave-running` (CRIU) and writes the kubelet's tar; the
agent streams it through zstd into the store (temp, fsync, rename, manifest) and deletes the node copy.
Measured: the RPC's wall time (kubelet part + store part as the agent reports them) and the agent's peak
RSS (VmHWM, a fresh agent per size).
Floor, same run, same process size: `criu dump` of the same program (not in a container) to local disk,
then `cp -r` of the images into a store directory + `sync`.
Prints every round, medians, the pipeline/floor ratio and MiB/s. It measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from integration.agent.harness import RuncKubelet, make_bundle, make_pki, runc_remove, wait_for

from lpm.api.agent.v1 import agent_pb2, agent_pb2_grpc

DIRTY_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <unistd.h>
int main(int argc, char **argv) {
    size_t n = (size_t)atol(argv[1]) << 20;
    uint64_t *p = malloc(n), x = 88172645463325252ULL;
    for (size_t i = 0; i < n / 8; i++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; p[i] = x; }
    FILE *f = fopen(argv[2], "w"); fputs("ready", f); fclose(f);
    for (;;) pause();
}
"""


def build_dirty(work: Path) -> Path:
    src, exe = work / "dirty.c", work / "dirty"
    src.write_text(DIRTY_C)
    subprocess.run(["gcc", "-O2", "-static", "-o", str(exe), str(src)], check=True)
    return exe


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def floor_round(exe: Path, size: int, work: Path) -> float:
    """criu dump of the same program to local disk + cp of the images into a store dir (+ sync)."""
    ready = work / f"ready-{uuid.uuid4().hex[:6]}"
    with open(os.devnull, "rb") as i, open(os.devnull, "wb") as o:
        proc = subprocess.Popen(["setsid", str(exe), str(size), str(ready)], stdin=i, stdout=o, stderr=o)
    wait_for(ready.exists, "the dirty process", timeout=120)
    images, store = work / "floor-images", work / "floor-store"
    shutil.rmtree(images, ignore_errors=True)
    shutil.rmtree(store, ignore_errors=True)
    images.mkdir()
    store.mkdir()
    started = time.monotonic()
    subprocess.run(["criu", "dump", "-t", str(proc.pid), "-D", str(images), "-o", "dump.log"], check=True)
    subprocess.run(["cp", "-r", str(images), str(store / "images")], check=True)
    subprocess.run(["sync", "-f", str(store)], check=True)
    elapsed = time.monotonic() - started
    proc.wait(timeout=30)
    return elapsed


def pipeline_rounds(exe: Path, size: int, rounds: int, work: Path) -> tuple[list[tuple[float, float, float]], float]:
    pki = make_pki(work / "pki")
    kubelet = RuncKubelet(work / "kubelet-checkpoints", work / "kubelet-work", pki)
    kubelet.checkpoint_dir.mkdir(exist_ok=True)
    kubelet.work_dir.mkdir(exist_ok=True)
    http = kubelet.serve()
    repo = work / "repo"
    repo.mkdir(exist_ok=True)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "no_proxy": "127.0.0.1"}
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "grpc_proxy"):
        env.pop(var, None)
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lpm.agent.main",
            "--insecure",
            "--listen",
            f"127.0.0.1:{port}",
            "--node-name",
            "bench",
            "--storage",
            str(repo),
            "--kubelet-url",
            kubelet.url,
            "--kubelet-client-cert",
            str(pki.client_cert),
            "--kubelet-client-key",
            str(pki.client_key),
            "--kubelet-ca",
            str(pki.ca),
            "--kubelet-checkpoint-dir",
            str(kubelet.checkpoint_dir),
            "--state-dir",
            str(work / "state"),
            "--runtime",
            "podman",
            "--log-level",
            "warning",
        ],
        env=env,
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=60)
    stub = agent_pb2_grpc.CheckpointServiceStub(channel)
    cgroup_parent = f"/lpm-bench-{uuid.uuid4().hex[:8]}/kubepods"
    results = []
    try:
        for r in range(rounds):
            uid, cid = str(uuid.uuid4()), f"lpmbench{uuid.uuid4().hex[:12]}"
            bundle = make_bundle(work / cid, ["/dirty", str(size), "/tmp/ready"], f"{cgroup_parent}/pod{uid}/{cid}")
            shutil.copy2(exe, bundle / "rootfs" / "dirty")
            with open(os.devnull, "rb") as i, open(os.devnull, "wb") as o:
                subprocess.run(
                    ["runc", "run", "--detach", "--bundle", str(bundle), cid], stdin=i, stdout=o, stderr=o, check=True
                )
            from integration.agent.harness import RuncPod

            pod = RuncPod("default", f"bench-{r}", uid, "app", cid, bundle, cgroup_parent)
            kubelet.add(pod)
            wait_for((bundle / "rootfs" / "tmp" / "ready").exists, "the dirty container", timeout=120)
            started = time.monotonic()
            reply = stub.Checkpoint(
                agent_pb2.CheckpointRequest(
                    pod_namespace="default",
                    pod_name=pod.name,
                    container_name="app",
                    pod_uid=uid,
                    checkpoint_id=f"bench-{r}",
                    options=agent_pb2.CheckpointOptions(leave_running=True),
                ),
                timeout=900,
            )
            total = time.monotonic() - started
            results.append(
                (total, reply.kubelet_duration.ToNanoseconds() / 1e9, reply.store_duration.ToNanoseconds() / 1e9)
            )
            print(
                f"  pipeline {size} MiB round {r + 1}: {total:.2f}s (kubelet/CRIU+tar {results[-1][1]:.2f}s, "
                f"zstd+store {results[-1][2]:.2f}s; raw {reply.artifact.raw_size_bytes >> 20} MiB -> "
                f"{reply.artifact.compressed_size_bytes >> 20} MiB)",
                flush=True,
            )
            runc_remove(cid)
            shutil.rmtree(bundle, ignore_errors=True)
            shutil.rmtree(repo / uid, ignore_errors=True)
        peak = vm_hwm_mib(agent.pid)
    finally:
        channel.close()
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=60)
        http.shutdown()
        top = cgroup_parent.split("/")[1]
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            root = hierarchy / top
            if root.is_dir():
                for d in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                    if d.is_dir():
                        d.rmdir()
                root.rmdir()
    return results, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512], help="dirty MiB per process")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", default="", help="work directory on local disk [a temp dir]")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="lpm-bench-agent-"))
    exe = build_dirty(work)
    summary = []
    for size in args.sizes:
        print(f"== {size} MiB dirty memory, {args.rounds} rounds", flush=True)
        floors = []
        for r in range(args.rounds):
            floors.append(floor_round(exe, size, work))
            print(f"  floor {size} MiB round {r + 1}: {floors[-1]:.2f}s (criu dump + cp + sync)", flush=True)
        results, peak = pipeline_rounds(exe, size, args.rounds, work / f"p{size}")
        total = statistics.median(t for t, _, _ in results)
        floor = statistics.median(floors)
        summary.append(
            (
                size,
                total,
                statistics.median(k for _, k, _ in results),
                statistics.median(s for _, _, s in results),
                floor,
                peak,
            )
        )
    print("\nsize  pipeline(median)  kubelet/CRIU  zstd+store  floor(median)  ratio  pipeline MiB/s  agent peak RSS")
    for size, total, kub, sto, floor, peak in summary:
        print(
            f"{size:4d}  {total:15.2f}s  {kub:11.2f}s  {sto:9.2f}s  {floor:12.2f}s  {total / floor:5.2f}  "
            f"{size / total:14.1f}  {peak:11.1f} MiB"
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
