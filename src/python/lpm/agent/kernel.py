"""What the node's kernel offers the Live engine, probed from inside the agent's own (unprivileged) process:
every container on a node shares its kernel, so the agent's answer is the node's.

Pre-copy (CRIU `pre-dump` rounds while the pod runs, then a short final dump of the pages written since) needs
soft-dirty page tracking (CONFIG_MEM_SOFT_DIRTY): the kernel marks each page written since the process's
`clear_refs` was reset, and `/proc/<pid>/pagemap` shows the mark (bit 55). Probed on one page of our own:
written, the mark must show; after `clear_refs` 4 it must clear; written again, show again.

Post-copy (CRIU lazy pages) needs userfaultfd (CONFIG_USERFAULTFD: `/proc/sys/vm/unprivileged_userfaultfd` exists
then), and pipes of 4 MiB for CRIU's page pipes (`fs.pipe-max-size`, a node-wide sysctl: CRIU's dump otherwise
fails with "page-pipe: tee: 65536: Operation not permitted").
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import struct
from pathlib import Path

log = logging.getLogger(__name__)

_SOFT_DIRTY = 1 << 55
_PRESENT = 1 << 63
_CLEAR_SOFT_DIRTY = "4"
LAZY_PIPE_BYTES = 4 << 20


def dirty_tracking_problem(proc_self: Path = Path("/proc/self")) -> str:
    """ "" when the kernel tracks soft-dirty pages, else why pre-copy cannot run here."""
    page = mmap.PAGESIZE
    buf = mmap.mmap(-1, page)
    try:
        address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        try:
            buf[0:1] = b"\x01"
            written = _entry(proc_self / "pagemap", address, page)
            (proc_self / "clear_refs").write_text(_CLEAR_SOFT_DIRTY)
            cleared = _entry(proc_self / "pagemap", address, page)
            buf[0:1] = b"\x02"
            again = _entry(proc_self / "pagemap", address, page)
        except OSError as exc:
            return f"soft-dirty page tracking could not be probed ({exc.strerror or exc})"
    finally:
        buf.close()
    if not written & _PRESENT:
        return "soft-dirty page tracking could not be probed (the probe page is not present in pagemap)"
    if written & _SOFT_DIRTY and not cleared & _SOFT_DIRTY and again & _SOFT_DIRTY:
        return ""
    return "the kernel does not track soft-dirty pages (CONFIG_MEM_SOFT_DIRTY), which pre-copy rounds need"


def _entry(pagemap: Path, address: int, page: int) -> int:
    fd = os.open(pagemap, os.O_RDONLY)
    try:
        raw = os.pread(fd, 8, address // page * 8)
    finally:
        os.close(fd)
    if len(raw) < 8:
        return 0  # past the end: no such page
    (value,) = struct.unpack("<Q", raw)
    return int(value)


def lazy_pages_problem(proc_sys: Path = Path("/proc/sys")) -> str:
    """ "" when the node's kernel can run CRIU's lazy pages (post-copy), else why not."""
    if not (proc_sys / "vm" / "unprivileged_userfaultfd").exists():
        return "the kernel has no userfaultfd (CONFIG_USERFAULTFD), which CRIU's lazy pages need"
    try:
        pipe_max = int((proc_sys / "fs" / "pipe-max-size").read_text())
    except (OSError, ValueError) as exc:
        return f"fs.pipe-max-size could not be read ({exc})"
    if pipe_max < LAZY_PIPE_BYTES:
        return (
            f"fs.pipe-max-size is {pipe_max}; CRIU's lazy dump needs {LAZY_PIPE_BYTES} "
            f"(sysctl -w fs.pipe-max-size={LAZY_PIPE_BYTES} on the node)"
        )
    return ""
