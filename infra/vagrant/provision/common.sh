#!/usr/bin/env bash
# Both nodes: kernel settings, CRI-O with CRIU checkpoint/restore, CRIU >= $CRIU_MIN_VERSION, kubeadm/kubelet/
# kubectl, the NFS client, skopeo (loads LPM's image archives into CRI-O's storage). Idempotent.
set -euo pipefail
: "${K8S_MINOR:?}" "${CRIO_MINOR:?}" "${CRIU_MIN_VERSION:?}" "${NODE_IP:?}"
export DEBIAN_FRONTEND=noninteractive
log() { echo "lpm-provision[common]: $*" >&2; }

swapoff -a
sed -i '/\sswap\s/ s/^#*/#/' /etc/fstab
printf 'overlay\nbr_netfilter\n' >/etc/modules-load.d/k8s.conf
modprobe overlay
modprobe br_netfilter
cat >/etc/sysctl.d/99-kubernetes.conf <<'SYSCTL'
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward = 1
SYSCTL
sysctl --system >/dev/null

apt-get update -q
apt-get install -y -q apt-transport-https ca-certificates curl gpg software-properties-common \
  nfs-common skopeo openssl

# Kubernetes and CRI-O from their official package repositories (pkgs.k8s.io, the CRI-O OBS project).
keyring=/etc/apt/keyrings
mkdir -p "$keyring"
if [ ! -f "$keyring/kubernetes.gpg" ]; then
  curl -fsSL "https://pkgs.k8s.io/core:/stable:/$K8S_MINOR/deb/Release.key" | gpg --dearmor -o "$keyring/kubernetes.gpg"
fi
echo "deb [signed-by=$keyring/kubernetes.gpg] https://pkgs.k8s.io/core:/stable:/$K8S_MINOR/deb/ /" \
  >/etc/apt/sources.list.d/kubernetes.list
if [ ! -f "$keyring/cri-o.gpg" ]; then
  curl -fsSL "https://download.opensuse.org/repositories/isv:/cri-o:/stable:/$CRIO_MINOR/deb/Release.key" \
    | gpg --dearmor -o "$keyring/cri-o.gpg"
fi
echo "deb [signed-by=$keyring/cri-o.gpg] https://download.opensuse.org/repositories/isv:/cri-o:/stable:/$CRIO_MINOR/deb/ /" \
  >/etc/apt/sources.list.d/cri-o.list
# Ubuntu 22.04 ships CRIU 3.16; the CRIU project's PPA has the 4.x series.
add-apt-repository -y ppa:criu/ppa >/dev/null
apt-get update -q
apt-get install -y -q cri-o kubelet kubeadm kubectl criu
apt-mark hold kubelet kubeadm kubectl cri-o >/dev/null

have="$(criu --version | sed -n 's/^Version: //p')"
if [ "$(printf '%s\n%s\n' "$CRIU_MIN_VERSION" "$have" | sort -V | head -1)" != "$CRIU_MIN_VERSION" ]; then
  log "criu $have is older than $CRIU_MIN_VERSION"
  exit 1
fi
criu check || log "criu check reported problems (see above); checkpoints may fail on this kernel"

# CRI-O: CRIU support on (the checkpoint API and restore from checkpoint images), keep the infra container
# (restored pods need a sandbox process). Newer CRI-O names the switch [crio.checkpoint_restore].
mkdir -p /etc/crio/crio.conf.d
cat >/etc/crio/crio.conf.d/10-lpm.conf <<'CRIO'
[crio.runtime]
enable_criu_support = true
drop_infra_ctr = false
CRIO
systemctl daemon-reload
systemctl enable --now crio
systemctl restart crio

# The kubelet advertises the private-network address, not the NAT one Vagrant puts on eth0.
echo "KUBELET_EXTRA_ARGS=--node-ip=$NODE_IP" >/etc/default/kubelet
systemctl enable kubelet
log "node ready for kubeadm (criu $have)"
