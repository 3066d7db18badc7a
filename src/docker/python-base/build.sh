#!/usr/bin/env bash
# Builds LPM's Python base image (Debian bookworm minbase + CPython 3.11) locally and prints its tag.
#
# Nothing comes from a registry: the rootfs is `debootstrap --variant=minbase` from deb.debian.org, trimmed
# (docs, man pages, locales, apt lists) and `podman import`ed. The tag is a content hash of this directory and
# the package list, so a warm call only checks that the image exists and any change here builds a new image.
# The controller and agent Dockerfiles take the tag as the LPM_PYTHON_BASE build arg, set in pants.toml's
# [docker] build_args; tests/unit/deploy checks that the two agree (`build.sh --tag` prints it without building).
# Needs root, debootstrap and podman: src/docker/setup-host.sh installs them and runs this script.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
name="localhost/lpm/python-base"
suite="bookworm"
# python3 is 3.11 on bookworm (the PEX files' interpreter constraint); libpython3.11-stdlib has venv, which PEX's
# venv tool uses with --without-pip. Nothing else: the PEX files carry every third-party package.
packages="python3"
mirror="${LPM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
log() { echo "python-base: $*" >&2; }

hash="$( (
  echo "$suite $packages"
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

work="$(mktemp -d "${TMPDIR:-/tmp}/lpm-python-base.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log "debootstrap $suite with $packages (~1 min)"
if ! debootstrap --variant=minbase --include="$packages" "$suite" "$work/rootfs" "$mirror" \
  >"$work/debootstrap.out" 2>&1; then
  tail -n 30 "$work/debootstrap.out" "$work/rootfs/debootstrap/debootstrap.log" >&2 || true
  log "debootstrap failed"
  exit 1
fi
r="$work/rootfs"
# The images never run apt; what a container does not need is left out.
rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/apt/*.bin "$r"/var/lib/apt/lists/* \
  "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/locale/* \
  "$r"/var/log/* "$r"/var/cache/debconf/*-old "$r"/var/lib/dpkg/*-old
find "$r/usr/lib/python3.11" -name __pycache__ -prune -exec rm -rf {} +
# An unprivileged user for the controller (the agent runs as root: it reads root-only kubelet files).
echo "lpm:x:65532:65532:lpm:/nonexistent:/usr/sbin/nologin" >>"$r/etc/passwd"
echo "lpm:x:65532:" >>"$r/etc/group"
tar -C "$r" --numeric-owner -c . | podman import \
  --change 'ENV LANG=C.UTF-8' --change 'ENV PYTHONDONTWRITEBYTECODE=1' --change 'CMD ["/usr/bin/python3"]' \
  --message "lpm python-base $hash (debian $suite: $packages)" - "$tag" >&2
log "built $tag"
echo "$tag"
