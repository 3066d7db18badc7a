"""infra/vagrant cannot run on these machines (no hypervisor), so its files are linted instead."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from unit.deploy.manifests import repo_root


def _vagrant_dir() -> Path:
    return repo_root() / "infra" / "vagrant"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run infra/vagrant/setup-host.sh (Debian packages ruby, shellcheck)")
    return path


def test_vagrantfile_is_valid_ruby() -> None:
    proc = subprocess.run([_tool("ruby"), "-c", str(_vagrant_dir() / "Vagrantfile")], capture_output=True, text=True)
    assert proc.returncode == 0 and "Syntax OK" in proc.stdout, proc.stderr


def test_vagrantfile_describes_the_seeds_two_nodes() -> None:
    text = (_vagrant_dir() / "Vagrantfile").read_text()
    for fact in ('"bento/ubuntu-22.04"', '"192.168.56.10", memory: 4096, cpus: 2', '"192.168.56.11", memory: 2048'):
        assert fact in text


def test_provisioning_scripts_pass_shellcheck() -> None:
    d = _vagrant_dir()
    scripts = sorted([*d.glob("*.sh"), *(d / "provision").glob("*.sh")])
    assert len(scripts) >= 6
    proc = subprocess.run(
        [_tool("shellcheck"), "--external-sources", "--severity=style", *map(str, scripts)],
        capture_output=True,
        text=True,
        cwd=d,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_deploy_and_image_scripts_pass_shellcheck() -> None:
    root = repo_root()
    scripts = [
        root / "deploy" / "certs" / "generate.sh",
        root / "deploy" / "node" / "lpm-runc-node.sh",
        root / "deploy" / "node" / "lpm-criu-action",
        root / "src" / "docker" / "setup-host.sh",
        root / "src" / "docker" / "python-base" / "build.sh",
        root / "src" / "docker" / "agent-base" / "build.sh",
    ]
    proc = subprocess.run([_tool("shellcheck"), *map(str, scripts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
