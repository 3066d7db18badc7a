"""infra/vagrant cannot run on these machines (no hypervisor), so its files are checked instead.

Its scripts are shellchecked by `./pants lint` like every other shell script; this checks the Vagrantfile and
that the nodes get what the Live engine needs.
"""

from __future__ import annotations

import re
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


def test_the_vms_run_the_containerd_that_infra_local_tests_lpm_with() -> None:
    """The Live engine needs containerd 2 (lpm-runc's handler is a config-version-3 drop-in); the Vagrant nodes
    take the version the local cluster builds, so what is tested there is what they run."""
    tested = re.search(
        r"CONTAINERD_VERSION=\$\{CONTAINERD_VERSION:-v([0-9.]+)\}",
        (repo_root() / "infra" / "local" / "deps" / "containerd.sh").read_text(),
    )
    assert tested is not None
    assert f'"CONTAINERD_VERSION" => "{tested.group(1)}"' in (_vagrant_dir() / "Vagrantfile").read_text()


def test_every_vm_gets_the_lpm_runtime_handler_from_the_node_script() -> None:
    common = (_vagrant_dir() / "provision" / "common.sh").read_text()
    assert 'bash /lpm/deploy/node/lpm-runc-node.sh install "$lpm_runc"' in common
    assert 'imports = ["/etc/containerd/conf.d/*.toml"]' in common, "the handler's drop-in is read only if imported"
    assert (repo_root() / "deploy" / "node" / "lpm-runc-node.sh").is_file()
    assert "lpm-runc" in (_vagrant_dir() / "export-images.sh").read_text(), "the binary is built on the host"
