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
die() {
  log "ERROR: $*"
  exit 1
}

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
  local name=$1
  shift
  mkdir -p "$LPM_CACHE/locks"
  (
    exec 9>"$LPM_CACHE/locks/$name.lock"
    flock 9
    "$@"
  )
}

# go_build_mod WORKDIR REQUIRE_PATH VERSION OUTDIR LDFLAGS PKG:NAME...
# Builds main packages from a throwaway module that requires REQUIRE_PATH@VERSION.
go_build_mod() {
  local work=$1 req=$2 ver=$3 out=$4 ld=$5
  shift 5
  need_go
  mkdir -p "$work" "$out"
  if [ ! -f "$work/go.mod" ]; then
    printf 'module lpm.local/build\n\ngo 1.24.0\n\nrequire %s %s\n' "$req" "$ver" >"$work/go.mod"
    {
      printf '//go:build tools\n\npackage build\n\nimport (\n'
      local spec
      for spec in "$@"; do printf '\t_ "%s"\n' "${spec%%:*}"; done
      printf ')\n'
    } >"$work/tools.go"
    (cd "$work" && go mod tidy -e >/dev/null 2>&1) || true
  fi
  local spec pkg name t0
  for spec in "$@"; do
    pkg=${spec%%:*}
    name=${spec##*:}
    [ -x "$out/$name" ] && continue
    log "go build $name ($req $ver)"
    t0=$SECONDS
    (cd "$work" && nice -n 10 go build -p "${LPM_BUILD_JOBS:-2}" -trimpath -tags tools -ldflags "$ld" -o "$out/$name.tmp" "$pkg")
    mv "$out/$name.tmp" "$out/$name"
    log "$name built in $((SECONDS - t0))s"
  done
}
