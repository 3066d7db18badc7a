#!/usr/bin/env bash
# Build lpm-runc (static, stripped) into the cache, keyed by its sources and the Go version; print its path.
#   src/go/lpm-runc/build.sh            -> ${LPM_CACHE:-/var/cache/lpm}/lpm-runc/<sha256>/lpm-runc
# Idempotent: a cached binary for the same sources and toolchain is reused.
set -euo pipefail
cd "$(dirname "$0")"
LPM_CACHE=${LPM_CACHE:-/var/cache/lpm}
export PATH=/usr/local/go/bin:$PATH
export GOPATH=${GOPATH:-$LPM_CACHE/gopath} GOCACHE=${GOCACHE:-$LPM_CACHE/gocache}
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
command -v go >/dev/null || {
  echo "lpm-runc/build.sh: Go toolchain not found (expected /usr/local/go/bin/go)" >&2
  exit 1
}

sources=(go.mod)
for f in *.go; do [[ $f == *_test.go ]] || sources+=("$f"); done
key=$({
  go version
  sha256sum -- "${sources[@]}"
} | sha256sum | cut -c1-64)
out="$LPM_CACHE/lpm-runc/$key"
if [ ! -x "$out/lpm-runc" ]; then
  mkdir -p "$out"
  tmp=$(mktemp "$out/.lpm-runc.XXXXXX")
  trap 'rm -f "$tmp"' EXIT
  go build -trimpath -ldflags='-s -w' -o "$tmp" . >&2
  chmod 0755 "$tmp"
  mv -f "$tmp" "$out/lpm-runc"
fi
echo "$out/lpm-runc"
