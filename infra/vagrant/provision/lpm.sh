#!/usr/bin/env bash
# Master: LPM itself: images into containerd, the mTLS Secrets, then the vagrant overlay.
set -euo pipefail
export KUBECONFIG=/etc/kubernetes/admin.conf
# shellcheck source-path=SCRIPTDIR source=images.sh
. /vagrant/provision/images.sh
load_lpm_images
kubectl apply -k /lpm/deploy/kustomize/overlays/vagrant
# Keep existing certificates on re-provisioning; make them on the first run.
if ! kubectl -n lpm-system get secret lpm-agent-tls >/dev/null 2>&1; then
  bash /lpm/deploy/certs/generate.sh -n lpm-system | kubectl apply -f -
fi
# The checkpoint keys are made once and kept: replacing them would make every stored checkpoint unreadable.
if ! kubectl -n lpm-system get secret lpm-checkpoint-keys >/dev/null 2>&1; then
  bash /lpm/deploy/keys/checkpoint-keys.sh new -n lpm-system | kubectl apply -f -
fi
kubectl -n lpm-system rollout status deployment/lpm-controller --timeout=300s
echo "lpm-provision[lpm]: installed; the agent DaemonSet reaches the worker when it joins" >&2
