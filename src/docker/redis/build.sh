#!/usr/bin/env bash
# Builds an image with Debian's Redis (redis-server, redis-cli) locally and prints its tag: the real third-party
# server and client of the connection tests (tests/e2e/test_redis.py). Not part of LPM.
#
# Nothing comes from a registry: the rootfs is `debootstrap --variant=minbase` of bookworm with redis-server and
# redis-tools, trimmed and `podman import`ed, as src/docker/python-base/build.sh does. The tag hashes this script,
# so a warm call only checks that the image exists (~1 min the first time). Needs root, debootstrap and podman.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
name="localhost/lpm/redis"
suite="bookworm"
packages="redis-server,redis-tools"
mirror="${LPM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
log() { echo "redis: $*" >&2; }

hash="$( (
  echo "$suite $packages"
  cd "$here" && sha256sum build.sh
) | sha256sum | cut -c1-16)"
tag="$name:$hash"
if [ "${1:-}" = "--tag" ]; then
  echo "$tag"
  exit 0
fi
if podman image exists "$tag"; then
  echo "$tag"
  exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/lpm-redis.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log "debootstrap $suite with $packages (~1 min)"
if ! debootstrap --variant=minbase --include="$packages" "$suite" "$work/rootfs" "$mirror" \
  >"$work/debootstrap.out" 2>&1; then
  tail -n 30 "$work/debootstrap.out" "$work/rootfs/debootstrap/debootstrap.log" >&2 || true
  log "debootstrap failed"
  exit 1
fi
r="$work/rootfs"
rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/apt/*.bin "$r"/var/lib/apt/lists/* \
  "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/locale/* \
  "$r"/var/log/* "$r"/var/cache/debconf/*-old "$r"/var/lib/dpkg/*-old
tar -C "$r" --numeric-owner -c . | podman import --change 'CMD ["/usr/bin/redis-server"]' \
  --message "lpm redis $hash (debian $suite: $packages)" - "$tag" >&2
log "built $tag ($(chroot "$r" redis-server --version | cut -d' ' -f3))"
echo "$tag"
