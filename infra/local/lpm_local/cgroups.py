"""Each node's cgroup v1 subtree (the kubelet's cgroupRoot): created, read and removed."""

from __future__ import annotations

import os
from pathlib import Path

from lpm_local.config import CGROUP_CONTROLLERS_DIR


def cgroup_controllers(include_unified: bool = False) -> list[Path]:
    """v1 hierarchies (plus, for cleanup, the hybrid cgroup2 mount runc also populates)."""
    res = []
    for p in sorted(CGROUP_CONTROLLERS_DIR.iterdir()):
        if (p.name == "unified" and not include_unified) or not p.is_dir():
            continue
        if (p / "cgroup.procs").exists():
            res.append(p)
    return res


def setup_node_cgroups(name: str) -> None:
    for ctrl in cgroup_controllers():
        d = ctrl / name
        d.mkdir(exist_ok=True)
        if ctrl.name == "cpuset":
            for f in ("cpuset.cpus", "cpuset.mems"):
                if not (d / f).read_text().strip():
                    (d / f).write_text((ctrl / f).read_text().strip())


def cgroup_pids(name: str) -> set[int]:
    pids: set[int] = set()
    for ctrl in cgroup_controllers(include_unified=True):
        root = ctrl / name
        if not root.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(root):
            if "cgroup.procs" in files:
                try:
                    for line in Path(dirpath, "cgroup.procs").read_text().split():
                        pids.add(int(line))
                except OSError:
                    pass
    return pids


def remove_cgroups(name: str) -> None:
    for ctrl in cgroup_controllers(include_unified=True):
        root = ctrl / name
        if not root.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda t: -t[0].count("/")):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass
