#!/usr/bin/env bash
# Host setup for building LPM's images (fresh Debian bookworm, as root). Idempotent; a second run takes ~1 s.
#
#   src/docker/setup-host.sh && ./pants package ::
#
# 1. Installs podman (Pants's docker backend drives it through a `docker` symlink made by ./pants), runc and
#    debootstrap.
# 2. Writes podman's configuration for this kind of machine as a drop-in, /etc/containers/containers.conf.d/
#    50-lpm.conf (Pants runs podman with a clean environment, so CONTAINERS_CONF cannot carry it): runc (crun
#    refuses cgroup v1 hybrid hosts), cgroupfs and the file events logger (no systemd), default ulimits at the
#    hard limits (the host lacks CAP_SYS_RESOURCE, so raising them fails with setrlimit EPERM). Images live in
#    root's default store, /var/lib/containers/storage.
# 3. Builds the base images from Debian packages (src/docker/python-base/build.sh, ~1.5 min the first time;
#    src/docker/agent-base/build.sh adds containerd's ctr, ~5 s; both cached by content hash) and checks that
#    pants.toml's LPM_PYTHON_BASE and LPM_AGENT_BASE name them.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "docker-setup: $*" >&2; }
[ "$(id -u)" = 0 ] || {
  log "run as root"
  exit 1
}

packages=(podman runc debootstrap)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -q >&2 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# Container ulimits: at most this shell's hard limits, and capped (nproc at the hard limit itself failed here:
# runc's init runs with a lower one than the login shell).
cap() {
  local hard="$1" max="$2"
  if [ "$hard" = unlimited ] || [ "$hard" -gt "$max" ]; then echo "$max"; else echo "$hard"; fi
}
nofile="$(cap "$(ulimit -Hn)" 20000)"
nproc="$(cap "$(ulimit -Hu)" 32768)"
conf_dir=/etc/containers/containers.conf.d
conf="$conf_dir/50-lpm.conf"
want="$(
  cat <<CONF
# Written by LPM's src/docker/setup-host.sh; rerun it rather than editing this file.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
)"
if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
  log "writing $conf"
  mkdir -p "$conf_dir"
  printf '%s\n' "$want" >"$conf.tmp"
  mv "$conf.tmp" "$conf"
fi

for base in python-base:LPM_PYTHON_BASE agent-base:LPM_AGENT_BASE; do
  tag="$("$here/${base%%:*}/build.sh")"
  arg="${base#*:}"
  configured="$(sed -n "s/.*\"$arg=\([^\"]*\)\".*/\1/p" "$here/../../pants.toml")"
  if [ "$tag" != "$configured" ]; then
    log "pants.toml [docker].build_args has $arg=$configured but the image is $tag; update pants.toml"
    exit 1
  fi
  log "base image $tag"
done
log ready
