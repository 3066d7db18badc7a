#!/usr/bin/env bash
# Build containerd (CRI, checkpoint/restore via CreateContainer) + shim + ctr from the Go module proxy.
# Output: $LPM_CACHE/containerd-$CONTAINERD_VERSION/bin ; prints the bin dir.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$HERE/common.sh"
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.2.9}
OUT=$LPM_CACHE/containerd-$CONTAINERD_VERSION
M=github.com/containerd/containerd/v2
build() {
  go_build_mod "$OUT/src" "$M" "$CONTAINERD_VERSION" "$OUT/bin" \
    "-s -w -X $M/version.Version=$CONTAINERD_VERSION -X $M/version.Revision=lpm-local" \
    "$M/cmd/containerd:containerd" "$M/cmd/containerd-shim-runc-v2:containerd-shim-runc-v2" "$M/cmd/ctr:ctr"
}
with_lock "containerd-$CONTAINERD_VERSION" build
echo "$OUT/bin"
