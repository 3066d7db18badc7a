"""Dependencies and builds: Debian packages, the cached deps/*.sh builds, lpm-runc, the pause image."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lpm_local.config import (
    APT_DEPS,
    CACHE,
    CONTAINERD_VERSION,
    DEPS,
    ETCD_VERSION,
    INFRA_LOCAL,
    K8S_VERSION,
    LPM_CRIU_ACTION,
    LPM_CRIU_ACTION_SRC,
    LPM_RUNC,
    LPM_RUNC_BUILD,
    PATH_ENV,
    PAUSE_IMAGE,
)
from lpm_local.host import log, run


def dep_script(name: str, env: dict[str, str] | None = None) -> Path:
    """Run infra/local/deps/NAME (cached build); its last stdout line is the bin dir."""
    t = time.monotonic()
    proc = subprocess.run(
        ["bash", str(DEPS / name)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {}), "PATH": PATH_ENV + ":" + os.environ.get("PATH", "")},
    )
    if proc.returncode != 0:
        raise SystemExit(f"deps/{name} failed (rc {proc.returncode})")
    dt = time.monotonic() - t
    if dt > 2:
        log(f"deps/{name}: {dt:.0f}s")
    lines = proc.stdout.strip().splitlines()
    return Path(lines[-1]) if lines else Path()


def apt_deps() -> None:
    missing = []
    for p in APT_DEPS:
        r = run(["dpkg-query", "-W", "-f=${Status}", p], check=False, capture=True)
        if "install ok installed" not in r.stdout:
            missing.append(p)
    if not missing:
        return
    log(f"apt-get install {' '.join(missing)}")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    base = ["apt-get", "-o", "DPkg::Lock::Timeout=900"]
    if (
        run(
            [*base, "install", "-y", "-q", "--no-install-recommends", *missing], check=False, quiet=True, env=env
        ).returncode
        != 0
    ):
        run([*base, "update", "-q"], quiet=True, env=env)
        run([*base, "install", "-y", "-q", "--no-install-recommends", *missing], quiet=True, env=env)


class Bins:
    def __init__(self) -> None:
        self.k8s = Path()
        self.containerd = Path()
        self.etcd = Path()


def build_all() -> Bins:
    log(f"checking dependencies (cached under {CACHE})")
    apt_deps()
    b = Bins()
    dep_script("criu.sh")
    b.etcd = dep_script("etcd.sh", {"ETCD_VERSION": ETCD_VERSION})
    b.containerd = dep_script("containerd.sh", {"CONTAINERD_VERSION": CONTAINERD_VERSION})
    b.k8s = dep_script("kubernetes.sh", {"K8S_VERSION": K8S_VERSION})
    build_pause_image()
    install_lpm_runc()
    install_file(LPM_CRIU_ACTION_SRC.read_bytes(), LPM_CRIU_ACTION)
    return b


def install_lpm_runc() -> None:
    """Build lpm-runc (cached by build.sh) and install it at LPM_RUNC: copy beside it, then rename."""
    proc = subprocess.run(["bash", str(LPM_RUNC_BUILD)], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{LPM_RUNC_BUILD} failed (rc {proc.returncode})")
    install_file(Path(proc.stdout.strip().splitlines()[-1]).read_bytes(), LPM_RUNC)


def install_file(content: bytes, dest: Path) -> None:
    """An executable at dest (unless it already has that content): written beside it, then renamed."""
    if dest.exists() and dest.read_bytes() == content:
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
    tmp.write_bytes(content)
    tmp.chmod(0o755)
    os.replace(tmp, dest)
    log(f"installed {dest}")


def bins() -> Bins:
    b = Bins()
    b.k8s = CACHE / f"kubernetes-{K8S_VERSION}/bin"
    b.containerd = CACHE / f"containerd-{CONTAINERD_VERSION}/bin"
    b.etcd = CACHE / f"etcd-{ETCD_VERSION}/bin"
    return b


def pause_archive() -> Path:
    return CACHE / "images" / "pause-3.10-lpm.tar"


def build_pause_image() -> None:
    arc = pause_archive()
    if arc.exists():
        return
    log("building the pause image locally")
    arc.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lpm-pause-") as td:
        root = Path(td) / "rootfs"
        root.mkdir()
        run(["gcc", "-static", "-Os", "-s", "-o", str(root / "pause"), str(INFRA_LOCAL / "images/pause.c")])
        run(
            [
                sys.executable,
                str(INFRA_LOCAL / "oci_image.py"),
                "rootfs",
                "--dir",
                str(root),
                "--name",
                PAUSE_IMAGE,
                "--out",
                str(arc),
                "--entrypoint",
                '["/pause"]',
            ],
            quiet=True,
        )
