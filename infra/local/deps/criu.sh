#!/usr/bin/env bash
# Build and install CRIU (default 4.2.1, from Debian sid's upstream source tarball) into /usr/local.
# Standalone and idempotent: installs its own apt deps, caches the build under
# $LPM_CACHE/criu-$CRIU_VERSION, and verifies with `criu check`.
# Why: bookworm's criu 3.17 fails `criu check` on this kernel (vDSO), trixie's 4.1.1 cannot dump TCP sockets.
set -euo pipefail
CRIU_VERSION=${CRIU_VERSION:-4.2.1}
LPM_CACHE=${LPM_CACHE:-/var/cache/lpm}
PREFIX=${CRIU_PREFIX:-/usr/local}
CACHE=$LPM_CACHE/criu-$CRIU_VERSION
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

log() { printf '[%s] criu: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

installed_version() {
  "$PREFIX/sbin/criu" --version 2>/dev/null | sed -n 's/^Version: *//p' | head -n1
}

DEPS=(build-essential pkg-config python3 python3-protobuf libprotobuf-c-dev protobuf-c-compiler
  libprotobuf-dev protobuf-compiler libnl-3-dev libnet1-dev libcap-dev libbsd-dev libgnutls28-dev
  libnftables-dev uuid-dev iptables iproute2 nftables xz-utils ca-certificates)

apt_install() {
  local missing=() p
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

# The first file a glob matches (the glob sorts them), or nothing.
first_match() { if [ -e "$1" ]; then echo "$1"; fi; }

fetch_source() {
  # Only the upstream orig tarball is used; it is signature-verified through the sid Sources index.
  local tarball
  tarball=$(first_match "$CACHE"/criu_"$CRIU_VERSION".orig.tar.*)
  if [ -n "$tarball" ]; then
    echo "$tarball"
    return
  fi
  mkdir -p "$CACHE/apt/lists/partial" "$CACHE/dl"
  echo "deb-src http://deb.debian.org/debian sid main" >"$CACHE/apt/sources.list"
  local aptopts=(-o "Dir::Etc::SourceList=$CACHE/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$CACHE/apt/lists" -o Acquire::Check-Valid-Until=false)
  log "fetching sid source index"
  apt-get "${aptopts[@]}" update -q >/dev/null
  log "downloading criu $CRIU_VERSION source"
  # The .debian.tar.xz may 404 behind the mirror; the orig tarball is what we need.
  (cd "$CACHE/dl" && apt-get "${aptopts[@]}" source --download-only "criu=$CRIU_VERSION-*" >/dev/null 2>&1 \
    || apt-get "${aptopts[@]}" source --download-only criu/sid >/dev/null 2>&1 || true)
  tarball=$(first_match "$CACHE"/dl/criu_"$CRIU_VERSION".orig.tar.*)
  [ -n "$tarball" ] || {
    log "could not download criu_${CRIU_VERSION}.orig.tar.* from sid"
    exit 1
  }
  mv "$tarball" "$CACHE/"
  first_match "$CACHE"/criu_"$CRIU_VERSION".orig.tar.*
}

build_install() {
  if [ "$(installed_version)" = "$CRIU_VERSION" ] && "$PREFIX/sbin/criu" check >/dev/null 2>&1; then
    log "criu $CRIU_VERSION already installed in $PREFIX"
    return 0
  fi
  apt_install "${DEPS[@]}"
  mkdir -p "$CACHE"
  local src=$CACHE/src/criu-$CRIU_VERSION
  if [ ! -f "$CACHE/.built" ]; then
    local tarball
    tarball=$(fetch_source)
    rm -rf "$CACHE/src"
    mkdir -p "$CACHE/src"
    tar -C "$CACHE/src" -xf "$tarball"
    [ -d "$src" ] || src=$(find "$CACHE/src" -mindepth 1 -maxdepth 1 -type d | head -n1)
    log "building criu $CRIU_VERSION (~1 min)"
    make -C "$src" -j"${LPM_BUILD_JOBS:-2}" criu lib crit >"$CACHE/build.log" 2>&1 \
      || {
        tail -n 30 "$CACHE/build.log" >&2
        exit 1
      }
    echo "$src" >"$CACHE/.built"
  fi
  src=$(cat "$CACHE/.built")
  log "installing criu $CRIU_VERSION into $PREFIX"
  make -C "$src" PREFIX="$PREFIX" SKIP_PIP_INSTALL=1 install-criu install-lib >>"$CACHE/install.log" 2>&1 \
    || {
      tail -n 30 "$CACHE/install.log" >&2
      exit 1
    }
  ldconfig || true
}

(
  mkdir -p "$LPM_CACHE/locks"
  exec 9>"$LPM_CACHE/locks/criu-$CRIU_VERSION.lock"
  flock 9
  build_install
)
hash -r
if ! out=$("$PREFIX/sbin/criu" check 2>&1); then
  echo "$out" >&2
  log "criu check FAILED"
  exit 1
fi
log "$("$PREFIX/sbin/criu" --version | head -n1): $out"
