"""Bringing the whole cluster up and down."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from lpm_local.build import build_all
from lpm_local.cgroups import remove_cgroups
from lpm_local.components import kubectl, nodes_ready, start_control_plane, start_node
from lpm_local.config import BRIDGE, KUBECONFIG, LOGS, NODES, NSDIR, PIDS, STATE
from lpm_local.daemons import read_pid, running, stop_pid, wait_for
from lpm_local.host import T0, is_mountpoint, log, run
from lpm_local.namespaces import kill_node_processes, mntns_file
from lpm_local.network import link_exists, setup_host_network
from lpm_local.nfs import start_nfs_server, stop_nfs_server
from lpm_local.pki import make_pki
from lpm_local.sysctls import raise_post_copy_sysctls, restore_post_copy_sysctls, restore_sysctls, save_sysctls


def up() -> None:
    """Build what is missing, then start whatever does not run yet, and wait until both nodes are Ready."""
    t = time.monotonic()
    b = build_all()
    log(f"binaries ready ({time.monotonic() - t:.0f}s)")
    if not any(read_pid(p) for p in all_procs()) and stale_state():
        # e.g. the processes were killed with the session that started them: start from a clean slate
        log("nothing running but state left behind: cleaning up first")
        teardown()
    for d in (STATE, LOGS, PIDS):
        d.mkdir(parents=True, exist_ok=True)
    make_pki()
    setup_host_network()
    start_nfs_server()
    start_control_plane(b)
    save_sysctls()
    raise_post_copy_sysctls()
    for name in NODES:
        start_node(name, b)
    for name in NODES:
        wait_for(f"{name} kubelet", running(f"{name}-kubelet"), 5, proc_name=f"{name}-kubelet")
    log("waiting for both nodes to be Ready")
    wait_for("nodes Ready", nodes_ready, 180, interval=1, proc_name="kube-apiserver")
    restore_sysctls()
    wait_for(
        "default service account",
        lambda: kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
        60,
        proc_name="kube-controller-manager",
    )
    log(f"cluster up in {time.monotonic() - T0:.1f}s; KUBECONFIG={KUBECONFIG}")
    print(kubectl("get", "nodes", "-o", "wide").stdout)


CONTROL_PLANE = ["kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"]


def all_procs() -> list[str]:
    return CONTROL_PLANE[::-1] + [f"{n}-{c}" for n in NODES for c in ("containerd", "kubelet", "kube-proxy")]


def stale_state() -> bool:
    return (
        NSDIR.exists()
        or link_exists(BRIDGE)
        or any(Path(f"/run/netns/{n}").exists() for n in NODES)
        or (STATE / "etcd").exists()
    )


def teardown() -> None:
    """Stop everything and remove namespaces, links, mounts, cgroups and cluster state (PKI and caches stay)."""
    stop_nfs_server()
    for name in NODES:
        for comp in ("kube-proxy", "kubelet", "containerd"):
            pid = read_pid(f"{name}-{comp}")
            if pid:
                log(f"{name}: stopping {comp}")
                stop_pid(f"{name}-{comp}", pid)
        kill_node_processes(name)
        f = mntns_file(name)
        if f.exists():
            if is_mountpoint(f):
                run(["umount", str(f)], check=False)
            f.unlink(missing_ok=True)
        remove_cgroups(name)
    for comp in CONTROL_PLANE:
        pid = read_pid(comp)
        if pid:
            log(f"stopping {comp}")
            stop_pid(comp, pid)
    restore_sysctls(final=True)
    restore_post_copy_sysctls()
    for name, n in NODES.items():
        if Path(f"/run/netns/{name}").exists():
            run(["ip", "netns", "del", name], check=False)
        if link_exists(n["veth"]):
            run(["ip", "link", "del", n["veth"]], check=False)
    if link_exists(BRIDGE):
        run(["ip", "link", "del", BRIDGE], check=False)
    if NSDIR.exists():
        while is_mountpoint(NSDIR):
            if run(["umount", str(NSDIR)], check=False, quiet=True).returncode != 0:
                break
    # Cluster state goes; PKI, kubeconfig, caches and logs stay (a warm `up` reuses them).
    for p in [STATE / "etcd", STATE / "nodes", PIDS, NSDIR]:
        if p.exists():
            shutil.rmtree(p, ignore_errors=True)
    log("down")
