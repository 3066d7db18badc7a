"""The Kubernetes components: the control plane on the host, containerd/kubelet/kube-proxy per node."""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from lpm_local.build import Bins, bins, pause_archive
from lpm_local.cgroups import setup_node_cgroups
from lpm_local.config import (
    API_PORT,
    CLUSTER_CIDR,
    ETCD_PORT,
    HOST_IP,
    KUBECONFIG,
    NODES,
    PATH_ENV,
    PAUSE_IMAGE,
    PKI,
    SERVICE_CIDR,
    STATE,
)
from lpm_local.daemons import read_pid, start_daemon, wait_for
from lpm_local.host import log, run
from lpm_local.images import ctr, import_image
from lpm_local.namespaces import mntns_file, setup_node_mntns
from lpm_local.network import setup_node_network
from lpm_local.node_config import write_node_files


def kubectl(*args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess[str]:
    return run([str(bins().k8s / "kubectl"), f"--kubeconfig={KUBECONFIG}", *args], check=check, capture=capture)


def client_flags(kubeconfig: Path) -> list[str]:
    """What kube-controller-manager and kube-scheduler share: one kubeconfig for all, serving on the bridge."""
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={HOST_IP}",
    ]


def start_control_plane(b: Bins) -> None:
    etcd_dir = STATE / "etcd"
    etcd_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(etcd_dir, 0o700)
    if not read_pid("etcd"):
        log("starting etcd")
    start_daemon(
        "etcd",
        [
            str(b.etcd / "etcd"),
            "--name=lpm-local",
            f"--data-dir={etcd_dir}",
            f"--listen-client-urls=https://127.0.0.1:{ETCD_PORT}",
            f"--advertise-client-urls=https://127.0.0.1:{ETCD_PORT}",
            f"--listen-peer-urls=http://127.0.0.1:{ETCD_PORT + 1}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{ETCD_PORT + 1}",
            f"--initial-cluster=lpm-local=http://127.0.0.1:{ETCD_PORT + 1}",
            f"--listen-metrics-urls=http://127.0.0.1:{ETCD_PORT + 2}",
            f"--cert-file={PKI}/etcd-server.crt",
            f"--key-file={PKI}/etcd-server.key",
            f"--trusted-ca-file={PKI}/ca.crt",
            "--client-cert-auth=true",
            "--unsafe-no-fsync=true",
            "--snapshot-count=10000",
            "--log-level=warn",
        ],
    )
    if not read_pid("kube-apiserver"):
        log("starting kube-apiserver")
    start_daemon(
        "kube-apiserver",
        [
            str(b.k8s / "kube-apiserver"),
            f"--advertise-address={HOST_IP}",
            f"--bind-address={HOST_IP}",
            f"--secure-port={API_PORT}",
            f"--etcd-servers=https://127.0.0.1:{ETCD_PORT}",
            f"--etcd-cafile={PKI}/ca.crt",
            f"--etcd-certfile={PKI}/apiserver-etcd-client.crt",
            f"--etcd-keyfile={PKI}/apiserver-etcd-client.key",
            f"--client-ca-file={PKI}/ca.crt",
            f"--tls-cert-file={PKI}/apiserver.crt",
            f"--tls-private-key-file={PKI}/apiserver.key",
            f"--kubelet-client-certificate={PKI}/apiserver-kubelet-client.crt",
            f"--kubelet-client-key={PKI}/apiserver-kubelet-client.key",
            f"--kubelet-certificate-authority={PKI}/ca.crt",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={PKI}/sa.pub",
            f"--service-account-signing-key-file={PKI}/sa.key",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            # Webhooks (LPM's admission webhooks) and aggregated APIs are called at their endpoints' pod IPs, not
            # their ClusterIP: the host runs no kube-proxy of its own (kube-proxy runs in each node's netns).
            "--enable-aggregator-routing=true",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ],
    )
    wait_for(
        "kube-apiserver /readyz",
        lambda: kubectl("get", "--raw=/readyz", check=False).returncode == 0,
        120,
        proc_name="kube-apiserver",
    )
    log("kube-apiserver ready")
    if not read_pid("kube-controller-manager"):
        log("starting kube-controller-manager and kube-scheduler")
    cm_conf = STATE / "controller-manager.conf"
    start_daemon(
        "kube-controller-manager",
        [
            str(b.k8s / "kube-controller-manager"),
            *client_flags(cm_conf),
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={PKI}/sa.key",
            f"--root-ca-file={PKI}/ca.crt",
            f"--cluster-signing-cert-file={PKI}/ca.crt",
            f"--cluster-signing-key-file={PKI}/ca.key",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--cluster-cidr={CLUSTER_CIDR}",
            "--allocate-node-cidrs=false",
            "--controllers=*,-nodeipam,-cloud-node-lifecycle",
            "--profiling=false",
            "--v=1",
        ],
    )
    sc_conf = STATE / "scheduler.conf"
    start_daemon(
        "kube-scheduler",
        [
            str(b.k8s / "kube-scheduler"),
            *client_flags(sc_conf),
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ],
    )


def start_node(name: str, b: Bins) -> None:
    n = NODES[name]
    setup_node_network(name)
    setup_node_cgroups(name)
    setup_node_mntns(name)
    write_node_files(name)
    mnt = mntns_file(name)
    if not read_pid(f"{name}-containerd"):
        log(f"{name}: starting containerd")
    start_daemon(
        f"{name}-containerd",
        [str(b.containerd / "containerd"), "--config", "/etc/kubernetes/containerd.toml"],
        netns=name,
        mntns=mnt,
        env={"PATH": f"{b.containerd}:{PATH_ENV}"},
    )
    wait_for(
        f"{name} containerd",
        lambda: ctr(name, "version", check=False).returncode == 0,
        60,
        proc_name=f"{name}-containerd",
    )
    images = ctr(name, "images", "ls", "-q").stdout.split()
    if PAUSE_IMAGE not in images:
        import_image(name, pause_archive())
    if not read_pid(f"{name}-kubelet"):
        log(f"{name}: starting kubelet and kube-proxy")
        KUBELET_STARTED[name] = time.time()
    start_daemon(
        f"{name}-kubelet",
        [
            str(b.k8s / "kubelet"),
            "--config=/var/lib/kubelet/config.yaml",
            "--kubeconfig=/etc/kubernetes/kubelet.conf",
            f"--hostname-override={name}",
            f"--node-ip={n['ip']}",
            "--v=1",
        ],
        netns=name,
        mntns=mnt,
    )
    start_daemon(
        f"{name}-kube-proxy",
        [
            str(b.k8s / "kube-proxy"),
            "--config=/etc/kubernetes/kube-proxy.yaml",
            # Level 2: each rule sync with its time, full or partial, and its Service and endpoint counts: when a
            # new ClusterIP does not answer (tests/e2e/redis.py), whether its rules came before the client did.
            "--v=2",
        ],
        netns=name,
        mntns=mnt,
    )


KUBELET_STARTED: dict[str, float] = {}


def nodes_ready() -> bool:
    """Both nodes Ready, and for kubelets started by this invocation, Ready as posted by the new kubelet.

    The kubelet sets runtime-sync (which Ready needs) only after its container manager started, i.e. after it
    set the kernel tunables; a node object left Ready by a previous kubelet must not count.
    """
    r = kubectl("get", "nodes", "-o", "json", check=False)
    if r.returncode != 0:
        return False
    ready = set()
    for item in json.loads(r.stdout)["items"]:
        name = item["metadata"]["name"]
        for c in item["status"].get("conditions", []):
            if c["type"] != "Ready" or c["status"] != "True":
                continue
            started = KUBELET_STARTED.get(name)
            if started is not None:
                beat = datetime.strptime(c["lastHeartbeatTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
                if beat < int(started):
                    continue
            ready.add(name)
    return set(NODES) <= ready
