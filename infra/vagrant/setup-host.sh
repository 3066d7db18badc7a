#!/usr/bin/env bash
# Installs the linters tests/unit/deploy runs on this directory (ruby for `ruby -c`, shellcheck) from Debian.
# Idempotent; as root on a fresh bookworm machine. Vagrant itself is not installed: there is no hypervisor here.
set -euo pipefail
missing=()
command -v ruby >/dev/null || missing+=(ruby)
command -v shellcheck >/dev/null || missing+=(shellcheck)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "vagrant-lint-setup: installing ${missing[*]}" >&2
  apt-get update -q >&2 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
