#!/usr/bin/env bash
# Both nodes: kernel settings, containerd $CONTAINERD_VERSION (its release: Ubuntu 22.04 has 1.7) with runc and
# CRIU >= $CRIU_MIN_VERSION, kubeadm/kubelet/kubectl, the NFS client, and LPM's runtime handler `lpm`
# (deploy/node/lpm-runc-node.sh with the lpm-runc that infra/vagrant/export-images.sh built on the host), so
# migrations between the VMs take the Live engine. Idempotent.
set -euo pipefail
: "${K8S_MINOR:?}" "${CONTAINERD_VERSION:?}" "${CRIU_MIN_VERSION:?}" "${NODE_IP:?}"
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
# runc from Ubuntu; nsenter, ip, ss and nft for LPM's CRIU action script (moving TCP connections).
apt-get install -y -q apt-transport-https ca-certificates curl gpg software-properties-common \
  nfs-common openssl runc util-linux iproute2 nftables

# Kubernetes from its official package repository (pkgs.k8s.io).
keyring=/etc/apt/keyrings
mkdir -p "$keyring"
if [ ! -f "$keyring/kubernetes.gpg" ]; then
  curl -fsSL "https://pkgs.k8s.io/core:/stable:/$K8S_MINOR/deb/Release.key" | gpg --dearmor -o "$keyring/kubernetes.gpg"
fi
echo "deb [signed-by=$keyring/kubernetes.gpg] https://pkgs.k8s.io/core:/stable:/$K8S_MINOR/deb/ /" \
  >/etc/apt/sources.list.d/kubernetes.list
# Ubuntu 22.04 ships CRIU 3.16; the CRIU project's PPA has the 4.x series.
add-apt-repository -y ppa:criu/ppa >/dev/null
apt-get update -q
apt-get install -y -q kubelet kubeadm kubectl criu
apt-mark hold kubelet kubeadm kubectl >/dev/null

have="$(criu --version | sed -n 's/^Version: //p')"
if [ "$(printf '%s\n%s\n' "$CRIU_MIN_VERSION" "$have" | sort -V | head -1)" != "$CRIU_MIN_VERSION" ]; then
  log "criu $have is older than $CRIU_MIN_VERSION"
  exit 1
fi
criu check || log "criu check reported problems (see above); checkpoints may fail on this kernel"

# containerd from its release tarball (checksum checked), with its upstream systemd unit.
if [ "$(containerd --version 2>/dev/null | awk '{print $3}')" != "v$CONTAINERD_VERSION" ]; then
  url="https://github.com/containerd/containerd/releases/download/v$CONTAINERD_VERSION"
  tarball="containerd-$CONTAINERD_VERSION-linux-amd64.tar.gz"
  tmp="$(mktemp -d)"
  curl -fsSL -o "$tmp/$tarball" "$url/$tarball"
  curl -fsSL -o "$tmp/$tarball.sha256sum" "$url/$tarball.sha256sum"
  (cd "$tmp" && sha256sum -c "$tarball.sha256sum" >/dev/null)
  tar -C /usr/local -xzf "$tmp/$tarball"
  curl -fsSL -o /etc/systemd/system/containerd.service \
    "https://raw.githubusercontent.com/containerd/containerd/v$CONTAINERD_VERSION/containerd.service"
  rm -rf "$tmp"
fi
# Config version 3; drop-ins from conf.d (LPM's handler is one); runc with the systemd cgroup driver, as the
# kubelet (kubeadm's default).
mkdir -p /etc/containerd/conf.d
cat >/etc/containerd/config.toml <<'TOML'
# Written by LPM's Vagrant provisioning (infra/vagrant/provision/common.sh).
version = 3
imports = ["/etc/containerd/conf.d/*.toml"]
[plugins.'io.containerd.cri.v1.runtime']
  # Only the Image engine (`--engine Image`) restores through CreateContainer; lpm-runc does not (2.4 drops it).
  enable_experimental_restore_via_create = true
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    BinaryName = "/usr/sbin/runc"
    SystemdCgroup = true
TOML
# LPM's runtime handler `lpm` (lpm-runc), its CRIU configuration and the post-copy sysctl: the node steps of
# deploy/README.md, with the binary built on the host.
lpm_runc=/lpm/infra/vagrant/.images/lpm-runc
[ -x "$lpm_runc" ] || {
  log "$lpm_runc missing: run infra/vagrant/export-images.sh on the host first"
  exit 1
}
LPM_RUNC_RUNC=/usr/sbin/runc bash /lpm/deploy/node/lpm-runc-node.sh install "$lpm_runc"
systemctl daemon-reload
systemctl enable --now containerd
systemctl restart containerd

# The kubelet advertises the private-network address, not the NAT one Vagrant puts on eth0.
echo "KUBELET_EXTRA_ARGS=--node-ip=$NODE_IP" >/etc/default/kubelet
systemctl enable kubelet
log "node ready for kubeadm (criu $have)"
