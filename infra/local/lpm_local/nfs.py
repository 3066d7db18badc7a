"""The checkpoint repository: nfs-ganesha in a podman container on the host bridge."""

from __future__ import annotations

import socket

from lpm_local.config import (
    HOST_IP,
    NFS_CONTAINER,
    NFS_EXPORT,
    NFS_IMAGE_BUILD,
    NFS_MOUNT_PORT,
    NFS_PORT,
    NFS_SMALL_SIZE,
    STATE,
)
from lpm_local.daemons import wait_for
from lpm_local.host import log, out, run


def nfs_url(export: str = "/export") -> str:
    return f"nfs://{HOST_IP}:{NFS_PORT}{export}?version=3&mountport={NFS_MOUNT_PORT}&noresvport=true"


def nfs_config() -> str:
    """The image's ganesha.conf, listening on the cluster bridge's host address only."""
    conf = (NFS_IMAGE_BUILD.parent / "ganesha.conf").read_text()
    return conf.replace("NFS_CORE_PARAM {", f"NFS_CORE_PARAM {{\n    Bind_addr = {HOST_IP};", 1)


def nfs_running(image: str | None = None) -> bool:
    r = run(["podman", "inspect", "-f", "{{.State.Running}} {{.ImageName}}", NFS_CONTAINER], check=False, capture=True)
    running, _, name = r.stdout.strip().partition(" ") if r.returncode == 0 else ("", "", "")
    return running == "true" and (image is None or name == image)


def start_nfs_server() -> None:
    """nfs-ganesha in a podman container on the host network (bound to HOST_IP), exporting NFS_EXPORT.
    Kept across `up` when it already runs this image; the export directory survives `down` like a NAS."""
    image = out(["bash", str(NFS_IMAGE_BUILD)]).strip().splitlines()[-1]
    if nfs_running(image):
        return
    run(["podman", "rm", "-f", NFS_CONTAINER], check=False, capture=True)
    NFS_EXPORT.mkdir(mode=0o700, parents=True, exist_ok=True)
    conf = STATE / "ganesha.conf"
    conf.write_text(nfs_config())
    run(
        [
            "podman",
            "run",
            "-d",
            "--name",
            NFS_CONTAINER,
            "--network",
            "host",
            # VFS exports need open_by_handle_at(2): without CAP_DAC_READ_SEARCH every call is NFS3ERR_PERM.
            "--cap-add",
            "DAC_READ_SEARCH",
            "-v",
            f"{NFS_EXPORT}:/export",
            "--mount",
            f"type=tmpfs,destination=/small,tmpfs-size={NFS_SMALL_SIZE}",
            "-v",
            f"{conf}:/etc/ganesha/ganesha.conf:ro",
            image,
        ],
        capture=True,
    )

    def answering() -> bool:
        try:
            with socket.create_connection((HOST_IP, NFS_PORT), timeout=1):
                return True
        except OSError:
            return False

    wait_for("nfs-ganesha", answering, 60)
    log(f"nfs-ganesha serving {NFS_EXPORT} at {nfs_url()}")


def stop_nfs_server() -> None:
    if run(["podman", "container", "exists", NFS_CONTAINER], check=False, capture=True).returncode == 0:
        log("stopping nfs-ganesha")
        run(["podman", "rm", "-f", "-t", "5", NFS_CONTAINER], check=False, capture=True)
