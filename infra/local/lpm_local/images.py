"""Images in the nodes' containerd: imported from an archive or a podman image, no registry."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from lpm_local.build import bins
from lpm_local.config import STATE
from lpm_local.host import log, run
from lpm_local.namespaces import mntns_alive, node_nsenter


def ctr(name: str, *args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess[str]:
    b = bins()
    return run(
        [
            *node_nsenter(name),
            str(b.containerd / "ctr"),
            "--address",
            "/run/containerd/containerd.sock",
            "-n",
            "k8s.io",
            *args,
        ],
        check=check,
        capture=capture,
    )


def import_image(name: str, archive: Path) -> None:
    ctr(name, "images", "import", "--platform", "linux/amd64", str(archive))


def load_image(image: str, nodes: list[str]) -> None:
    """Import IMAGE (an archive, or a podman image saved to one first) into these nodes' containerd."""
    src = Path(image)
    tmpdir = STATE / "tmp"
    cleanup = None
    if src.exists():
        archive = src.resolve()
    else:
        tmpdir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="image-", suffix=".tar", dir=tmpdir)
        os.close(fd)
        os.unlink(tmp)
        log(f"podman save {image}")
        run(["podman", "save", "--format", "docker-archive", "-o", tmp, image])
        archive = cleanup = Path(tmp)
    try:
        for name in nodes:
            if not mntns_alive(name):
                raise SystemExit(f"{name} is not up")
            t = time.monotonic()
            # Stream through stdin: the archive's path need not be visible inside the node.
            with open(archive, "rb") as f:
                r = subprocess.run(
                    [
                        *node_nsenter(name),
                        str(bins().containerd / "ctr"),
                        "--address",
                        "/run/containerd/containerd.sock",
                        "-n",
                        "k8s.io",
                        "images",
                        "import",
                        "--platform",
                        "linux/amd64",
                        "-",
                    ],
                    stdin=f,
                    capture_output=True,
                    text=True,
                )
            if r.returncode != 0:
                raise SystemExit(f"{name}: ctr images import failed: {r.stderr.strip()}")
            log(f"{name}: imported {image} ({time.monotonic() - t:.1f}s)")
    finally:
        if cleanup:
            cleanup.unlink(missing_ok=True)
