#!/usr/bin/env python3
"""Write single-layer OCI image archives (OCI image layout in a tar) with the stdlib only.

No registry is reachable here, so every image is built locally and imported into the nodes'
containerd with `ctr -n k8s.io images import` (see `infra/local/cluster load-image`).

Subcommands:
  rootfs      an ordinary image from a directory (e.g. a busybox-static rootfs)
  checkpoint  an OCI *checkpoint image* from a kubelet checkpoint archive: FROM scratch, the only layer is
              the archive's contents, with the annotations CRI-O and containerd look for:
                io.kubernetes.cri-o.annotations.checkpoint.name = <container name>   (CRI-O)
                org.criu.checkpoint.container.name           = <container name>   (containerd)
              containerd >= 2.0 restores such an image when a pod's container names it as `image`
              (containerd 2.2.9 needs `enable_experimental_restore_via_create = true` in its CRI config).

Import the result with: ctr -n k8s.io images import --no-unpack=false OUT.tar
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"

CRIO_CHECKPOINT_ANNOTATION = "io.kubernetes.cri-o.annotations.checkpoint.name"
CONTAINERD_CHECKPOINT_ANNOTATION = "org.criu.checkpoint.container.name"


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def _normalize_ref(ref: str) -> str:
    """containerd wants fully qualified names; CRI resolves `localhost/x:y` as is."""
    name = ref
    if "/" not in name.split(":")[0] and not name.startswith("localhost/"):
        name = "docker.io/library/" + name
    if ":" not in name.rsplit("/", 1)[-1] and "@" not in name:
        name += ":latest"
    return name


def write_image(
    out: Path,
    ref: str,
    layer_tar: Path,
    *,
    config: dict | None = None,
    annotations: dict[str, str] | None = None,
    created: str = "1970-01-01T00:00:00Z",
) -> str:
    """Write an OCI layout tar holding one image with one uncompressed layer. Returns manifest digest."""
    layer_digest, layer_size = _sha256_file(layer_tar)
    image_config = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": config or {},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": created, "created_by": "infra/local/oci_image.py"}],
    }
    cfg_digest, cfg_bytes = _blob(json.dumps(image_config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": cfg_digest, "size": len(cfg_bytes)},
        "layers": [{"mediaType": MT_LAYER, "digest": layer_digest, "size": layer_size}],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    man_digest, man_bytes = _blob(json.dumps(manifest, sort_keys=True).encode())
    full = _normalize_ref(ref)
    desc_ann = {
        "io.containerd.image.name": full,
        "org.opencontainers.image.ref.name": full.rsplit(":", 1)[-1],
    }
    if annotations:
        desc_ann.update(annotations)
    index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [
            {
                "mediaType": MT_MANIFEST,
                "digest": man_digest,
                "size": len(man_bytes),
                "annotations": desc_ann,
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        _add_bytes(tar, "index.json", json.dumps(index, sort_keys=True).encode())
        _add_bytes(tar, f"blobs/sha256/{cfg_digest[7:]}", cfg_bytes)
        _add_bytes(tar, f"blobs/sha256/{man_digest[7:]}", man_bytes)
        info = tarfile.TarInfo(f"blobs/sha256/{layer_digest[7:]}")
        info.size = layer_size
        info.mode = 0o644
        with open(layer_tar, "rb") as f:
            tar.addfile(info, f)
    os.replace(tmp, out)
    return man_digest


def tar_directory(src: Path, dest: Path) -> None:
    """Deterministic layer tar of a directory: root-owned, mtime 0, sorted."""

    def add(tar: tarfile.TarFile, path: Path, arc: str) -> None:
        info = tar.gettarinfo(str(path), arc)
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        if info.isreg():
            with open(path, "rb") as f:
                tar.addfile(info, f)
        else:
            tar.addfile(info)
        if path.is_dir() and not path.is_symlink():
            for child in sorted(path.iterdir()):
                add(tar, child, f"{arc}/{child.name}" if arc else child.name)

    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(src.iterdir()):
            add(tar, child, child.name)


def busybox_rootfs(dest: Path, busybox: str = "/bin/busybox", extra: dict[str, str] | None = None) -> None:
    """A tiny rootfs: a static busybox with applet symlinks, /tmp, /etc/{passwd,group}."""
    for d in ("bin", "tmp", "etc", "proc", "sys", "dev", "run", "var/run"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    (dest / "tmp").chmod(0o1777)
    shutil.copy2(busybox, dest / "bin/busybox")
    os.chmod(dest / "bin/busybox", 0o755)
    for applet in ("sh", "cat", "echo", "sleep", "ls", "date", "ps", "kill", "wget", "nc", "env", "mkdir", "rm",
                   "cp", "mv", "seq", "tail", "head", "true", "false", "grep", "hostname", "ip", "id", "top"):
        link = dest / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    (dest / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    (dest / "etc/group").write_text("root:x:0:\nnobody:x:65534:\n")
    for path, content in (extra or {}).items():
        p = dest / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
        if content.startswith("#!"):
            p.chmod(0o755)


def cmd_rootfs(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="oci-rootfs-") as td:
        layer = Path(td) / "layer.tar"
        tar_directory(Path(args.dir), layer)
        cfg: dict = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
        if args.entrypoint:
            cfg["Entrypoint"] = json.loads(args.entrypoint)
        if args.cmd:
            cfg["Cmd"] = json.loads(args.cmd)
        if args.workdir:
            cfg["WorkingDir"] = args.workdir
        print(write_image(Path(args.out), args.name, layer, config=cfg))


def checkpoint_image(archive: Path, container_name: str, ref: str, out: Path) -> str:
    """OCI checkpoint image whose single layer is the (uncompressed tar) kubelet checkpoint archive."""
    with open(archive, "rb") as f:
        magic = f.read(4)
    ann = {CRIO_CHECKPOINT_ANNOTATION: container_name, CONTAINERD_CHECKPOINT_ANNOTATION: container_name}
    if magic[:2] == b"\x1f\x8b" or magic == b"\x28\xb5\x2f\xfd":
        # Compressed archive (e.g. podman export): store the decompressed tar as the layer.
        with tempfile.TemporaryDirectory(prefix="oci-ckpt-") as td:
            layer = Path(td) / "layer.tar"
            if magic[:2] == b"\x1f\x8b":
                with gzip.open(archive, "rb") as src, open(layer, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                raise SystemExit("zstd archives: decompress first (zstd -d)")
            return write_image(out, ref, layer, annotations=ann)
    return write_image(out, ref, archive, annotations=ann)


def cmd_checkpoint(args: argparse.Namespace) -> None:
    print(checkpoint_image(Path(args.archive), args.container_name, args.name, Path(args.out)))


def cmd_busybox(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="oci-busybox-") as td:
        root = Path(td) / "rootfs"
        extra = {}
        for spec in args.file or []:
            path, _, src = spec.partition("=")
            extra[path] = Path(src).read_text()
        busybox_rootfs(root, args.busybox, extra)
        layer = Path(td) / "layer.tar"
        tar_directory(root, layer)
        cfg: dict = {"Env": ["PATH=/bin"], "Cmd": ["sh"]}
        if args.cmd:
            cfg["Cmd"] = json.loads(args.cmd)
        print(write_image(Path(args.out), args.name, layer, config=cfg))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd_name", required=True)

    r = sub.add_parser("rootfs", help="image from a rootfs directory")
    r.add_argument("--dir", required=True)
    r.add_argument("--name", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--entrypoint", help="JSON list")
    r.add_argument("--cmd", help="JSON list")
    r.add_argument("--workdir")
    r.set_defaults(fn=cmd_rootfs)

    b = sub.add_parser("busybox", help="busybox-static image")
    b.add_argument("--name", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--busybox", default="/bin/busybox")
    b.add_argument("--cmd", help="JSON list")
    b.add_argument("--file", action="append", help="PATH_IN_IMAGE=LOCAL_FILE")
    b.set_defaults(fn=cmd_busybox)

    c = sub.add_parser("checkpoint", help="OCI checkpoint image from a kubelet checkpoint archive")
    c.add_argument("--archive", required=True)
    c.add_argument("--container-name", required=True)
    c.add_argument("--name", required=True)
    c.add_argument("--out", required=True)
    c.set_defaults(fn=cmd_checkpoint)

    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
