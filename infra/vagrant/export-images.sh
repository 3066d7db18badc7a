#!/usr/bin/env bash
# On the host, after `./pants package src/docker::`: saves LPM's images as docker archives into
# infra/vagrant/.images/ (git-ignored), where the VMs' provisioning loads them from (/lpm/infra/vagrant/.images),
# and builds lpm-runc (src/go/lpm-runc/build.sh: Go) there too, which provisioning installs on each node.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(sed -n 's/.*"LPM_VERSION=\([^"]*\)".*/\1/p' "$here/../../pants.toml")"
mkdir -p "$here/.images"
for name in controller agent; do
  out="$here/.images/${name}_$version.tar"
  rm -f "$out"
  podman save --format docker-archive -o "$out" "localhost/lpm/$name:$version"
  echo "saved localhost/lpm/$name:$version to $out" >&2
done
runc_bin="$("$here/../../src/go/lpm-runc/build.sh" | tail -1)"
install -m 0755 "$runc_bin" "$here/.images/lpm-runc"
echo "copied lpm-runc ($runc_bin) to $here/.images/lpm-runc" >&2
