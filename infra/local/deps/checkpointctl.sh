#!/usr/bin/env bash
# Build checkpointctl (forensics of kubelet checkpoint archives) from the Go module proxy, for the tests that
# check an exported, decrypted checkpoint still reads with it. Output: $LPM_CACHE/checkpointctl-$VERSION/bin ;
# prints the bin dir.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$HERE/common.sh"
CHECKPOINTCTL_VERSION=${CHECKPOINTCTL_VERSION:-v1.4.0}
OUT=$LPM_CACHE/checkpointctl-$CHECKPOINTCTL_VERSION
build() {
  go_build_mod "$OUT/src" github.com/checkpoint-restore/checkpointctl "$CHECKPOINTCTL_VERSION" "$OUT/bin" "-s -w" \
    "github.com/checkpoint-restore/checkpointctl:checkpointctl"
}
with_lock "checkpointctl-$CHECKPOINTCTL_VERSION" build
echo "$OUT/bin"
