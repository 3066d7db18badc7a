"""ConvertCheckpointToImage into containerd: a private containerd (the same v2.x the local cluster builds) imports
the OCI checkpoint image, unpacks the zstd layer, and shows the archive's contents and the restore annotations.

containerd is not packaged for bookworm; the cluster's build (infra/local/deps/containerd.sh) caches it under
$LPM_CACHE/containerd-<version>/bin. Without that build this test is skipped, saying so."""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lpm.agent.images import ImageLoader, default_image_ref
from lpm.api.constants import IMAGE_ANNOTATION_CRIO_CHECKPOINT_NAME, IMAGE_ANNOTATION_CRIU_CONTAINER_NAME
from lpm.storage.store import CheckpointStore, PosixBackend
from lpm.storage.uri import CheckpointKey


def containerd_bin() -> Path | None:
    found = shutil.which("containerd")
    if found:
        return Path(found).parent
    cache = os.environ.get("LPM_CACHE", "/var/cache/lpm")
    for candidate in sorted(glob.glob(f"{cache}/containerd-v2*/bin/containerd"), reverse=True):
        return Path(candidate).parent
    return None


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    bin_dir = containerd_bin()
    if bin_dir is None:
        pytest.skip("no containerd v2 binary (build it with infra/local/deps/containerd.sh)")
    d = tmp_path / "ctrd"
    d.mkdir()
    sock = d / "containerd.sock"
    (d / "config.toml").write_text(
        f'version = 3\nroot = "{d / "root"}"\nstate = "{d / "state"}"\n'
        "disabled_plugins = ["
        '"io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime"]\n'
        f'[grpc]\n  address = "{sock}"\n'
    )
    with open(d / "log", "wb") as log:
        proc = subprocess.Popen(
            [str(bin_dir / "containerd"), "--config", str(d / "config.toml")], stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (d / "log").read_text()[-2000:]
            time.sleep(0.05)
        yield bin_dir / "ctr", sock
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        subprocess.run(["umount", "-R", str(d / "mnt")], capture_output=True, check=False)


def test_checkpoint_image_is_imported_and_unpacked_by_containerd(tmp_path: Path, containerd) -> None:
    ctr, sock = containerd
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in [
            ("checkpoint/inventory.img", os.urandom(4096)),
            ("config.dump", b"{}"),
            ("spec.dump", b"{}"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw.seek(0)
    (tmp_path / "repo").mkdir()
    store = CheckpointStore(PosixBackend(tmp_path / "repo"))
    key = CheckpointKey("6a2b3c4d-1111-4222-8333-944455556666", "ck-ctrd")
    store.put_archive(key.artifact("web"), raw)
    store.complete(key, ["web"])

    loader = ImageLoader(runtime="containerd", containerd_address=str(sock), ctr=str(ctr), work_dir=str(tmp_path / "w"))
    assert loader.version().startswith("containerd v2")
    ref = default_image_ref(key.artifact("web"))
    loaded = loader.convert(store, key.artifact("web"), "web", ref)
    assert loaded.image_ref == ref and loaded.image_id.startswith("sha256:")

    base = [str(ctr), "--address", str(sock), "-n", "k8s.io"]
    listing = subprocess.run([*base, "images", "ls", "-q"], capture_output=True, text=True, check=True).stdout
    assert ref in listing.split()
    manifest = json.loads(
        subprocess.run([*base, "content", "get", loaded.image_id], capture_output=True, check=True).stdout
    )
    assert manifest["annotations"][IMAGE_ANNOTATION_CRIU_CONTAINER_NAME] == "web"
    assert manifest["annotations"][IMAGE_ANNOTATION_CRIO_CHECKPOINT_NAME] == "web"
    mnt = tmp_path / "ctrd" / "mnt"
    mnt.mkdir()
    subprocess.run([*base, "images", "mount", ref, str(mnt)], capture_output=True, check=True)
    try:
        assert sorted(p.name for p in mnt.iterdir()) == ["checkpoint", "config.dump", "spec.dump"]
    finally:
        subprocess.run([*base, "images", "unmount", str(mnt)], capture_output=True, check=False)
