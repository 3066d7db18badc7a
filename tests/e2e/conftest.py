"""Session fixture: the real local cluster with LPM installed from this checkout's images and manifests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e import lpmctl as k


@pytest.fixture(scope="session")
def lpm_cluster() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("the local cluster needs root")
    was_up = subprocess.run([str(k.CLUSTER), "status"], capture_output=True).returncode == 0
    k.install_lpm()
    yield
    _remove_the_runs_stored_checkpoints()
    k.kubectl("delete", "namespace", k.NAMESPACE, "--wait=false", check=False)
    if not was_up and os.environ.get("LPM_CLUSTER_KEEP") != "1":
        k.cluster("down")


def _remove_the_runs_stored_checkpoints() -> None:
    """The suite's checkpoints are retained (the default) on the local cluster's export, and deleting the
    namespace keeps their files: a few hundred MB per run, which once filled this machine's disk. Removed here
    once no durable copy is still being written (removing one mid-write fails that store, not the suite)."""
    export = Path(k.ENV.get("LPM_LOCAL_STATE", "/nonexistent")) / "nfs-export"

    def checkpoints() -> list[dict]:
        res = k.kubectl("-n", k.NAMESPACE, "get", "podcheckpoints", "-o", "json", check=False)
        return json.loads(res.stdout)["items"] if res.returncode == 0 else []

    def settled() -> bool:
        return all((pc.get("status") or {}).get("phase") in ("Ready", "Failed", "Streamed") for pc in checkpoints())

    try:
        k.wait_for("the suite's durable copies settled", settled, timeout=120, interval=2)
    except AssertionError as exc:
        print(f"[e2e] {exc}; removing the stored checkpoints anyway")
    for uid in {(pc.get("status") or {}).get("podUID") or "" for pc in checkpoints()} - {""}:
        if "/" not in uid and uid not in (".", ".."):
            shutil.rmtree(export / uid, ignore_errors=True)
