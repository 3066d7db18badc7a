"""Benchmark: the target agent's staging of a pushed checkpoint (lpm.agent.handoff._extract), by tar read size.

    ./pants run tests/bench/agent/bench_staging.py [-- --sizes 10 256 --rounds 9]

Staging runs inside the frozen time of every Live migration: the target's agent turns the pushed archive (the
kubelet's layout: `checkpoint/<CRIU images>`, ...) into the files lpm-runc restores from. tarfile's stream mode
reads its source in `bufsize` pieces and copies what is left of its buffer at every read, so the read size
matters. For each size, an archive shaped like a CRIU dump (23 small images of 1-6 KiB and one pages image of
N MiB, incompressible) is built once with the agent's own TarLayout, then staged into a tmpfs directory, each
read size in turn, every round. Prints medians per read size and the ratio to the 1 MiB read the agent used
before. It measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from lpm.agent import handoff
from lpm.agent.dump import TarLayout

AGENT_READ_SIZE = handoff._READ_SIZE  # before stage_once changes it
READ_SIZES = (1 << 20, 256 << 10, AGENT_READ_SIZE, 64 << 10)


def dump_like(root: Path, pages_mib: int) -> TarLayout:
    images = root / "checkpoint"
    images.mkdir()
    for i in range(23):
        (images / f"image-{i}.img").write_bytes(os.urandom(1024 + 256 * i))
    (images / "pages-1.img").write_bytes(os.urandom(pages_mib << 20))
    return TarLayout.of([("checkpoint", images), *((f"checkpoint/{p.name}", p) for p in sorted(images.iterdir()))])


def chunks(layout: TarLayout) -> list[bytes]:
    with layout.open() as f:
        return list(iter(lambda: f.read(1 << 20), b""))


def stage_once(data: list[bytes], read_size: int, scratch: Path) -> float:
    handoff._READ_SIZE = read_size
    d = Path(tempfile.mkdtemp(dir=scratch))
    try:
        (d / "images").mkdir()
        (d / "volumes").mkdir()
        started = time.perf_counter()
        handoff._extract(iter(data), d / "images", d / "rootfs-diff.tar", d / "volumes")
        return time.perf_counter() - started
    finally:
        shutil.rmtree(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[10, 256], help="MiB of pages in the archive")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--scratch", type=Path, default=Path("/dev/shm"), help="a tmpfs, as the agent's memory tier")
    args = ap.parse_args()
    print(f"staging through tarfile stream mode; medians of {args.rounds} rounds; baseline: 1 MiB reads")
    print(f"{'pages':>8} {'read size':>10} {'median':>10} {'vs 1 MiB':>9}")
    for mib in args.sizes:
        with tempfile.TemporaryDirectory(dir=args.scratch) as src:
            data = chunks(dump_like(Path(src), mib))
        times: dict[int, list[float]] = {size: [] for size in READ_SIZES}
        for _ in range(args.rounds):
            for size in READ_SIZES:  # interleaved: the machine's noise lands on every read size alike
                times[size].append(stage_once(data, size, args.scratch))
        base = statistics.median(times[1 << 20])
        for size in READ_SIZES:
            median = statistics.median(times[size])
            mark = " (agent)" if size == AGENT_READ_SIZE else ""
            print(f"{mib:>5} MiB {size >> 10:>6} KiB {median * 1000:>8.1f}ms {median / base:>8.2f}{mark}")


if __name__ == "__main__":
    main()
