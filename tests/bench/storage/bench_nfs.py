"""Benchmark: a 256 MiB checkpoint through the NFS store backend vs `nfs-cp` of the same bytes, same server.

    ./pants run tests/bench/storage/bench_nfs.py [-- --size-mib 256 --rounds 3]

Starts the same podman API + nfs-ganesha container as the contract suite, then alternates, per round:
store write through NfsBackend (temp file, sha256, durable sync, rename, manifest, completion marker; fed in
the 1 MiB chunks put_archive produces), store read (marker, manifest, streamed archive verified against its
sha256), `nfs-cp` upload and `nfs-cp` download of the same bytes. Prints per-round seconds, medians,
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
from collections.abc import Iterator

from integration.storage.nfs_server import nfs_server, podman_api

from lpm.storage.backend import WRITE_CHUNK
from lpm.storage.nfs import NfsBackend
from lpm.storage.store import CheckpointStore
from lpm.storage.uri import CheckpointKey

CHUNK = 8 << 20
store_chunk = WRITE_CHUNK  # what put_archive hands the backend (zstd output chunks)
POD = "6a2b3c4d-1111-4222-8333-944455556666"


def random_file(path: pathlib.Path, size: int) -> str:
    """`size` incompressible bytes (what zstd hands the store) at `path`; returns their sha256."""
    with open(path, "wb") as f:
        for _ in range(size // CHUNK):
            f.write(os.urandom(CHUNK))
        f.write(os.urandom(size % CHUNK))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def backend_write(store: CheckpointStore, source: pathlib.Path, key: CheckpointKey) -> str:
    """The store's publish path: temp file, sha256, durable sync, rename, manifest, completion marker."""

    def stream() -> Iterator[bytes]:
        with open(source, "rb") as src:
            while chunk := src.read(store_chunk):
                yield chunk

    manifest = store.write_artifact(key.artifact("app"), stream())
    store.complete(key, ["app"], verify_data=False)
    return manifest.sha256


def backend_read(store: CheckpointStore, key: CheckpointKey) -> str:
    """The store's read path: marker, manifest, streamed archive verified against its sha256."""
    digest = hashlib.sha256()
    for chunk in store.read_artifact(key.artifact("app")):
        digest.update(chunk)
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
        expected = random_file(source, size)

        with podman_api(work), nfs_server(export) as server:
            store = CheckpointStore(NfsBackend(server.url()))
            base = "nfs://127.0.0.1/export"  # libnfs takes the ports from the query
            query = f"?version=3&nfsport={server.nfs_port}&mountport={server.mount_port}"
            times: dict[str, list[float]] = {
                k: [] for k in ("backend write", "backend read", "nfs-cp write", "nfs-cp read")
            }
            for r in range(args.rounds):
                key = CheckpointKey(POD, f"bench-{r}")
                t, digest = timed(backend_write, store, source, key)
                assert digest == expected
                times["backend write"].append(t)
                t, digest = timed(backend_read, store, key)
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
                store.delete(key)
                for p in export.iterdir():
                    if p.is_file():
                        p.unlink()
            store.close()

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
