#!/usr/bin/env bash
# Worker: LPM's images into containerd, then join the cluster with the master's join command.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=images.sh
. /vagrant/provision/images.sh
load_lpm_images
if [ ! -f /etc/kubernetes/kubelet.conf ]; then
  join=/vagrant/.state/join.sh
  [ -f "$join" ] || {
    echo "lpm-provision[worker]: $join missing: provision lpm-master first" >&2
    exit 1
  }
  bash "$join" --cri-socket unix:///run/containerd/containerd.sock
fi
echo "lpm-provision[worker]: joined" >&2
