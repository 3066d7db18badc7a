#!/usr/bin/env bash
# Installs ruby from Debian, for tests/unit/deploy's `ruby -c Vagrantfile` (./pants brings shellcheck and shfmt).
# Idempotent; as root on a fresh bookworm machine. Vagrant itself is not installed: there is no hypervisor here.
set -euo pipefail
missing=()
command -v ruby >/dev/null || missing+=(ruby)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "vagrant-lint-setup: installing ${missing[*]}" >&2
  apt-get update -q >&2 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
