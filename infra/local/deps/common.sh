# shellcheck shell=bash
# Shared helpers for infra/local/deps/*.sh. Source it; do not execute.
set -euo pipefail

LPM_CACHE=${LPM_CACHE:-/var/cache/lpm}
export GOPATH=${GOPATH:-$LPM_CACHE/gopath}
export GOCACHE=${GOCACHE:-$LPM_CACHE/gocache}
export GOFLAGS=${GOFLAGS:--mod=mod}
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
export CGO_ENABLED=${CGO_ENABLED:-0}
export PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# apt_install PKG... : install missing Debian packages non-interactively.
apt_install() {
  local missing=()
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends "${missing[@]}" >/dev/null; then
    apt-get -o DPkg::Lock::Timeout=900 update -q >/dev/null
    apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

need_go() {
  command -v go >/dev/null || die "Go toolchain not found (expected /usr/local/go/bin/go)"
}

# with_lock NAME CMD... : serialize concurrent builds of the same component.
with_lock() {
  local name=$1; shift
  mkdir -p "$LPM_CACHE/locks"
  (
    exec 9>"$LPM_CACHE/locks/$name.lock"
    flock 9
    "$@"
  )
}
