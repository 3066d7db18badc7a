#!/usr/bin/env bash
# Builds the agent's base image (LPM's Python base + containerd's `ctr`) locally and prints its tag.
#
# The agent loads checkpoint images into the node's containerd with `ctr images import` (lpm.agent.images). Only
# the `ctr` binary of Debian's containerd package goes in (23 MB; the package itself, with containerd and its
# shims, is ~100 MB). Nothing comes from a registry: the .deb comes from the host's apt (Debian bookworm), the
# image is `podman build` FROM the local Python base with no RUN step. The tag hashes the Python base's tag and
# this directory, so a warm call only checks the image exists. pants.toml's LPM_AGENT_BASE must equal
# `build.sh --tag` (tests/unit/deploy checks it). Needs root, apt and podman: src/docker/setup-host.sh runs it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
name="localhost/lpm/agent-base"
base="$("$here/../python-base/build.sh" --tag)"
log() { echo "agent-base: $*" >&2; }

hash="$( (
  echo "$base"
  cd "$here" && sha256sum build.sh
) | sha256sum | cut -c1-16)"
tag="$name:$hash"
if [ "${1:-}" = "--tag" ]; then
  echo "$tag"
  exit 0
fi
if podman image exists "$tag"; then
  echo "$tag"
  exit 0
fi
podman image exists "$base" || "$here/../python-base/build.sh" >/dev/null

work="$(mktemp -d "${TMPDIR:-/tmp}/lpm-agent-base.XXXXXX")"
trap 'rm -rf "$work"' EXIT

log "fetching Debian's containerd package for ctr"
dl() { (cd "$work" && apt-get download -q -o APT::Sandbox::User=root containerd >&2); }
dl || {
  apt-get update -q >&2
  dl
}
deb="$(ls "$work"/containerd_*.deb)"
mkdir -p "$work/ctx/extract"
dpkg-deb -x "$deb" "$work/ctx/extract"
mv "$work/ctx/extract/usr/bin/ctr" "$work/ctx/ctr"
rm -rf "$work/ctx/extract"
version="$(basename "$deb" .deb | cut -d_ -f2)"
cat >"$work/ctx/Dockerfile" <<DOCKERFILE
FROM $base
COPY ctr /usr/bin/ctr
LABEL org.opencontainers.image.title=lpm-agent-base io.lpm.ctr.debian-version=$version
DOCKERFILE
BUILDAH_ISOLATION=chroot podman build --pull=never -q -t "$tag" "$work/ctx" >&2
log "built $tag (ctr from containerd $version)"
echo "$tag"
