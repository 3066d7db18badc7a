"""Session fixture: the real local cluster with LPM installed from this checkout's images and manifests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

import lpmctl as k


@pytest.fixture(scope="session")
def lpm_cluster() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("the local cluster needs root")
    was_up = subprocess.run([str(k.CLUSTER), "status"], capture_output=True).returncode == 0
    k.cluster("up")
    k.ENV.update(k.env())
    for image in ("controller", "agent", "analytics-counter"):
        k.cluster("load-image", f"localhost/lpm/{image}:{k.IMAGE_VERSION}")
    k.kubectl("apply", "--server-side", "--force-conflicts", "-k", "deploy/kustomize/overlays/local")
    if k.kubectl("-n", "lpm-system", "get", "secret", "lpm-agent-tls", check=False).returncode != 0:
        secrets = subprocess.run(["bash", "deploy/certs/generate.sh", "-n", "lpm-system"], check=True,
                                 capture_output=True, text=True).stdout
        k.kubectl("apply", "-f", "-", input=secrets)
    # The images were just (re)loaded under an unchanged tag: restart so the pods run this checkout's code.
    k.kubectl("-n", "lpm-system", "rollout", "restart", "deployment/lpm-controller", "daemonset/lpm-agent")
    k.kubectl("-n", "lpm-system", "rollout", "status", "deployment/lpm-controller", "--timeout=180s")
    k.kubectl("-n", "lpm-system", "rollout", "status", "daemonset/lpm-agent", "--timeout=180s")
    k.kubectl("delete", "namespace", k.NAMESPACE, "--ignore-not-found", "--wait=true", "--timeout=120s")
    k.kubectl("create", "namespace", k.NAMESPACE)
    yield
    k.kubectl("delete", "namespace", k.NAMESPACE, "--wait=false", check=False)
    if not was_up and os.environ.get("LPM_CLUSTER_KEEP") != "1":
        k.cluster("down")
