"""Session fixture: the real local cluster with LPM installed from this checkout's images and manifests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from e2e import lpmctl as k


@pytest.fixture(scope="session")
def lpm_cluster() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("the local cluster needs root")
    was_up = subprocess.run([str(k.CLUSTER), "status"], capture_output=True).returncode == 0
    k.install_lpm()
    yield
    k.kubectl("delete", "namespace", k.NAMESPACE, "--wait=false", check=False)
    if not was_up and os.environ.get("LPM_CLUSTER_KEEP") != "1":
        k.cluster("down")
