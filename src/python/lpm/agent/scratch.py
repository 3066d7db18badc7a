"""Where a checkpoint's bytes wait on a node: in memory when they fit there with room to spare, else on disk.

A live migration writes the whole checkpoint on the source (CRIU's images) and again on the target (the staged
images lpm-runc restores from), all inside the source's freeze.
Written to a disk, those bytes cost the write (measured on this project's nodes: CRIU dumps 256 MiB in 2.2 s
to ext4 and 0.15 s to tmpfs) and leave process memory, secrets included, on the node's disk. So each node has a
memory-backed directory (`/run/lpm` by default: /run is a tmpfs on systemd hosts) and the disk directory as
before; a checkpoint goes to memory when its expected size leaves the tmpfs at least `RESERVE_FRACTION` of its
size (and `RESERVE_MIN_BYTES`) free, so that LPM never fills the /run that the node's runtime shares with it.
An unknown size, or a directory that is not there or not writable, means disk.

A tmpfs page is charged to the memory cgroup of the process that wrote it, and cannot be reclaimed without swap:
the bytes the agent writes itself (the staged images on the target; on the source it writes only to disk)
count against the agent container's memory limit. So they go to memory only when they also leave
`AGENT_MARGIN_BYTES` of that limit free; otherwise a large checkpoint would have the agent killed for running out
of memory mid-transfer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

DEFAULT_MEMORY_DIR: Final = "/run/lpm"
RESERVE_FRACTION: Final = 0.25
RESERVE_MIN_BYTES: Final = 256 << 20
AGENT_MARGIN_BYTES: Final = 256 << 20
_CGROUP: Final = Path("/sys/fs/cgroup")


def own_memory_headroom(cgroup: Path = _CGROUP) -> int | None:
    """Bytes this process's memory cgroup may still charge before its limit (None: no limit, or unknown). Reads
    the container's own cgroup view: v2 memory.max/memory.current, else v1 memory.limit_in_bytes/usage_in_bytes.
    Usage counts reclaimable page cache too, so this errs on the side of disk."""
    for limit_file, usage_file in (
        (cgroup / "memory.max", cgroup / "memory.current"),
        (cgroup / "memory" / "memory.limit_in_bytes", cgroup / "memory" / "memory.usage_in_bytes"),
    ):
        try:
            limit, usage = limit_file.read_text().strip(), usage_file.read_text().strip()
        except OSError:
            continue
        if limit == "max" or int(limit) >= 1 << 60:  # cgroup v1 spells "no limit" as a huge number
            return None
        return int(limit) - int(usage)
    return None


@dataclass(frozen=True)
class Scratch:
    """Picks the directory for one checkpoint's bytes (see the module docstring). `memory` None: disk only."""

    memory: Path | None
    disk: Path
    reserve_fraction: float = RESERVE_FRACTION
    reserve_min_bytes: int = RESERVE_MIN_BYTES
    headroom: Callable[[], int | None] = own_memory_headroom

    def pick(self, need_bytes: int, what: str, charged_bytes: int = 0) -> Path:
        """The directory for `need_bytes` of `what` (for the log), created 0700 if missing; `charged_bytes` of
        them are written by this process (charged to its memory cgroup if in memory)."""
        if self.memory is not None and need_bytes > 0:
            if self._fits_the_agent(charged_bytes, what) and self._fits_the_tmpfs(need_bytes, what):
                return self.memory
        self.disk.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.disk

    def _fits_the_agent(self, charged_bytes: int, what: str) -> bool:
        room = self.headroom() if charged_bytes > 0 else None
        if room is None or room - charged_bytes >= AGENT_MARGIN_BYTES:
            return True
        log.info(
            "%s goes to disk: %d MiB in memory would leave the agent only %d MiB under its memory limit",
            what,
            charged_bytes >> 20,
            (room - charged_bytes) >> 20,
        )
        return False

    def _fits_the_tmpfs(self, need_bytes: int, what: str) -> bool:
        assert self.memory is not None
        try:
            self.memory.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.statvfs(self.memory)
        except OSError as exc:
            log.warning("%s goes to disk: memory directory %s is unusable (%s)", what, self.memory, exc)
            return False
        free, size = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        reserve = max(self.reserve_min_bytes, int(size * self.reserve_fraction))
        if free - need_bytes >= reserve:
            return True
        log.info(
            "%s goes to disk: %d MiB do not fit in %s (%d MiB free, %d MiB kept free)",
            what,
            need_bytes >> 20,
            self.memory,
            free >> 20,
            reserve >> 20,
        )
        return False

    def roots(self) -> tuple[Path, ...]:
        return (self.disk,) if self.memory is None else (self.memory, self.disk)


def resident_bytes(proc_root: Path, pid: int) -> int:
    """Resident memory of process `pid` and all its descendants (what CRIU dumps, at most): 0 if unreadable."""
    page = os.sysconf("SC_PAGE_SIZE")
    total, seen, todo = 0, set(), [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            total += int((proc_root / str(p) / "statm").read_text().split()[1]) * page
            for task in (proc_root / str(p) / "task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError, IndexError):
            continue
    return total
