"""What each node runs with: containerd, CRIU, CNI, kubelet and kube-proxy configurations."""

from __future__ import annotations

import json
import os
import shutil

from lpm_local.config import API_PORT, CLUSTER_CIDR, HOST_IP, LPM_CRIU_ACTION, LPM_RUNC, NODES, PAUSE_IMAGE, PKI
from lpm_local.namespaces import node_dir
from lpm_local.pki import kubeconfig_text, write_secret

# "true" unless LPM_LOCAL_RESTORE_VIA_CREATE says "false" (what containerd 2.4, which removes the feature, will do).
RESTORE_VIA_CREATE = "false" if os.environ.get("LPM_LOCAL_RESTORE_VIA_CREATE", "true") == "false" else "true"


def containerd_config(name: str) -> str:
    return f"""version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
oom_score = 0

[grpc]
  address = "/run/containerd/containerd.sock"

[ttrpc]
  address = "/run/containerd/containerd.sock.ttrpc"

[debug]
  level = "info"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins.'io.containerd.cri.v1.runtime']
  enable_cdi = false
  enable_selinux = false
  enable_criu = true
  # No CAP_SYS_RESOURCE here: lowering oom_score_adj (sandbox -998, Guaranteed pods) fails with EACCES
  # inside runc ("can't get final child's PID from pipe: EOF"); clamp to containerd's own value instead.
  restrict_oom_score_adj = true
  # containerd 2.2.x restores OCI checkpoint images in CreateContainer only with this on (2.4 drops it). Only
  # the Image engine uses it: the lpm handler below restores in its runtime wrapper and does not need it
  # (LPM_LOCAL_RESTORE_VIA_CREATE=false at `cluster up` proves that; the Image engine's restores then fail).
  enable_experimental_restore_via_create = {RESTORE_VIA_CREATE}
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
    # Pods with runtimeClassName lpm: containerd's runc shim runs lpm-runc instead of runc; it restores a
    # container annotated lpm.my.domain/restore-checkpoint (pod annotations reach the OCI spec through
    # pod_annotations) and passes everything else to runc.
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.lpm]
      runtime_type = "io.containerd.runc.v2"
      pod_annotations = ["lpm.my.domain/*"]
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.lpm.options]
        BinaryName = "{LPM_RUNC}"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
"""


def criu_runc_config() -> str:
    """runc passes /etc/criu/runc.conf to CRIU for every checkpoint and restore (its values win over runc's)."""
    return f"""# Written by infra/local/cluster: the CRIU options of every runc checkpoint and restore on this node.
# Established TCP connections are dumped and restored; the action script aborts, at restore, those whose
# peer is outside the pod (their local address, the pod's old IP, does not exist on the new node).
tcp-established
# Connections still in a listener's queue (clients of a Service that arrived while the pod was frozen) are
# left out: their clients see them reset and retry, where CRIU would otherwise refuse the whole dump.
skip-in-flight
# The pod's network namespace is not CRIU's to lock: its iptables rules would land in the node's namespace.
# Nothing needs the lock here: both ends of an in-pod connection are frozen, and the others are aborted.
network-lock skip
action-script {LPM_CRIU_ACTION}
# Post-copy: CRIU's page server speaks mutual TLS with the agents' certificate, which the node's agent copies
# here (only a dump with a page server uses it); the certificates name no node, so no host name is checked.
tls
tls-cacert /var/lib/lpm/tls/ca.crt
tls-cert /var/lib/lpm/tls/tls.crt
tls-key /var/lib/lpm/tls/tls.key
tls-no-cn-verify
"""


def cni_config(name: str) -> str:
    n = NODES[name]
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "lpm-local",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": n["pod_cidr"]}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
        indent=2,
    )


def kubelet_config(name: str) -> str:
    n = NODES[name]
    return json.dumps(
        {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": n["ip"],
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": "/var/lib/kubelet/pki/kubelet.crt",
            "tlsPrivateKeyFile": "/var/lib/kubelet/pki/kubelet.key",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{name}",
            "cgroupsPerQOS": True,
            "enforceNodeAllocatable": ["pods"],
            "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
            "failSwapOn": False,
            "failCgroupV1": False,
            "maxOpenFiles": 16384,
            "podCIDR": n["pod_cidr"],
            "resolvConf": "/etc/resolv.conf",
            "serializeImagePulls": False,
            "featureGates": {"ContainerCheckpoint": True},
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 99,
            "imageGCLowThresholdPercent": 98,
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "containerLogMaxSize": "10Mi",
            "registerNode": True,
            "nodeStatusReportFrequency": "10s",
            "syncFrequency": "10s",
            "shutdownGracePeriod": "0s",
            "localStorageCapacityIsolation": True,
        },
        indent=2,
    )


def kube_proxy_config(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": "/etc/kubernetes/kube-proxy.conf"},
            "hostnameOverride": name,
            "mode": "iptables",
            "clusterCIDR": CLUSTER_CIDR,
            # Leave conntrack sysctls alone (nf_conntrack_max is global, not per netns).
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "metricsBindAddress": "127.0.0.1:10249",
            "healthzBindAddress": "127.0.0.1:10256",
            "bindAddressHardFail": False,
        },
        indent=2,
    )


def write_node_files(name: str) -> None:
    n = NODES[name]
    nd = node_dir(name)
    server = f"https://{HOST_IP}:{API_PORT}"
    etck = nd / "etc-kubernetes"
    (etck / "pki").mkdir(parents=True, exist_ok=True)
    for f in ("ca.crt", "apiserver-kubelet-client.crt", "apiserver-kubelet-client.key"):
        shutil.copy2(PKI / f, etck / "pki" / f)
    os.chmod(etck / "pki" / "apiserver-kubelet-client.key", 0o600)
    write_secret(etck / "kubelet.conf", kubeconfig_text(f"system:node:{name}", f"kubelet-client-{name}", server))
    write_secret(etck / "kube-proxy.conf", kubeconfig_text("system:kube-proxy", "kube-proxy", server))
    (etck / "containerd.toml").write_text(containerd_config(name))
    (etck / "kube-proxy.yaml").write_text(kube_proxy_config(name))
    kp = nd / "kubelet" / "pki"
    kp.mkdir(parents=True, exist_ok=True)
    shutil.copy2(PKI / f"kubelet-server-{name}.crt", kp / "kubelet.crt")
    shutil.copy2(PKI / f"kubelet-server-{name}.key", kp / "kubelet.key")
    (nd / "kubelet" / "config.yaml").write_text(kubelet_config(name))
    (nd / "cni-conf" / "10-lpm-bridge.conflist").write_text(cni_config(name))
    (nd / "etc-criu").mkdir(exist_ok=True)
    (nd / "etc-criu" / "runc.conf").write_text(criu_runc_config())
    (nd / "node.json").write_text(json.dumps({"name": name, **n}))
