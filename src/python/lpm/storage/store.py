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
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import pathlib
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO, Final, Protocol

import zstandard

from lpm.storage.uri import (
    ArtifactRef,
    CheckpointKey,
    resolve_under,
)

log = logging.getLogger(__name__)

TEMP_INFIX: Final = ".tmp-"
READ_CHUNK: Final = 8 << 20
WRITE_CHUNK: Final = 1 << 20
MANIFEST_VERSION: Final = 1
FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700
# A temp file older than this cannot belong to a live writer (a checkpoint's whole deadline is far shorter).
STALE_TEMP_AGE: Final = 6 * 3600.0


class StorageError(Exception):
    """A checkpoint store operation failed; the message says what to do about it."""


class CheckpointIncomplete(StorageError):
    """The checkpoint has no completion marker (still being written, or its writer died)."""


class IntegrityError(StorageError):
    """Stored bytes do not match their manifest."""


class StorageFull(StorageError):
    """The repository's volume is full; nothing partial was left behind."""


class WriteStream(Protocol):
    def write(self, data: bytes | bytearray | memoryview) -> int: ...

    def sync(self) -> None:
        """Makes everything written so far durable (fsync)."""

    def close(self) -> None: ...


class ReadStream(Protocol):
    def readinto(self, buffer: bytearray | memoryview) -> int: ...

    def close(self) -> None: ...


class Backend(Protocol):
    """File primitives below a repository root. Paths are relative, `/`-separated, already validated."""

    def describe(self) -> str:
        """Where the repository is, for error messages."""

    def open_write(self, path: str) -> WriteStream:
        """Creates (or truncates) `path`, creating its parent directories."""

    def open_read(self, path: str) -> ReadStream:
        """Raises FileNotFoundError if absent."""

    def rename(self, source: str, destination: str) -> None:
        """Atomically replaces `destination` with `source`."""

    def exists(self, path: str) -> bool: ...

    def listdir(self, path: str) -> list[str]:
        """Names in directory `path`; [] if it does not exist."""

    def remove(self, path: str) -> None:
        """Removes a file; no error if it is already gone."""

    def rmdir(self, path: str) -> None:
        """Removes an empty directory; no error if it is gone or not empty."""

    def close(self) -> None: ...


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class ArchiveInfo:
    """What a writer knows about an archive besides its bytes; recorded in its manifest."""

    raw_size: int = 0
    raw_sha256: str = ""  # hex sha256 of the kubelet's uncompressed tar stream
    compression: str = ""  # "zstd", or "" for bytes stored as given
    zstd_level: int = 0
    zstd_threads: int = 0
    pod_namespace: str = ""
    pod_name: str = ""
    node_name: str = ""
    source_archive: str = ""  # the kubelet's file name, for forensics
    checkpointed_at: str = ""
    stored_at: str = ""
    store_seconds: float = 0.0
    criu_version: str = ""
    runtime_name: str = ""
    runtime_version: str = ""


@dataclass(frozen=True)
class Manifest:
    container: str
    uri: str
    size: int  # bytes stored (compressed)
    sha256: str  # hex sha256 of the stored bytes
    info: ArchiveInfo = ArchiveInfo()

    def to_json(self) -> bytes:
        body = {
            "version": MANIFEST_VERSION,
            "container": self.container,
            "uri": self.uri,
            "size": self.size,
            "sha256": self.sha256,
            **dataclasses.asdict(self.info),
        }
        return (json.dumps(body, sort_keys=True, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        try:
            raw = json.loads(data)
            known = {f.name for f in dataclasses.fields(ArchiveInfo)}
            # Keys a newer agent added are ignored, so older readers keep working.
            info = ArchiveInfo(**{k: v for k, v in raw.items() if k in known})
            return cls(str(raw["container"]), str(raw["uri"]), int(raw["size"]), str(raw["sha256"]), info)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"manifest {where} is unreadable: {exc}") from None


class _RawTap:
    """A reader that hashes and counts what passes through it (the kubelet's side of the pipeline)."""

    def __init__(self, inner: BinaryIO) -> None:
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

    def __init__(self, backend: Backend, node_name: str = "") -> None:
        self.backend = backend
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
        size, sha = self._publish(ref.archive_path, chunks)
        details = (info() if callable(info) else info) or ArchiveInfo()
        details = dataclasses.replace(details, stored_at=utc_now(), store_seconds=round(time.monotonic() - started, 6))
        manifest = Manifest(ref.container, ref.uri, size, sha, details)
        self._publish(ref.manifest_path, [manifest.to_json()])
        return manifest

    def put_archive(
        self,
        ref: ArtifactRef,
        raw: BinaryIO,
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
        """Streams a completed checkpoint's archive; raises IntegrityError at the end if it does not match."""
        return self._verified(ref, self.manifest(ref))

    def read_raw(self, ref: ArtifactRef) -> Iterator[bytes]:
        """The kubelet's original tar of a completed `put_archive` checkpoint, decompressed and verified."""
        manifest = self.manifest(ref)
        if manifest.info.compression != "zstd":
            yield from self._verified(ref, manifest)
            return
        dctx = zstandard.ZstdDecompressor().decompressobj()
        digest, size = hashlib.sha256(), 0
        for chunk in self._verified(ref, manifest):
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


class _PosixWriter:
    def __init__(self, path: pathlib.Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        os.fchmod(fd, FILE_MODE)  # the mode above is filtered by the umask, and an existing file keeps its own
        self._file = open(fd, "wb")  # - closed by close()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self._file.write(data)

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


class PosixBackend:
    """A repository on a mounted filesystem (the kubelet-mounted PVC, or a local directory)."""

    def __init__(self, root: pathlib.Path | str) -> None:
        self.root = pathlib.Path(root)

    def describe(self) -> str:
        return str(self.root)

    def _path(self, relative: str) -> pathlib.Path:
        return self.root if relative == "" else resolve_under(self.root, relative)

    def _makedirs(self, directory: pathlib.Path) -> None:
        if not self.root.is_dir():
            # Never create the root: a missing volume mount must not turn into writes to the container's disk.
            raise StorageError(f"checkpoint repository {self.root} does not exist (is the volume mounted?)")
        missing = []
        while directory != self.root and not directory.is_dir():
            missing.append(directory)
            directory = directory.parent
        for d in reversed(missing):
            try:
                d.mkdir(mode=DIR_MODE)
            except FileExistsError:
                continue  # made concurrently by another writer
            os.chmod(d, DIR_MODE)  # mkdir's mode is filtered by the umask

    def open_write(self, path: str) -> WriteStream:
        target = self._path(path)
        self._makedirs(target.parent)
        return _PosixWriter(target)

    def open_read(self, path: str) -> ReadStream:
        return open(self._path(path), "rb", buffering=0)  # - the caller closes it

    def rename(self, source: str, destination: str) -> None:
        target = self._path(destination)
        os.replace(self._path(source), target)
        # The rename itself must survive a crash too: sync the directory entry.
        fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def exists(self, path: str) -> bool:
        return self._path(path).exists()

    def listdir(self, path: str) -> list[str]:
        try:
            return os.listdir(self._path(path))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def remove(self, path: str) -> None:
        try:
            self._path(path).unlink()
        except (FileNotFoundError, IsADirectoryError):
            pass

    def rmdir(self, path: str) -> None:
        try:
            self._path(path).rmdir()
        except (FileNotFoundError, NotADirectoryError, OSError):
            pass

    def close(self) -> None:
        pass


def open_backend(storage: str) -> Backend:
    """The backend for the agent's `--storage`: `nfs://host[:port]/export[/dir]` or a mounted path."""
    if storage.startswith("nfs://"):
        from lpm.storage.nfs import NfsBackend  # nfs-rs is only loaded when NFS is used

        return NfsBackend(storage)
    if "://" in storage:
        raise ValueError(f"storage {storage!r}: use a mounted path or nfs://host[:port]/export")
    return PosixBackend(storage)


def open_store(storage: str, node_name: str = "") -> CheckpointStore:
    return CheckpointStore(open_backend(storage), node_name)
