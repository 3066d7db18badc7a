"""Benchmark: a 256 MiB checkpoint through the NFS store backend vs `nfs-cp` of the same bytes, same server.

    ./pants run tests/bench/storage/bench_nfs.py [-- --size-mib 256 --rounds 3]

Starts the same podman API + nfs-ganesha container as the contract suite, then alternates, per round:
backend write (temp file, positional writes, durable commit, rename; sha256 as the store does), backend read
(streamed, sha256 verified), `nfs-cp` upload and `nfs-cp` download. Prints per-round seconds, medians,
MiB/s and the backend/nfs-cp ratio of medians. Not part of `pants test`: it measures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import statistics
import subprocess
import tempfile
import time

from integration.storage.nfs_server import nfs_server, podman_api

from lpm.storage.nfs import NfsFile, NfsLocation, NfsSession, RetryPolicy

CHUNK = 8 << 20


def backend_write(session: NfsSession, source: pathlib.Path, name: str) -> str:
    digest = hashlib.sha256()
    tmp = f".{name}.tmp"
    with open(source, "rb") as src, NfsFile(session, tmp, "wb") as out:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
        out.sync()
    session.call("rename", name, lambda c: c.rename(tmp, name))
    return digest.hexdigest()


def backend_read(session: NfsSession, name: str) -> str:
    digest = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with NfsFile(session, name, "rb") as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def nfs_cp(source: str, destination: str) -> None:
    subprocess.run(["nfs-cp", source, destination], check=True, stdout=subprocess.DEVNULL)


def timed(fn: object, *args: object) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args)  # type: ignore[operator]
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib << 20

    with tempfile.TemporaryDirectory(prefix="lpm-bench-nfs-") as tmp:
        work = pathlib.Path(tmp)
        export = work / "export"
        export.mkdir()
        source = work / "checkpoint.bin"
        with open(source, "wb") as f:
            for _ in range(size // CHUNK):
                f.write(os.urandom(CHUNK))
            f.write(os.urandom(size % CHUNK))
        expected = hashlib.sha256(source.read_bytes()).hexdigest()

        with podman_api(work), nfs_server(export) as server:
            location = NfsLocation.parse(server.url())
            session = NfsSession(location, RetryPolicy())
            base = "nfs://127.0.0.1/export"  # libnfs takes the ports from the query
            query = f"?version=3&nfsport={server.nfs_port}&mountport={server.mount_port}"
            times: dict[str, list[float]] = {
                k: [] for k in ("backend write", "backend read", "nfs-cp write", "nfs-cp read")
            }
            for r in range(args.rounds):
                t, digest = timed(backend_write, session, source, f"backend-{r}.bin")
                assert digest == expected
                times["backend write"].append(t)
                t, digest = timed(backend_read, session, f"backend-{r}.bin")
                assert digest == expected, "backend read returned other bytes"
                times["backend read"].append(t)
                t, _ = timed(nfs_cp, str(source), f"{base}/nfscp-{r}.bin{query}")
                times["nfs-cp write"].append(t)
                back = work / f"back-{r}.bin"
                t, _ = timed(nfs_cp, f"{base}/nfscp-{r}.bin{query}", str(back))
                times["nfs-cp read"].append(t)
                if hashlib.sha256(back.read_bytes()).hexdigest() != expected:
                    raise SystemExit("nfs-cp round trip returned other bytes")
                back.unlink()
                for p in export.iterdir():
                    p.unlink()
            session.close()

    mib = size / (1 << 20)
    print(f"\n{args.size_mib} MiB, {args.rounds} rounds, NFSv3 over TCP to nfs-ganesha on 127.0.0.1 (slirp4netns)")
    medians = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        rounds = " ".join(f"{x:6.2f}s" for x in v)
        print(f"  {k:14s} rounds {rounds}  median {medians[k]:6.2f}s  {mib / medians[k]:7.1f} MiB/s")
    for op in ("write", "read"):
        ratio = medians[f"nfs-cp {op}"] / medians[f"backend {op}"]
        print(f"  {op}: backend throughput / nfs-cp throughput = {ratio:.2f}")


if __name__ == "__main__":
    main()
