"""Where a checkpoint's bytes wait on a node: memory when they fit with room to spare, else disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lpm.agent.scratch import (
    AGENT_MARGIN_BYTES,
    RESERVE_FRACTION,
    RESERVE_MIN_BYTES,
    Scratch,
    own_memory_headroom,
    resident_bytes,
)


def free_and_size(path: Path) -> tuple[int, int]:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def test_a_checkpoint_goes_to_memory_only_while_the_reserve_stays_free(tmp_path: Path) -> None:
    memory, disk = tmp_path / "memory", tmp_path / "disk"
    memory.mkdir()
    free, size = free_and_size(memory)
    # A reserve this test's file system can hold (the defaults keep a quarter of a tmpfs free).
    scratch = Scratch(memory, disk, reserve_fraction=0.01, reserve_min_bytes=64 << 20, headroom=lambda: None)
    reserve = max(64 << 20, int(size * 0.01))
    room = free - reserve
    assert room > (1 << 30), "the test needs a file system with some room"
    assert scratch.pick(1 << 20, "small") == memory
    # The boundary, with slack for whatever else writes to this file system meanwhile.
    assert scratch.pick(room - (256 << 20), "just fits") == memory
    assert scratch.pick(room + (256 << 20), "too big") == disk
    assert disk.is_dir()
    default = Scratch(memory, disk)
    if free - (1 << 20) < max(RESERVE_MIN_BYTES, int(size * RESERVE_FRACTION)):
        assert default.pick(1 << 20, "small") == disk, "the default reserve is a quarter of the file system"


def test_the_memory_directory_is_created_private(tmp_path: Path) -> None:
    memory = tmp_path / "memory"
    Scratch(memory, tmp_path / "disk", reserve_fraction=0.0, reserve_min_bytes=0).pick(1, "tiny")
    assert (memory.stat().st_mode & 0o777) == 0o700


def test_an_unknown_size_or_no_memory_directory_means_disk(tmp_path: Path) -> None:
    memory, disk = tmp_path / "memory", tmp_path / "disk"
    assert Scratch(memory, disk).pick(0, "unknown size") == disk
    assert Scratch(None, disk).pick(1 << 20, "no memory dir") == disk
    assert Scratch(None, disk).roots() == (disk,)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    assert Scratch(blocked / "dump", disk).pick(1 << 20, "unusable memory dir") == disk


def test_resident_memory_counts_the_whole_process_tree(tmp_path: Path) -> None:
    own = resident_bytes(Path("/proc"), os.getpid())
    assert own > 0
    code = (
        "import time; b = bytearray(64 << 20); b[::4096] = b'x' * len(b[::4096]); "
        "print('ok', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ok"
        assert resident_bytes(Path("/proc"), os.getpid()) >= own + (64 << 20)
    finally:
        child.kill()
        child.wait()
    assert resident_bytes(tmp_path, 12345) == 0, "an unreadable process counts nothing (the size is then unknown)"


def test_bytes_the_agent_writes_go_to_memory_only_while_its_own_memory_limit_keeps_a_margin(tmp_path: Path) -> None:
    memory, disk = tmp_path / "memory", tmp_path / "disk"

    def scratch(headroom: int | None) -> Scratch:
        return Scratch(memory, disk, reserve_fraction=0.0, reserve_min_bytes=0, headroom=lambda: headroom)

    size = 300 << 20
    assert scratch(None).pick(size, "no limit", charged_bytes=size) == memory
    assert scratch(size + AGENT_MARGIN_BYTES).pick(size, "just fits", charged_bytes=size) == memory
    assert scratch(size + AGENT_MARGIN_BYTES - 1).pick(size, "would OOM", charged_bytes=size) == disk
    assert scratch(1 << 20).pick(size, "written by the runtime", charged_bytes=0) == memory


@pytest.mark.parametrize(
    ("files", "headroom"),
    [
        ({"memory.max": "1073741824\n", "memory.current": "134217728\n"}, (1 << 30) - (128 << 20)),
        ({"memory.max": "max\n", "memory.current": "134217728\n"}, None),
        (
            {"memory/memory.limit_in_bytes": "536870912", "memory/memory.usage_in_bytes": "1048576"},
            (512 << 20) - (1 << 20),
        ),
        ({"memory/memory.limit_in_bytes": "9223372036854771712", "memory/memory.usage_in_bytes": "1"}, None),
        ({}, None),
    ],
    ids=["v2", "v2-unlimited", "v1", "v1-unlimited", "none"],
)
def test_the_agents_memory_headroom_is_read_from_its_own_cgroup(
    tmp_path: Path, files: dict[str, str], headroom: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert own_memory_headroom(tmp_path) == headroom
