"""Benchmark: what encryption at rest costs the store, on the local disk and on NFS, against the floor.

    ./pants run tests/bench/storage/bench_encryption.py [-- --size-mib 256 --rounds 5]

One run measures, per round and on the same incompressible bytes (what zstd hands the store):
- local disk: store write and read in the clear, store write and read sealed (AES-256-GCM, lpm.storage.sealing),
  and `cp` + `sync` of the same file (the floor);
- NFS (nfs-ganesha through podman, as the contract suite starts it): the same four store paths and `nfs-cp`
  up and down (the floor).
Store writes include the temp file, sha256, durable sync, rename, manifest and completion marker; reads the
marker, manifest, verification and (sealed) authentication. Prints medians, MiB/s, the encryption overhead
(sealed median / clear median - 1) and the ratio to the floor. It measures; it asserts only that the bytes
come back.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import subprocess
import tempfile
from collections.abc import Callable

from bench.storage.bench_nfs import POD, backend_read, backend_write, nfs_cp, random_file, timed
from integration.storage.nfs_server import nfs_server, podman_api

from lpm.storage.nfs import NfsBackend
from lpm.storage.posix import PosixBackend
from lpm.storage.sealing import KeyRing, new_key
from lpm.storage.store import CheckpointStore
from lpm.storage.uri import CheckpointKey

RING = KeyRing({"bench": new_key()}, "bench")


def cp_floor(source: pathlib.Path, destination: pathlib.Path) -> None:
    subprocess.run(["cp", str(source), str(destination)], check=True)
    subprocess.run(["sync", str(destination)], check=True)


def measure(
    times: dict[str, list[float]],
    where: str,
    stores: dict[str, CheckpointStore],
    source: pathlib.Path,
    expected: str,
    r: int,
) -> None:
    # Alternate which mode goes first, so that neither always pays for the other's write-back.
    for mode, store in sorted(stores.items(), reverse=r % 2 == 1):
        key = CheckpointKey(POD, f"bench-{mode}-{r}")
        t, _ = timed(backend_write, store, source, key)
        times.setdefault(f"{where} {mode} write", []).append(t)
        t, digest = timed(backend_read, store, key)  # read_artifact: decrypted and authenticated when sealed
        assert digest == expected, f"{where} {mode}: the store returned other bytes"
        times.setdefault(f"{where} {mode} read", []).append(t)
        store.delete(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--disk-dir", default="/var/tmp", help="where the local-disk repository goes (not tmpfs)")
    args = parser.parse_args()
    size = args.size_mib << 20
    times: dict[str, list[float]] = {}

    with tempfile.TemporaryDirectory(prefix="lpm-bench-enc-", dir=args.disk_dir) as tmp:
        work = pathlib.Path(tmp)
        source = work / "payload.bin"
        expected = random_file(source, size)
        local = work / "repo"
        local.mkdir()
        export = work / "export"
        export.mkdir()

        with podman_api(work), nfs_server(export) as server:
            disk: dict[str, CheckpointStore] = {
                "clear": CheckpointStore(PosixBackend(local)),
                "sealed": CheckpointStore(PosixBackend(local), keys=RING),
            }
            nfs: dict[str, CheckpointStore] = {
                "clear": CheckpointStore(NfsBackend(server.url())),
                "sealed": CheckpointStore(NfsBackend(server.url()), keys=RING),
            }
            base = "nfs://127.0.0.1/export"
            query = f"?version=3&nfsport={server.nfs_port}&mountport={server.mount_port}"
            floors: dict[str, Callable[[int], None]] = {
                "disk cp write": lambda r: cp_floor(source, work / f"cp-{r}.bin"),
                "disk cp read": lambda r: cp_floor(work / f"cp-{r}.bin", work / f"cp-back-{r}.bin"),
                "nfs nfs-cp write": lambda r: nfs_cp(str(source), f"{base}/nfscp-{r}.bin{query}"),
                "nfs nfs-cp read": lambda r: nfs_cp(f"{base}/nfscp-{r}.bin{query}", str(work / f"nfs-back-{r}.bin")),
            }
            for r in range(args.rounds):
                measure(times, "disk", disk, source, expected, r)
                measure(times, "nfs", nfs, source, expected, r)
                for label, floor in floors.items():
                    t, _ = timed(floor, r)
                    times.setdefault(label, []).append(t)
                for leftover in work.glob("*-*.bin"):
                    leftover.unlink()
                for leftover in export.iterdir():
                    if leftover.is_file():
                        leftover.unlink()
            for store in [*disk.values(), *nfs.values()]:
                store.close()

    mib = size / (1 << 20)
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{args.size_mib} MiB incompressible, {args.rounds} rounds (medians)")
    print("| where | op | floor | store, clear | store, sealed | encryption overhead | sealed vs floor |")
    print("|---|---|---|---|---|---|---|")
    for where, tool in (("disk", "cp"), ("nfs", "nfs-cp")):
        for op in ("write", "read"):
            floor_t, clear_t, sealed_t = (medians[f"{where} {x} {op}"] for x in (tool, "clear", "sealed"))
            print(
                f"| {where} | {op} | {floor_t:.2f} s ({mib / floor_t:.0f} MiB/s) | "
                f"{clear_t:.2f} s ({mib / clear_t:.0f} MiB/s) | {sealed_t:.2f} s ({mib / sealed_t:.0f} MiB/s) | "
                f"{100 * (sealed_t / clear_t - 1):+.1f}% | "
                f"{sealed_t / floor_t:.2f}x |"
            )


if __name__ == "__main__":
    main()
