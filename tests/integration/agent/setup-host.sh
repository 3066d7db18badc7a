#!/usr/bin/env bash
# Host setup for the agent's real-CRIU tests and benchmark (fresh Debian bookworm, as root). Idempotent.
#
# runc (bookworm 1.1.5: checkpoint/restore works with CRIU 4.2; crun refuses cgroup v1 hybrid hosts),
# podman (its containers-storage is the image store the tests load checkpoint images into; the tests give
# it a private vfs storage and config through CONTAINERS_STORAGE_CONF/CONTAINERS_CONF), busybox-static
# (the containers' 2 MB rootfs), and CRIU 4.2.1 built by infra/local/deps/criu.sh (bookworm's 3.17 fails
# `criu check` on this kernel).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
log() { echo "agent-setup: $*" >&2; }

packages=(runc podman busybox-static)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends "${missing[@]}" >&2 \
    || {
      apt-get -o DPkg::Lock::Timeout=900 update -q >&2
      apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends "${missing[@]}" >&2
    }
fi

"$repo/infra/local/deps/criu.sh"
command -v criu >/dev/null || {
  log "criu is not on PATH after the build (expected /usr/local/sbin)"
  exit 1
}
# checkpointctl: the tests check that the Live engine's archives read with it, like the kubelet's.
ln -sf "$("$repo/infra/local/deps/checkpointctl.sh")/checkpointctl" /usr/local/bin/checkpointctl
log "ready: $(runc --version | head -n1), $(criu --version | head -n1), $(podman --version)"
