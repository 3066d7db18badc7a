"""A real kube-apiserver for the server-side dry runs.

In order: the cluster named by $LPM_KUBECONFIG; infra/local's cluster when it is up (its admin kubeconfig,
/var/lib/lpm-local/kubeconfig, answers /readyz); else a private etcd + kube-apiserver (v1.34, the binaries
infra/local/deps builds into $LPM_CACHE) started for this session by tests/integration/controller's harness.
The local cluster is only used, never started or stopped here: other suites own its lifecycle.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from unit.deploy.manifests import kubectl

LOCAL_KUBECONFIG = Path(os.environ.get("LPM_LOCAL_STATE", "/var/lib/lpm-local")) / "kubeconfig"


def _ready(kubeconfig: Path) -> bool:
    if not kubeconfig.exists():
        return False
    proc = subprocess.run(
        [kubectl(), "--kubeconfig", str(kubeconfig), "--request-timeout=5s", "get", "--raw", "/readyz"],
        capture_output=True,
        text=True,
    )
    return proc.returncode == 0


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[Path]:
    env = os.environ.get("LPM_KUBECONFIG")
    if env:
        assert _ready(Path(env)), f"LPM_KUBECONFIG={env}: the API server is not ready"
        yield Path(env)
        return
    if _ready(LOCAL_KUBECONFIG):
        yield LOCAL_KUBECONFIG
        return
    from integration.controller import apiserver

    work = Path(tempfile.mkdtemp(prefix="lpm-deploy-apiserver-"))
    plane = apiserver.start(work)
    try:
        yield plane.kubeconfig
    finally:
        plane.stop()
        shutil.rmtree(work, ignore_errors=True)
