"""infra/vagrant cannot run on these machines (no hypervisor), so its files are checked instead.

Its scripts are shellchecked by `./pants lint` like every other shell script; this checks the Vagrantfile.
"""

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
        pytest.fail(f"{name} is not installed: run infra/vagrant/setup-host.sh (Debian package ruby)")
    return path


def test_vagrantfile_is_valid_ruby() -> None:
    proc = subprocess.run([_tool("ruby"), "-c", str(_vagrant_dir() / "Vagrantfile")], capture_output=True, text=True)
    assert proc.returncode == 0 and "Syntax OK" in proc.stdout, proc.stderr


def test_vagrantfile_describes_the_seeds_two_nodes() -> None:
    text = (_vagrant_dir() / "Vagrantfile").read_text()
    for fact in ('"bento/ubuntu-22.04"', '"192.168.56.10", memory: 4096, cpus: 2', '"192.168.56.11", memory: 2048'):
        assert fact in text
