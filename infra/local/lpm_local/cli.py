"""A real two-node Kubernetes cluster on this one machine.

    infra/local/cluster up                 build (cached) + start control plane and nodes, wait until Ready
    infra/local/cluster down               stop everything, remove netns/mounts/cgroups/state
    infra/local/cluster status             what runs, kubeconfig path, nodes
    infra/local/cluster load-image REF|ARCHIVE [--node N ...]
                                           import a local image into the nodes' containerd (no registry)
    infra/local/cluster exec NODE -- CMD   run CMD inside NODE's network + mount namespaces
    infra/local/cluster env                print shell exports (KUBECONFIG, ...)

Layout (see infra/local/README.md):
  control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) in the host namespaces,
  apiserver on https://172.31.250.1:6443 (host bridge lpm-br0);
  nodes lpm-node-1 / lpm-node-2: own netns (172.31.250.11 / .12 via veth), own mount namespace (own
  /var/lib/kubelet, /var/lib/containerd, /run/containerd, /etc/kubernetes, /etc/cni/net.d, /var/lib/cni,
  /etc/criu, /var/log/pods), own containerd (CRI, runc, CRIU), kubelet and kube-proxy.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys

from lpm_local.build import bins
from lpm_local.components import kubectl
from lpm_local.config import (
    API_PORT,
    CACHE,
    HOST_IP,
    K8S_VERSION,
    KUBECONFIG,
    NFS_CONTAINER,
    NFS_EXPORT,
    NODES,
    PATH_ENV,
    SERVICE_API_IP,
    SHARED_CKPT,
    STATE,
)
from lpm_local.daemons import read_pid
from lpm_local.images import load_image
from lpm_local.lifecycle import all_procs, teardown, up
from lpm_local.namespaces import mntns_alive, node_dir, node_nsenter
from lpm_local.nfs import nfs_running, nfs_url


def require_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit("must run as root")


def cmd_up(args: argparse.Namespace) -> None:
    require_root()
    up()


def cmd_down(args: argparse.Namespace) -> None:
    require_root()
    teardown()


def cmd_status(args: argparse.Namespace) -> None:
    procs = all_procs()
    running = 0
    for p in procs:
        pid = read_pid(p)
        running += bool(pid)
        print(f"{p:28s} {'running pid ' + str(pid) if pid else 'stopped'}")
    print(f"kubeconfig: {KUBECONFIG}")
    print(f"apiserver:  https://{HOST_IP}:{API_PORT} (in-cluster: https://{SERVICE_API_IP}:443 via kube-proxy)")
    for name, n in NODES.items():
        print(
            f"node {name}: ip {n['ip']} pod-cidr {n['pod_cidr']} kubelet https://{n['ip']}:10250 "
            f"pki {node_dir(name) / 'etc-kubernetes/pki'} (in node: /etc/kubernetes/pki)"
        )
    print(
        f"checkpoint repository: {nfs_url()} (nfs-ganesha, container {NFS_CONTAINER}, "
        f"{'running' if nfs_running() else 'stopped'}; exports {NFS_EXPORT})"
    )
    print(f"shared checkpoints: {SHARED_CKPT} (same path on every node; the hostPath mode)")
    if running:
        r = kubectl("get", "nodes", "-o", "wide", check=False)
        print(r.stdout or r.stderr)
    # exit status: 0 all running, 1 nothing running, 3 partly running
    if running != len(procs):
        sys.exit(1 if running == 0 else 3)


def cmd_env(args: argparse.Namespace) -> None:
    print(f"export KUBECONFIG={KUBECONFIG}")
    print(f"export LPM_LOCAL_STATE={STATE}")
    # kubectl of the cluster's own version first (a distribution's kubectl may be older).
    print(f"export PATH={CACHE / f'kubernetes-{K8S_VERSION}/bin'}:$PATH")


def cmd_exec(args: argparse.Namespace) -> None:
    name = args.node
    if name not in NODES:
        raise SystemExit(f"unknown node {name}; nodes: {', '.join(NODES)}")
    if not mntns_alive(name):
        raise SystemExit(f"{name} is not up")
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    if not cmd:
        cmd = ["bash"]
    os.environ["PATH"] = f"{bins().containerd}:{PATH_ENV}"
    os.execvp("nsenter", node_nsenter(name) + cmd)  # noqa: S606 - becomes the command the user asked for


def cmd_load_image(args: argparse.Namespace) -> None:
    load_image(args.image, args.node or list(NODES))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up").set_defaults(fn=cmd_up)
    sub.add_parser("down").set_defaults(fn=cmd_down)
    sub.add_parser("status").set_defaults(fn=cmd_status)
    sub.add_parser("env").set_defaults(fn=cmd_env)
    e = sub.add_parser("exec")
    e.add_argument("node")
    e.add_argument("cmd", nargs=argparse.REMAINDER)
    e.set_defaults(fn=cmd_exec)
    li = sub.add_parser("load-image")
    li.add_argument("image", help="image archive (OCI layout or docker-archive tar) or a podman image ref")
    li.add_argument("--node", action="append", choices=list(NODES), help="only these nodes (default: all)")
    li.set_defaults(fn=cmd_load_image)
    args = p.parse_args()
    if args.cmd in ("up", "down"):
        STATE.mkdir(parents=True, exist_ok=True)
        lock = open(STATE / ".lock", "w")
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent up/down (e.g. parallel test modules) serialize
    args.fn(args)
