#!/usr/bin/env bash
# Master: the NFS export behind the StorageClass nfs-rwx (deploy/kustomize/overlays/vagrant points at it).
set -euo pipefail
: "${NFS_EXPORT:?}"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q nfs-kernel-server
mkdir -p "$NFS_EXPORT"
chmod 0777 "$NFS_EXPORT"
# no_root_squash: the agent (root) writes checkpoint archives, the provisioner (root) makes directories.
line="$NFS_EXPORT 192.168.56.0/24(rw,sync,no_subtree_check,no_root_squash)"
grep -qxF "$line" /etc/exports || echo "$line" >>/etc/exports
systemctl enable --now nfs-kernel-server
exportfs -ra
echo "lpm-provision[nfs-server]: exporting $NFS_EXPORT" >&2
