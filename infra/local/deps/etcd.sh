#!/usr/bin/env bash
# Build etcd from the Go module proxy. Output: $LPM_CACHE/etcd-$ETCD_VERSION/bin/etcd ; prints the bin dir.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$HERE/common.sh"
ETCD_VERSION=${ETCD_VERSION:-v3.6.5}
OUT=$LPM_CACHE/etcd-$ETCD_VERSION
build() {
  go_build_mod "$OUT/src" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "$OUT/bin" "-s -w" \
    "go.etcd.io/etcd/server/v3:etcd"
}
with_lock "etcd-$ETCD_VERSION" build
echo "$OUT/bin"
