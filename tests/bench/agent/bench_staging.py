"""Benchmark: the target agent's staging of a pushed checkpoint (lpm.agent.handoff._extract), against tarfile's
stream mode and the floor.

    ./pants run tests/bench/agent/bench_staging.py [-- --sizes 10 256 --rounds 9]

Staging runs inside the frozen time of every Live migration: the target's agent turns the pushed archive (the
kubelet's layout: `checkpoint/<CRIU images>`, ...) into the files lpm-runc restores from. For each size, an
archive shaped like a CRIU dump (23 small images of 1-6 KiB and one pages image of N MiB, incompressible) is
built once with the agent's own TarLayout, as 1 MiB chunks (what the push delivers), then staged into a tmpfs
directory every round by:
- the agent: tarfile reads the headers through a forward-only reader, each member's data goes from the chunks
  straight to its file;
- tarfile's stream mode (what the agent did until 2026-12-05: `tarfile.open(mode="r|", bufsize=128 KiB)`,
  extractfile + copyfileobj per member);
- the floor: the chunks written to one file, nothing parsed.
Prints medians and the ratios to the floor. It measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lpm.agent import handoff
from lpm.agent.dump import TarLayout
from lpm.agent.images import IterReader


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


def agent(data: list[bytes], d: Path) -> None:
    handoff._extract(iter(data), d / "images", d / "rootfs-diff.tar", d / "volumes")


def stream_mode(data: list[bytes], d: Path) -> None:
    with tarfile.open(fileobj=IterReader(iter(data)), mode="r|", bufsize=128 << 10) as tar:  # type: ignore[call-overload]
        for member in tar:
            if member.isfile():
                src = tar.extractfile(member)
                with open(d / "images" / Path(member.name).name, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)


def floor(data: list[bytes], d: Path) -> None:
    with open(d / "all", "wb") as out:
        for chunk in data:
            out.write(chunk)


METHODS: dict[str, Callable[[list[bytes], Path], None]] = {"agent": agent, "stream mode": stream_mode, "floor": floor}


def once(method: Callable[[list[bytes], Path], None], data: list[bytes], scratch: Path) -> float:
    d = Path(tempfile.mkdtemp(dir=scratch))
    try:
        (d / "images").mkdir()
        (d / "volumes").mkdir()
        started = time.perf_counter()
        method(data, d)
        return time.perf_counter() - started
    finally:
        shutil.rmtree(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[10, 256], help="MiB of pages in the archive")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--scratch", type=Path, default=Path("/dev/shm"), help="a tmpfs, as the agent's memory tier")
    args = ap.parse_args()
    print(f"staging a pushed checkpoint; medians of {args.rounds} rounds")
    print(f"{'pages':>8} {'method':>12} {'median':>10} {'vs floor':>9}")
    for mib in args.sizes:
        with tempfile.TemporaryDirectory(dir=args.scratch) as src:
            data = chunks(dump_like(Path(src), mib))
        times: dict[str, list[float]] = {name: [] for name in METHODS}
        for _ in range(args.rounds):
            for name, method in METHODS.items():  # interleaved: the machine's noise lands on every method alike
                times[name].append(once(method, data, args.scratch))
        base = statistics.median(times["floor"])
        for name in METHODS:
            median = statistics.median(times[name])
            print(f"{mib:>5} MiB {name:>12} {median * 1000:>8.1f}ms {median / base:>8.2f}")


if __name__ == "__main__":
    main()
