"""Stored checkpoint -> OCI checkpoint image -> the node runtime's image store; the agent's only door to it.

A checkpoint image is built FROM scratch: one layer whose contents are the kubelet's checkpoint archive
(checkpoint/, config.dump, spec.dump, rootfs-diff.tar, ...), and the annotations runtimes look for,
`io.kubernetes.cri-o.annotations.checkpoint.name` (CRI-O, podman) and `org.criu.checkpoint.container.name`
(containerd), both the container's name, on the manifest and on its index entry. A pod whose container names
this image (imagePullPolicy: Never) is restored instead of started fresh.

Why the OCI layout is written here rather than with buildah/skopeo:
- the layer *is* the stored `dump.tar.zst`: a valid `application/vnd.oci.image.layer.v1.tar+zstd` blob whose
  digest (sha256 of the stored bytes) and diff ID (sha256 of the raw tar) are already in the manifest.json,
  so conversion copies bytes once, never recompresses, and re-verifies them on the way (DATA_LOSS otherwise);
  buildah would unpack the archive into containers-storage and recompress it;
- the layout is five small JSON/tar entries (oci-layout, index.json, manifest, config, layer), written with
  the stdlib; loading it is the runtime's own job: `ctr images import` (containerd, namespace k8s.io) or
  `podman load` (containers-storage, which CRI-O shares). The agent image then needs only `ctr` or `podman`
  and no storage driver of its own.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from lpm.api.constants import IMAGE_ANNOTATION_CRIO_CHECKPOINT_NAME, IMAGE_ANNOTATION_CRIU_CONTAINER_NAME
from lpm.storage.manifest import Manifest
from lpm.storage.store import CheckpointStore
from lpm.storage.uri import ArtifactRef

log = logging.getLogger(__name__)

MT_INDEX: Final = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
MT_LAYER_ZSTD: Final = "application/vnd.oci.image.layer.v1.tar+zstd"
MT_LAYER_TAR: Final = "application/vnd.oci.image.layer.v1.tar"
RUNTIMES: Final = ("containerd", "podman")
CONTAINERD_NAMESPACE: Final = "k8s.io"


class ImageError(Exception):
    """Building or loading the checkpoint image failed; the message carries the runtime's own error."""


@dataclass(frozen=True)
class LoadedImage:
    image_ref: str
    image_id: str
    seconds: float


def default_image_ref(ref: ArtifactRef) -> str:
    return f"localhost/lpm-checkpoint/{ref.container}:{ref.checkpoint_id}"


def _blob(obj: object) -> tuple[str, bytes]:
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


class IterReader(io.RawIOBase):
    """A file-like view of a chunk iterator (tarfile pulls the layer from the store's verified stream)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._pending = memoryview(b"")  # a view: taking a piece of a chunk copies nothing but that piece

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def drain(self) -> None:
        """Pull the iterator to its end so its final integrity check runs."""
        for _ in self._chunks:
            pass


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_checkpoint_image(
    store: CheckpointStore, ref: ArtifactRef, container_name: str, image_ref: str, out: Path | IO[bytes]
) -> tuple[str, str]:
    """Write an OCI image archive (OCI layout in a tar) for `ref` to `out`, a path or a stream written
    sequentially (a pipe); returns (manifest, config) digests.

    The layer bytes are read from the store, verified against the manifest (IntegrityError on mismatch, raised
    before the archive's end is written, so a reader of a stream sees a truncated archive, never a whole one).
    """
    manifest: Manifest = store.manifest(ref)
    if manifest.info.compression == "zstd" and manifest.info.raw_sha256:
        layer_type, diff_id = MT_LAYER_ZSTD, "sha256:" + manifest.info.raw_sha256
    elif not manifest.info.compression:
        layer_type, diff_id = MT_LAYER_TAR, "sha256:" + manifest.payload_sha256
    else:
        raise ImageError(f"{ref.uri}: cannot make an image layer from {manifest.info.compression!r} compression")
    layer_digest = "sha256:" + manifest.payload_sha256  # decrypted: the layer is what was sealed
    annotations = {
        IMAGE_ANNOTATION_CRIO_CHECKPOINT_NAME: container_name,
        IMAGE_ANNOTATION_CRIU_CONTAINER_NAME: container_name,
        "org.opencontainers.image.title": f"LPM checkpoint {ref.checkpoint_id} of {container_name}",
        "org.opencontainers.image.source": ref.uri,
    }
    if manifest.info.checkpointed_at:
        annotations["org.opencontainers.image.created"] = manifest.info.checkpointed_at
    config_digest, config = _blob(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": f"lpm-agent: {ref.uri}"}],
        }
    )
    manifest_digest, manifest_bytes = _blob(
        {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": layer_type, "digest": layer_digest, "size": manifest.payload_size}],
            "annotations": annotations,
        }
    )
    _, index = _blob(
        {
            "schemaVersion": 2,
            "mediaType": MT_INDEX,
            "manifests": [
                {
                    "mediaType": MT_MANIFEST,
                    "digest": manifest_digest,
                    "size": len(manifest_bytes),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": image_ref,
                        "org.opencontainers.image.ref.name": image_ref,
                        **annotations,
                    },
                }
            ],
        }
    )
    opened = (
        tarfile.open(out, "w", format=tarfile.PAX_FORMAT)
        if isinstance(out, Path)
        else tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)
    )
    with opened as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add(tar, "index.json", index)
        _add(tar, f"blobs/sha256/{config_digest[7:]}", config)
        _add(tar, f"blobs/sha256/{manifest_digest[7:]}", manifest_bytes)
        reader = IterReader(store.read_artifact(ref))
        info = tarfile.TarInfo(f"blobs/sha256/{layer_digest[7:]}")
        info.size = manifest.payload_size
        info.mode = 0o644
        tar.addfile(info, io.BufferedReader(reader, 1 << 20))
        reader.drain()  # the stream's sha256 check runs at its end
    return manifest_digest, config_digest


def _run(argv: list[str], what: str, timeout: float) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise ImageError(f"{what}: {argv[0]} is not installed on this node") from None
    except subprocess.TimeoutExpired:
        raise ImageError(f"{what}: {argv[0]} did not finish within {timeout:.0f}s") from None
    if done.returncode != 0:
        raise ImageError(f"{what}: {' '.join(argv[:4])} ... failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class ImageLoader:
    """Loads OCI image archives into the node runtime's image store."""

    runtime: str = "containerd"
    containerd_address: str = "/run/containerd/containerd.sock"
    ctr: str = "ctr"
    podman: str = "podman"
    work_dir: str = ""
    timeout: float = 600.0

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime {self.runtime!r} is not one of {', '.join(RUNTIMES)}")

    def _ctr(self) -> list[str]:
        return [self.ctr, "--address", self.containerd_address, "-n", CONTAINERD_NAMESPACE]

    def _load_into_podman(self, store: CheckpointStore, ref: ArtifactRef, container_name: str, image_ref: str) -> str:
        """Write the image archive to a private temporary file and `podman load` it; returns the config digest
        (podman's image ID). The file holds process memory: 0600 in a 0700 directory, removed at once."""
        what = f"loading {image_ref} into podman"
        work = Path(self.work_dir or tempfile.gettempdir())
        work.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"lpm-image-{ref.checkpoint_id}-", suffix=".oci.tar", dir=work)
        os.close(fd)
        archive = Path(name)
        try:
            _, config_digest = write_checkpoint_image(store, ref, container_name, image_ref, archive)
            _run([self.podman, "load", "-q", "-i", str(archive)], what, self.timeout)
        finally:
            archive.unlink(missing_ok=True)
        # podman names an OCI archive's image after its ref annotation only in some versions: tag explicitly.
        _run([self.podman, "tag", config_digest[7:], image_ref], what, 60)
        return config_digest

    def _stream_into_containerd(
        self, store: CheckpointStore, ref: ArtifactRef, container_name: str, image_ref: str
    ) -> str:
        """Pipe the image archive straight into `ctr images import -`: the layer is read from the store once and
        never written to a temporary file (containerd checks its digest and diff ID again as it imports).
        Returns the manifest digest."""
        what = f"loading {image_ref} into containerd"
        argv = [*self._ctr(), "images", "import", "--platform", "linux/amd64", "-"]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise ImageError(f"{what}: {argv[0]} is not installed on this node") from None
        # ctr's output is read on threads, so a chatty ctr can never block the pipe we write into.
        outputs: dict[str, bytes] = {}
        readers = [
            threading.Thread(target=lambda k=k, f=f: outputs.__setitem__(k, f.read()), daemon=True)
            for k, f in (("stdout", proc.stdout), ("stderr", proc.stderr))
        ]
        for t in readers:
            t.start()
        assert proc.stdin is not None
        manifest_digest, broken = "", False
        try:
            manifest_digest, _ = write_checkpoint_image(store, ref, container_name, image_ref, proc.stdin)
            proc.stdin.close()
        except BrokenPipeError:
            broken = True  # ctr stopped reading: its exit code and stderr say why
        except BaseException:
            proc.kill()  # before the archive is complete: ctr imports nothing
            proc.wait()
            raise
        try:
            code = proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise ImageError(f"{what}: {argv[0]} did not finish within {self.timeout:.0f}s") from None
        for t in readers:
            t.join(timeout=10)
        if broken:
            # containerd may have refused a corrupt layer before our own check reached its end: finish that
            # check, so corruption is reported as such (IntegrityError) rather than as a runtime failure.
            for _ in store.read_artifact(ref):
                pass
        if code != 0 or not manifest_digest:
            err = outputs.get("stderr", b"").decode(errors="replace").strip()
            raise ImageError(f"{what}: {' '.join(argv[:4])} ... failed ({code}): {err or 'it stopped reading'}")
        return manifest_digest

    def version(self) -> str:
        if self.runtime == "containerd":
            out = _run([*self._ctr(), "version"], "containerd version", 10)
            server = out.split("Server:", 1)[-1]
            for line in server.splitlines():
                if line.strip().startswith("Version:"):
                    return "containerd " + line.split(":", 1)[1].strip()
            return "containerd"
        return (
            "podman " + _run([self.podman, "version", "--format", "{{.Client.Version}}"], "podman version", 10).strip()
        )

    def convert(self, store: CheckpointStore, ref: ArtifactRef, container_name: str, image_ref: str) -> LoadedImage:
        """Stored checkpoint -> checkpoint image in this node's runtime. Verifies the archive on the way."""
        started = time.monotonic()
        if self.runtime == "containerd":
            image_id = self._stream_into_containerd(store, ref, container_name, image_ref)
        else:
            image_id = self._load_into_podman(store, ref, container_name, image_ref)
        seconds = time.monotonic() - started
        log.info("converted %s into %s image %s in %.2fs", ref.uri, self.runtime, image_ref, seconds)
        return LoadedImage(image_ref, image_id, seconds)
