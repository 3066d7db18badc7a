"""Each node's mount namespace (kept alive by a bind mount of its nsfs file) and the processes inside it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from lpm_local.cgroups import cgroup_pids
from lpm_local.config import NODE_MOUNTS, NSDIR, SHARED_CKPT, STATE
from lpm_local.daemons import pid_alive
from lpm_local.host import is_mountpoint, log, run


def node_dir(name: str) -> Path:
    return STATE / "nodes" / name


def mntns_file(name: str) -> Path:
    return NSDIR / f"{name}.mnt"


def ensure_nsdir() -> None:
    NSDIR.mkdir(parents=True, exist_ok=True)
    if not is_mountpoint(NSDIR):
        run(["mount", "--bind", str(NSDIR), str(NSDIR)])
    run(["mount", "--make-private", str(NSDIR)])


def mntns_alive(name: str) -> bool:
    f = mntns_file(name)
    return f.exists() and is_mountpoint(f)


def setup_node_mntns(name: str) -> None:
    ensure_nsdir()
    nd = node_dir(name)
    for target, sub in NODE_MOUNTS:
        if sub:
            (nd / sub).mkdir(parents=True, exist_ok=True)
        Path(target).mkdir(parents=True, exist_ok=True)  # empty mount point on the host
    (nd / "kubelet" / "checkpoints").mkdir(parents=True, exist_ok=True)
    SHARED_CKPT.mkdir(parents=True, exist_ok=True)
    if mntns_alive(name):
        return
    f = mntns_file(name)
    f.touch()
    # A new mount namespace, kept alive by a bind mount of its nsfs file; host mounts propagate in
    # (slave), the node's own mounts (volumes, container rootfs) stay inside.
    run(["unshare", f"--mount={f}", "--propagation", "slave", "true"])
    script = ["set -e"]
    for target, sub in NODE_MOUNTS:
        script.append(f"mkdir -p {target}")  # a mount point inside an earlier tmpfs (/run) is new there
        if sub:
            script.append(f"mount --bind {nd / sub} {target}")
        else:
            script.append(f"mount -t tmpfs -o mode={'0755' if target == '/run' else '0711'} tmpfs {target}")
    # The kubelet wants its root dir to be a shared mount for mount propagation of volumes.
    script.append("mount --make-rshared /var/lib/kubelet")
    run(["nsenter", f"--mount={f}", "--", "sh", "-c", "\n".join(script)])


def node_nsenter(name: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{name}", f"--mount={mntns_file(name)}", "--"]


def ns_inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def pids_in_mntns(ino: int) -> set[int]:
    res = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if os.stat(d / "ns/mnt").st_ino == ino:
                res.add(int(d.name))
        except OSError:
            pass
    return res


def kill_node_processes(name: str) -> None:
    ino = ns_inode(mntns_file(name)) if mntns_alive(name) else None
    for sig, wait in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 5.0)):
        pids = cgroup_pids(name) | (pids_in_mntns(ino) if ino else set())
        pids.discard(os.getpid())
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            left = {p for p in pids if pid_alive(p)}
            if not left:
                break
            time.sleep(0.1)
    left = {p for p in cgroup_pids(name) | (pids_in_mntns(ino) if ino else set()) if pid_alive(p)}
    if left:
        log(f"warning: processes of {name} still alive: {sorted(left)}")
