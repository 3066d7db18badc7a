#!/usr/bin/env bash
# lpm-runc's Go tests (root: the rootfs-diff tests chown). Run by build-support/test-all.
set -euo pipefail
cd "$(dirname "$0")"
LPM_CACHE=${LPM_CACHE:-/var/cache/lpm}
export PATH=/usr/local/go/bin:$PATH
export GOPATH=${GOPATH:-$LPM_CACHE/gopath} GOCACHE=${GOCACHE:-$LPM_CACHE/gocache}
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
go vet ./...
unformatted=$(gofmt -l .)
[ -z "$unformatted" ] || {
  echo "gofmt needed: $unformatted" >&2
  exit 1
}
go test -count=1 ./...
