"""infra/local/cluster runs the lpm_local package beside it with a bare python3: no Pants, no install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CLUSTER = Path.cwd() / "infra" / "local" / "cluster"


def _cluster(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "LPM_LOCAL_STATE": str(state), "LPM_CACHE": "/nonexistent-lpm-cache"}
    # -S -I: no site-packages, no PYTHONPATH, no current directory: only what the script puts on sys.path.
    return subprocess.run(
        [sys.executable, "-S", "-I", str(CLUSTER), *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_help_lists_every_command(tmp_path: Path) -> None:
    proc = _cluster("--help", state=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "{up,down,status,env,exec,load-image}" in proc.stdout
    assert "A real two-node Kubernetes cluster on this one machine." in proc.stdout


def test_env_prints_the_exports_for_this_state_and_cache(tmp_path: Path) -> None:
    proc = _cluster("env", state=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"export KUBECONFIG={tmp_path / 'kubeconfig'}",
        f"export LPM_LOCAL_STATE={tmp_path}",
        "export PATH=/nonexistent-lpm-cache/kubernetes-v1.34.4/bin:$PATH",
    ]


def test_exec_refuses_an_unknown_node(tmp_path: Path) -> None:
    proc = _cluster("exec", "lpm-node-9", "--", "true", state=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "unknown node lpm-node-9; nodes: lpm-node-1, lpm-node-2"
