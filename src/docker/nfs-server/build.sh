#!/usr/bin/env bash
# Builds the LPM NFS server image (nfs-ganesha 4.3 + VFS from Debian bookworm) locally and prints its tag.
#
# Nothing is pulled from a registry: the rootfs is a debootstrap minbase with the server packages, the
# config and entrypoint of this directory are copied in, and the result is `podman import`ed. The tag is
# the content hash of this directory, so a warm call only checks that the image exists (~0.1 s) and any
# change to the files here builds a new image. Needs root, debootstrap and podman (see
# tests/integration/storage/setup-host.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
name="localhost/lpm-nfs-server"
suite="bookworm"
packages="nfs-ganesha,nfs-ganesha-vfs,rpcbind,util-linux"
log() { echo "nfs-server-build: $*" >&2; }

hash="$( (
  echo "$suite $packages"
  cd "$here" && sha256sum build.sh entrypoint.sh ganesha.conf
) \
  | sha256sum | cut -c1-16)"
tag="$name:$hash"
if podman image exists "$tag"; then
  echo "$tag"
  exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/lpm-nfs-server.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log "debootstrap $suite with $packages (~1 min)"
if ! debootstrap --variant=minbase --include="$packages" "$suite" "$work/rootfs" http://deb.debian.org/debian \
  >"$work/debootstrap.out" 2>&1; then
  tail -n 30 "$work/debootstrap.out" "$work/rootfs/debootstrap/debootstrap.log" >&2 || true
  log "debootstrap failed"
  exit 1
fi
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
install -m 0644 "$here/ganesha.conf" "$work/rootfs/etc/ganesha/ganesha.conf"
install -m 0755 "$here/entrypoint.sh" "$work/rootfs/usr/local/bin/lpm-nfs-server"
mkdir -p "$work/rootfs/export" "$work/rootfs/small"
tar -C "$work/rootfs" -c . | podman import \
  --change 'ENTRYPOINT ["/usr/local/bin/lpm-nfs-server"]' \
  --change 'EXPOSE 2049/tcp' --change 'EXPOSE 20048/tcp' \
  --message "lpm nfs-server $hash" - "$tag" >&2
log "built $tag"
echo "$tag"
