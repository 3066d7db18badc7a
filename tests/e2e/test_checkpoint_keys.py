"""deploy/keys/checkpoint-keys.sh against the real API server: make, rotate, list, retire; the agent's key
directory reads what it leaves (as the kubelet mounts the Secret: one file per data key)."""

from __future__ import annotations

import base64
import subprocess
import time
from pathlib import Path

import pytest
from e2e import lpmctl as k

from lpm.storage.sealing import KeyDirectory

pytestmark = pytest.mark.usefixtures("lpm_cluster")
SCRIPT = "deploy/keys/checkpoint-keys.sh"
NS = "lpm-keys-e2e"  # not lpm-system: the agents' own keys stay as they are


def keys(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", SCRIPT, *args, "-n", NS], env=k.ENV, text=True, capture_output=True, check=check)


def secret_data() -> dict[str, bytes]:
    obj = k.kubectl_json("-n", NS, "get", "secret", "lpm-checkpoint-keys")
    return {name: base64.b64decode(value) for name, value in obj["data"].items()}


def test_make_rotate_list_and_retire_keys_in_place(tmp_path: Path) -> None:
    k.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=true")
    k.kubectl("create", "namespace", NS)
    try:
        k.kubectl("apply", "-f", "-", input=keys("new").stdout)
        first = secret_data()["active"].decode()
        time.sleep(1.1)  # key IDs are the creation time, to the second
        rotated = keys("rotate")
        data = secret_data()
        second = data["active"].decode()
        assert second != first and {first, second} <= set(data), data.keys()
        assert f"{second} is now the active key (was {first}" in rotated.stderr
        assert keys("list").stdout.split("\n")[:2] == sorted([first, f"{second} (active)"])
        # What the agent reads from the mounted Secret: both keys, the new one active.
        for name, value in data.items():
            (tmp_path / name).write_bytes(value)
        ring = KeyDirectory(tmp_path).ring()
        assert ring.active == second and set(ring.keys) == {first, second}
        refused = keys("retire", second, check=False)
        assert refused.returncode == 1 and "is the active key" in refused.stderr
        keys("retire", first)
        assert set(secret_data()) == {"active", second}
    finally:
        k.kubectl("delete", "namespace", NS, "--wait=false", check=False)
