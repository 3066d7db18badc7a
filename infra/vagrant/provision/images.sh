#!/usr/bin/env bash
# Sourced by lpm.sh/worker.sh: loads the image archives infra/vagrant/export-images.sh wrote on the host into
# this node's containerd, namespace k8s.io (no registry: the manifests use localhost/lpm/... with IfNotPresent).
load_lpm_images() {
  local dir=/lpm/infra/vagrant/.images archive ref
  if ! ls "$dir"/*.tar >/dev/null 2>&1; then
    echo "lpm-provision: no image archives in $dir; run infra/vagrant/export-images.sh on the host" >&2
    return 1
  fi
  for archive in "$dir"/*.tar; do
    ref="$(basename "$archive" .tar)"
    ref="localhost/lpm/${ref%%_*}:${ref#*_}"
    ctr -n k8s.io images import --platform linux/amd64 "$archive" >/dev/null
    echo "lpm-provision: loaded $ref" >&2
  done
}
