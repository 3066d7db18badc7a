#!/usr/bin/env bash
# Host setup for the storage integration tests and benchmark (fresh Debian bookworm, as root). Idempotent.
#
# Installs podman (the container engine testcontainers talks to through podman's Docker-compatible API),
# slirp4netns (rootless-style port publishing on 127.0.0.1, so no netavark bridge flips ip_forward or leaves
# iptables chains behind), debootstrap (the NFS server image is built from Debian packages, nothing is
# pulled from a registry) and libnfs-utils (`nfs-cp`, the benchmark's baseline client).
#
# The podman configuration matches src/docker/setup-host.sh: runc (crun refuses cgroup v1 hybrid hosts),
# cgroupfs (no systemd), the file events logger, and default ulimits at or below the hard limits (the
# machine cannot raise them). It lives beside this script (containers.conf); the test fixtures and this
# script pass it through CONTAINERS_CONF, so /etc/containers is left alone.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "storage-setup: $*" >&2; }

packages=(podman runc slirp4netns debootstrap libnfs-utils)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -q >&2 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

export CONTAINERS_CONF="$here/containers.conf"
# Build (or find cached) the NFS server image now, so the first test session does not pay for debootstrap.
"$here/../../../src/docker/nfs-server/build.sh" >/dev/null
log "ready"
