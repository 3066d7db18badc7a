"""The checkpoint store: layout, manifests, completion marker, sha256 verification and atomic publish.

One implementation over a small `Backend` (temp file, write, durable sync, rename, read stream, list,
remove); `PosixBackend` serves a mounted volume (the kubelet-mounted PVC), `lpm.storage.nfs.NfsBackend`
speaks NFSv3 itself. `open_backend` picks one from the agent's `--storage` value.

Publishing protocol (what a reader on another node may rely on):
1. every file is written to a temp name in its final directory (`.<name>.tmp-<token>`), synced, then
   renamed over the final name: a reader sees the old file or the whole new one, never a prefix;
2. a container's manifest (size + sha256 of its archive) is published after its archive;
3. the checkpoint's completion marker is published last, after every container's manifest. A checkpoint
   without the marker does not exist for readers (`read_artifact` refuses it, listings skip it).
A writer killed mid-way leaves only temp files and unmarked directories; `clean_temp` removes them on the
next run, and `clean_stale_temps` (agent start-up) sweeps the whole repository: temp names carry the writer's
node and start time (`.<name>.tmp-<node>-<unixtime>-<random>`), so an agent removes its own leftovers at once
and other nodes' only once they are too old to belong to a live writer.

Checkpoint archives (`put_archive`) are the kubelet's tar streamed through multi-threaded zstd: the raw side
and the stored side are both hashed on the way, and the manifest records sizes, both sha256, the zstd level,
CRIU/runtime versions and timestamps. `complete` re-reads every archive against its manifest before it
writes the marker. Memory stays constant whatever the archive size: fixed-size chunks only.
Files are created 0600 and directories 0700 (checkpoints hold process memory).

With keys (`lpm.storage.sealing`, the agent's --encryption-keys), every archive is sealed as it is written:
the manifest's size and sha256 are then the ciphertext's, and it also records the encryption, the key ID and
the payload's (the zstd stream's) size and sha256, which image layers are named by. Readers get the payload,
decrypted and authenticated chunk by chunk; archives stored in the clear stay readable.

Layers: backend.py (primitives, errors), posix.py and nfs.py (backends), manifest.py, sealing.py, this module.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Final, Protocol

import zstandard

from lpm.api.names import InvalidName
from lpm.storage import sealing
from lpm.storage.backend import (
    READ_CHUNK,
    TEMP_INFIX,
    WRITE_CHUNK,
    Backend,
    CheckpointIncomplete,
    IntegrityError,
    StorageFull,
)
from lpm.storage.manifest import ArchiveInfo, Manifest, utc_now
from lpm.storage.posix import PosixBackend
from lpm.storage.uri import ArtifactRef, CheckpointKey

log = logging.getLogger(__name__)

# A temp file older than this cannot belong to a live writer (a checkpoint's whole deadline is far shorter).
STALE_TEMP_AGE: Final = 6 * 3600.0


class _Tap:
    """Hashes and counts the chunks of an iterable as they pass (what a writer hands to the store)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = chunks
        self.sha = hashlib.sha256()
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.sha.update(chunk)
            self.size += len(chunk)
            yield chunk


class Readable(Protocol):
    """What an archive is read from: anything with a binary `read`."""

    def read(self, n: int = -1, /) -> bytes: ...


class _RawTap:
    """A reader that hashes and counts what passes through it (the kubelet's side of the pipeline)."""

    def __init__(self, inner: Readable) -> None:
        self.inner = inner
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data


def _is_temp(name: str) -> bool:
    return name.startswith(".") and TEMP_INFIX in name


class CheckpointStore:
    """Checkpoint archives in a repository (see the module docstring for the publishing protocol)."""

    def __init__(self, backend: Backend, node_name: str = "", keys: sealing.KeySource | None = None) -> None:
        self.backend = backend
        # With keys, archives are sealed (lpm.storage.sealing) with the active key as they are written, and
        # sealed archives are opened with the key their header names. Without, archives are stored in the clear.
        self.keys = keys
        # Goes into temp names: alphanumerics only, so it cannot smuggle a separator or the infix.
        self.node_tag = "".join(ch for ch in node_name.lower() if ch.isalnum())[:40] or "node"

    def close(self) -> None:
        self.backend.close()

    # -- writing --------------------------------------------------------------------------------------

    def _publish(self, path: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        """Writes `chunks` to a temp file beside `path`, syncs it and renames it over `path`."""
        directory, _, name = path.rpartition("/")
        temp = f"{directory}/.{name}{TEMP_INFIX}{self.node_tag}-{int(time.time())}-{secrets.token_hex(6)}"
        digest, size = hashlib.sha256(), 0
        try:
            stream = self.backend.open_write(temp)
            try:
                for chunk in chunks:
                    digest.update(chunk)
                    stream.write(chunk)
                    size += len(chunk)
                stream.sync()
            finally:
                stream.close()
            self.backend.rename(temp, path)
        except BaseException as exc:
            self._discard(temp)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(
                    f"no space left in {self.backend.describe()} while writing {path} ({size} bytes written, "
                    f"removed again): free space or grow the volume, then retry the checkpoint"
                ) from exc
            raise
        return size, digest.hexdigest()

    def _discard(self, temp: str) -> None:
        try:
            self.backend.remove(temp)
        except OSError:
            pass  # best effort: clean_temp on the next run removes it

    def write_artifact(
        self,
        ref: ArtifactRef,
        chunks: Iterable[bytes],
        info: ArchiveInfo | Callable[[], ArchiveInfo] | None = None,
    ) -> Manifest:
        """Publishes one container's archive, then its manifest. Not visible to readers before `complete`.

        `info` may be a callable, evaluated once the archive is durable (sizes and hashes of a stream are
        known only at its end).
        """
        started = time.monotonic()
        ring = self.keys.ring() if self.keys is not None else None
        payload = _Tap(chunks)
        stored = sealing.seal(payload, ring, ref.uri) if ring is not None else payload
        size, sha = self._publish(ref.archive_path, stored)
        details = (info() if callable(info) else info) or ArchiveInfo()
        details = dataclasses.replace(details, stored_at=utc_now(), store_seconds=round(time.monotonic() - started, 6))
        if ring is not None:
            details = dataclasses.replace(
                details,
                encryption=sealing.ALGORITHM,
                key_id=ring.active or "",
                payload_size=payload.size,
                payload_sha256=payload.sha.hexdigest(),
            )
        manifest = Manifest(ref.container, ref.uri, size, sha, details)
        self._publish(ref.manifest_path, [manifest.to_json()])
        return manifest

    def put_archive(
        self,
        ref: ArtifactRef,
        raw: Readable,
        *,
        zstd_level: int = 3,
        zstd_threads: int = 0,
        info: ArchiveInfo | None = None,
    ) -> Manifest:
        """Streams a kubelet checkpoint tar from `raw` through zstd into `ref`'s archive, then its manifest.

        `zstd_threads` 0 means one zstd worker per CPU; the compressor runs outside the GIL. Constant memory:
        `raw` is read in 1 MiB chunks and zstd's window and job buffers are bounded by the level.
        """
        tap = _RawTap(raw)
        cctx = zstandard.ZstdCompressor(
            level=zstd_level, threads=zstd_threads if zstd_threads > 0 else -1, write_checksum=True
        )
        stream = cctx.read_to_iter(tap, read_size=WRITE_CHUNK, write_size=WRITE_CHUNK)  # type: ignore[arg-type]
        base = info or ArchiveInfo()

        def details() -> ArchiveInfo:
            return dataclasses.replace(
                base,
                raw_size=tap.size,
                raw_sha256=tap.sha.hexdigest(),
                compression="zstd",
                zstd_level=zstd_level,
                zstd_threads=zstd_threads,
            )

        manifest = self.write_artifact(ref, stream, details)
        log.info(
            "stored %s: %d -> %d bytes (zstd %d) in %.2fs",
            ref.uri,
            manifest.info.raw_size,
            manifest.size,
            zstd_level,
            manifest.info.store_seconds,
        )
        return manifest

    def complete(self, key: CheckpointKey, containers: Iterable[str], *, verify_data: bool = True) -> list[Manifest]:
        """Publishes the completion marker once every container's archive matches its manifest.

        With `verify_data` every archive is re-read and its size and sha256 checked (IntegrityError otherwise):
        the marker promises readers that what they find is whole. Completing again is harmless.
        """
        names = sorted(set(containers))
        if not names:
            raise ValueError(f"checkpoint {key.relative_dir}: completing needs at least one container")
        manifests = []
        for name in names:
            ref = key.artifact(name)
            if not (self.backend.exists(ref.manifest_path) and self.backend.exists(ref.archive_path)):
                raise CheckpointIncomplete(f"checkpoint {key.relative_dir}: container {name} has no archive yet")
            manifest = Manifest.from_json(self._read_small(ref.manifest_path), ref.manifest_path)
            if (manifest.uri, manifest.container) != (ref.uri, ref.container):
                raise IntegrityError(f"manifest {ref.manifest_path} describes {manifest.uri}, not {ref.uri}")
            if verify_data:
                for _ in self._verified(ref, manifest):
                    pass
            manifests.append(manifest)
        marker = {
            "containers": names,
            "completed_at": utc_now(),
            "artifacts": {m.container: {"uri": m.uri, "size": m.size, "sha256": m.sha256} for m in manifests},
        }
        self._publish(key.marker_path, [json.dumps(marker, sort_keys=True, indent=2).encode() + b"\n"])
        return manifests

    # -- reading --------------------------------------------------------------------------------------

    def is_complete(self, key: CheckpointKey) -> bool:
        return self.backend.exists(key.marker_path)

    def manifest(self, ref: ArtifactRef) -> Manifest:
        if not self.is_complete(ref.key):
            raise CheckpointIncomplete(
                f"checkpoint {ref.key.relative_dir} in {self.backend.describe()} has no completion marker"
            )
        return Manifest.from_json(self._read_small(ref.manifest_path), ref.manifest_path)

    def _read_small(self, path: str) -> bytes:
        return b"".join(self._stream(path))

    def _stream(self, path: str) -> Iterator[bytes]:
        stream = self.backend.open_read(path)
        try:
            buffer = bytearray(READ_CHUNK)
            while n := stream.readinto(buffer):
                yield bytes(buffer[:n])
        finally:
            stream.close()

    def read_artifact(self, ref: ArtifactRef) -> Iterator[bytes]:
        """Streams a completed checkpoint's archive as its writer gave it (decrypted if it was sealed); raises
        IntegrityError if it does not match its manifest (at the end, or at the first tampered chunk)."""
        return self._payload(ref, self.manifest(ref))

    def _payload(self, ref: ArtifactRef, manifest: Manifest) -> Iterator[bytes]:
        if not manifest.info.encryption:
            yield from self._verified(ref, manifest)
            return
        if manifest.info.encryption != sealing.ALGORITHM:
            raise IntegrityError(f"{ref.uri}: unknown encryption {manifest.info.encryption!r}")
        if self.keys is None:
            raise sealing.KeyUnavailable(
                f"{ref.uri} is encrypted with key {manifest.info.key_id!r}, and this agent has no encryption keys "
                f"(--encryption-keys)"
            )
        # Every chunk is authenticated (AES-GCM, bound to its position, the header and the URI) and the stream's
        # end is flagged: that is stronger than the payload's sha256, which is recorded for image layers only.
        size = 0
        for chunk in sealing.unseal(self._verified(ref, manifest), self.keys, ref.uri, manifest.info.key_id):
            size += len(chunk)
            yield chunk
        if size != manifest.payload_size:
            raise IntegrityError(f"{ref.uri}: decrypted {size} bytes, the manifest says {manifest.payload_size}")

    def read_raw(self, ref: ArtifactRef) -> Iterator[bytes]:
        """The kubelet's original tar of a completed `put_archive` checkpoint, decompressed and verified."""
        manifest = self.manifest(ref)
        if manifest.info.compression != "zstd":
            yield from self._payload(ref, manifest)
            return
        dctx = zstandard.ZstdDecompressor().decompressobj()
        digest, size = hashlib.sha256(), 0
        for chunk in self._payload(ref, manifest):
            out = dctx.decompress(chunk)
            if out:
                digest.update(out)
                size += len(out)
                yield out
        if size != manifest.info.raw_size or digest.hexdigest() != manifest.info.raw_sha256:
            raise IntegrityError(f"{ref.uri}: decompressed stream does not match the manifest's raw size/sha256")

    def _verified(self, ref: ArtifactRef, manifest: Manifest) -> Iterator[bytes]:
        digest, size = hashlib.sha256(), 0
        for chunk in self._stream(ref.archive_path):
            digest.update(chunk)
            size += len(chunk)
            yield chunk
        if size != manifest.size or digest.hexdigest() != manifest.sha256:
            raise IntegrityError(
                f"{ref.uri} in {self.backend.describe()}: read {size} bytes with sha256 {digest.hexdigest()}, "
                f"manifest says {manifest.size} bytes with sha256 {manifest.sha256}"
            )

    def list_all(self) -> list[tuple[CheckpointKey, bool]]:
        """Every checkpoint directory in the repository, with whether it is complete (temp files left out)."""
        found = []
        for pod in sorted(self.backend.listdir("")):
            if _is_temp(pod) or pod.startswith("."):
                continue
            for name in sorted(self.backend.listdir(pod)):
                if _is_temp(name) or name.startswith("."):
                    continue
                try:
                    key = CheckpointKey(pod, name)
                except InvalidName:
                    log.warning("%s/%s in %s is not a checkpoint; left alone", pod, name, self.backend.describe())
                    continue
                found.append((key, self.is_complete(key)))
        return found

    def list_complete(self, pod_uid: str) -> list[CheckpointKey]:
        keys = []
        for name in sorted(self.backend.listdir(pod_uid)):
            if _is_temp(name):
                continue
            key = CheckpointKey(pod_uid, name)
            if self.is_complete(key):
                keys.append(key)
        return keys

    # -- cleanup --------------------------------------------------------------------------------------

    def clean_temp(self, key: CheckpointKey) -> list[str]:
        """Removes temp files a killed writer left in this checkpoint; returns their paths."""
        removed = []
        directories = [key.relative_dir] + [
            f"{key.relative_dir}/{n}" for n in self.backend.listdir(key.relative_dir) if not n.startswith(".")
        ]
        for directory in directories:
            for name in self.backend.listdir(directory):
                if _is_temp(name):
                    self.backend.remove(f"{directory}/{name}")
                    removed.append(f"{directory}/{name}")
        return removed

    def clean_stale_temps(self, max_age: float = STALE_TEMP_AGE, now: float | None = None) -> list[str]:
        """Agent start-up sweep of the whole repository: removes this node's temp files (its writers died with
        the previous run) and any node's older than `max_age`. Returns the removed paths."""
        now = time.time() if now is None else now
        removed = []
        for pod in self.backend.listdir(""):
            if _is_temp(pod):
                continue
            for ckpt in self.backend.listdir(pod):
                directory = f"{pod}/{ckpt}"
                for name in self.backend.listdir(directory):
                    inner = f"{directory}/{name}"
                    candidates = [inner] if _is_temp(name) else [f"{inner}/{n}" for n in self.backend.listdir(inner)]
                    for path in candidates:
                        if _is_temp(path.rpartition("/")[2]) and self._stale(path, now, max_age):
                            self.backend.remove(path)
                            removed.append(path)
        if removed:
            log.info("removed %d stale temp file(s) from %s", len(removed), self.backend.describe())
        return removed

    def _stale(self, path: str, now: float, max_age: float) -> bool:
        suffix = path.rpartition(TEMP_INFIX)[2]  # <node>-<unixtime>-<random>, or <random> (older writers)
        parts = suffix.split("-")
        if len(parts) != 3 or not parts[1].isdigit():
            return True  # not this format: written by an older agent, long gone
        node, started = parts[0], int(parts[1])
        return node == self.node_tag or now - started > max_age

    def delete(self, key: CheckpointKey) -> None:
        """Removes a checkpoint: the marker first, so readers stop seeing it before any file goes."""
        self.backend.remove(key.marker_path)
        for name in self.backend.listdir(key.relative_dir):
            child = f"{key.relative_dir}/{name}"
            for leaf in self.backend.listdir(child):
                self.backend.remove(f"{child}/{leaf}")
            self.backend.rmdir(child)
            self.backend.remove(child)
        self.backend.rmdir(key.relative_dir)


def open_backend(storage: str) -> Backend:
    """The backend for the agent's `--storage`: `nfs://host[:port]/export[/dir]` or a mounted path."""
    if storage.startswith("nfs://"):
        from lpm.storage.nfs import NfsBackend  # nfs-rs is only loaded when NFS is used

        return NfsBackend(storage)
    if "://" in storage:
        raise ValueError(f"storage {storage!r}: use a mounted path or nfs://host[:port]/export")
    return PosixBackend(storage)


def open_store(storage: str, node_name: str = "", keys: sealing.KeySource | None = None) -> CheckpointStore:
    return CheckpointStore(open_backend(storage), node_name, keys)
