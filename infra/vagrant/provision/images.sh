#!/usr/bin/env bash
# Sourced by master.sh/worker.sh: loads the image archives infra/vagrant/export-images.sh wrote on the host into
# this node's CRI-O storage (no registry: the manifests use localhost/lpm/... with IfNotPresent).
load_lpm_images() {
  local dir=/lpm/infra/vagrant/.images archive ref
  if ! ls "$dir"/*.tar >/dev/null 2>&1; then
    echo "lpm-provision: no image archives in $dir; run infra/vagrant/export-images.sh on the host" >&2
    return 1
  fi
  for archive in "$dir"/*.tar; do
    ref="$(basename "$archive" .tar)"
    ref="localhost/lpm/${ref%%_*}:${ref#*_}"
    skopeo copy --quiet "docker-archive:$archive" "containers-storage:$ref"
    echo "lpm-provision: loaded $ref" >&2
  done
}
