#!/bin/sh
# Starts rpcbind (ganesha refuses to start without registering NFSv3 with it; inside the container's own
# network namespace port 111 is never published) and then ganesha in the foreground.
set -eu
mkdir -p /run/rpcbind /var/run/ganesha /var/lib/nfs/ganesha
for d in /export /small; do
  if ! mountpoint -q "$d"; then
    echo "nfs-server: $d must be a bind mount or tmpfs (VFS cannot export the container rootfs)" >&2
    exit 2
  fi
done
rpcbind -w
exec ganesha.nfsd -F -L /dev/stderr -f /etc/ganesha/ganesha.conf -p /var/run/ganesha/ganesha.pid
