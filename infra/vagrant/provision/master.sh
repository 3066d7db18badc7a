#!/usr/bin/env bash
# Master: kubeadm init (containerd, ContainerCheckpoint gate), Flannel on the private network, join command for the
# worker in /vagrant/.state. Idempotent: skips init when the cluster exists.
set -euo pipefail
: "${MASTER_IP:?}" "${POD_CIDR:?}"
FLANNEL_VERSION="v0.25.5"
state=/vagrant/.state
mkdir -p "$state"
export KUBECONFIG=/etc/kubernetes/admin.conf

if [ ! -f /etc/kubernetes/admin.conf ]; then
  cat >/tmp/kubeadm.yaml <<KUBEADM
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: $MASTER_IP
nodeRegistration:
  criSocket: unix:///run/containerd/containerd.sock
  kubeletExtraArgs:
    - name: node-ip
      value: $MASTER_IP
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
networking:
  podSubnet: $POD_CIDR
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
featureGates:
  ContainerCheckpoint: true
KUBEADM
  kubeadm init --config /tmp/kubeadm.yaml
fi

# Workloads (the demo, LPM) may run on the master too: the migration goes master <-> worker.
kubectl taint nodes --all node-role.kubernetes.io/control-plane:NoSchedule- 2>/dev/null || true

if ! kubectl get namespace kube-flannel >/dev/null 2>&1; then
  curl -fsSL "https://github.com/flannel-io/flannel/releases/download/$FLANNEL_VERSION/kube-flannel.yml" \
    | sed "s#10.244.0.0/16#$POD_CIDR#; s#- --kube-subnet-mgr#- --kube-subnet-mgr\n        - --iface=eth1#" \
    | kubectl apply -f -
fi

kubeadm token create --print-join-command >"$state/join.sh"
cp /etc/kubernetes/admin.conf "$state/kubeconfig"
mkdir -p /home/vagrant/.kube
cp /etc/kubernetes/admin.conf /home/vagrant/.kube/config
chown -R vagrant:vagrant /home/vagrant/.kube
echo "lpm-provision[master]: control plane up; join command in $state/join.sh" >&2
