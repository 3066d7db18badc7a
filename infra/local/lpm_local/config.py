"""Where the local cluster lives: paths, versions, addresses, the nodes and what each node mounts."""

from __future__ import annotations

import os
from pathlib import Path

INFRA_LOCAL = Path(__file__).resolve().parent.parent  # infra/local
REPO_ROOT = INFRA_LOCAL.parent.parent
DEPS = INFRA_LOCAL / "deps"
CACHE = Path(os.environ.get("LPM_CACHE", "/var/cache/lpm"))
STATE = Path(os.environ.get("LPM_LOCAL_STATE", "/var/lib/lpm-local"))
LOGS = STATE / "logs"
PKI = STATE / "pki"
KUBECONFIG = STATE / "kubeconfig"
SHARED_CKPT = STATE / "shared-checkpoints"
# The checkpoint repository: nfs-ganesha (src/docker/nfs-server) on the host's bridge address, exporting this
# directory. This kernel has no NFS client, so the agents speak NFSv3 themselves (nfs:// storage, nfs-rs).
NFS_EXPORT = STATE / "nfs-export"
NFS_CONTAINER = "lpm-local-nfs"
NFS_IMAGE_BUILD = REPO_ROOT / "src" / "docker" / "nfs-server" / "build.sh"
NFS_PORT, NFS_MOUNT_PORT = 2049, 20048
NFS_SMALL_SIZE = "64m"  # the server's second export, /small: a volume that fills up on demand (fault tests)
NSDIR = STATE / "ns"
PIDS = STATE / "pids"

K8S_VERSION = os.environ.get("K8S_VERSION", "v1.34.4")
CONTAINERD_VERSION = os.environ.get("CONTAINERD_VERSION", "v2.2.9")
ETCD_VERSION = os.environ.get("ETCD_VERSION", "v3.6.5")
PAUSE_IMAGE = "localhost/pause:3.10"

BRIDGE = "lpm-br0"
HOST_IP = "172.31.250.1"
NET_PREFIX = 24
API_PORT = 6443
ETCD_PORT = 12379
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_API_IP = "10.96.0.1"
CLUSTER_CIDR = "10.244.0.0/16"
NODES = {
    "lpm-node-1": {"ip": "172.31.250.11", "pod_cidr": "10.244.1.0/24", "veth": "lpm-veth1"},
    "lpm-node-2": {"ip": "172.31.250.12", "pod_cidr": "10.244.2.0/24", "veth": "lpm-veth2"},
}
# Per-node private directories: (path inside the node's mount namespace, state subdir or None for tmpfs)
NODE_MOUNTS = [
    # First, so that the node's other /run mounts land inside it. A tmpfs as on a systemd host: CRIU keeps its
    # kernel-feature cache (/run/criu.kdat) only on a tmpfs, and probes the kernel again (~25 ms: a network
    # namespace, a veth, pagemap) at every dump and restore otherwise. Host paths under /run are resolved
    # before entering the node (`ip netns` names, nsenter), so nothing inside needs the host's /run.
    ("/run", None),
    ("/var/lib/kubelet", "kubelet"),
    ("/var/lib/containerd", "containerd"),
    ("/run/containerd", None),
    ("/etc/kubernetes", "etc-kubernetes"),
    ("/etc/cni/net.d", "cni-conf"),
    ("/var/lib/cni", "cni-state"),
    ("/var/log/pods", "log-pods"),
    ("/var/log/containers", "log-containers"),
    ("/tmp", None),  # containerd's restore scratch mounts live here; gone with the node
    ("/var/lib/lpm", "lpm"),  # the node's hand-off root with lpm-runc (/var/lib/lpm/restore)
    # The agent's freeze records and fences (hostPath /var/lib/lpm-agent): shared, each node's agent reloaded
    # the other's records after a restart and, at their deadline, dropped them as "gone" from its own runtime.
    ("/var/lib/lpm-agent", "lpm-agent"),
    ("/run/lpm", None),  # LPM's memory-backed dumps and staged checkpoints: /run is a tmpfs on a systemd host
    ("/etc/criu", "etc-criu"),  # runc.conf: the CRIU options of every runc checkpoint and restore on the node
]
CGROUP_CONTROLLERS_DIR = Path("/sys/fs/cgroup")
# The OCI runtime wrapper of the `lpm` runtime handler (src/go/lpm-runc). /opt is shared by the nodes here.
LPM_RUNC = Path("/opt/lpm/bin/lpm-runc")
LPM_RUNC_BUILD = REPO_ROOT / "src" / "go" / "lpm-runc" / "build.sh"
# The CRIU action script that moves pods with established TCP connections (deploy/node/lpm-criu-action).
LPM_CRIU_ACTION = LPM_RUNC.with_name("lpm-criu-action")
LPM_CRIU_ACTION_SRC = REPO_ROOT / "deploy" / "node" / "lpm-criu-action"
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APT_DEPS = [
    "runc",
    "containernetworking-plugins",
    "iptables",
    "iproute2",
    "conntrack",
    "openssl",
    "util-linux",
    "busybox-static",
    "gcc",
    "libc6-dev",
    "nftables",
    "ethtool",
    "socat",
    "kmod",
    "ca-certificates",
]
