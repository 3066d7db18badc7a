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
next run.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Protocol

from lpm.storage.uri import (
    ARCHIVE_NAME,
    COMPLETE_MARKER,
    MANIFEST_NAME,
    ArtifactRef,
    CheckpointKey,
    resolve_under,
)

TEMP_INFIX: Final = ".tmp-"
READ_CHUNK: Final = 8 << 20
MANIFEST_VERSION: Final = 1


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


@dataclass(frozen=True)
class Manifest:
    container: str
    uri: str
    size: int
    sha256: str

    def to_json(self) -> bytes:
        return json.dumps({"version": MANIFEST_VERSION, **self.__dict__}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        try:
            raw = json.loads(data)
            return cls(str(raw["container"]), str(raw["uri"]), int(raw["size"]), str(raw["sha256"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"manifest {where} is unreadable: {exc}") from None


def _is_temp(name: str) -> bool:
    return name.startswith(".") and TEMP_INFIX in name


class CheckpointStore:
    """Checkpoint archives in a repository (see the module docstring for the publishing protocol)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def close(self) -> None:
        self.backend.close()

    # -- writing --------------------------------------------------------------------------------------

    def _publish(self, path: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        """Writes `chunks` to a temp file beside `path`, syncs it and renames it over `path`."""
        directory, _, name = path.rpartition("/")
        temp = f"{directory}/.{name}{TEMP_INFIX}{secrets.token_hex(6)}"
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

    def write_artifact(self, ref: ArtifactRef, chunks: Iterable[bytes]) -> Manifest:
        """Publishes one container's archive, then its manifest. Not visible to readers before `complete`."""
        size, sha = self._publish(ref.archive_path, chunks)
        manifest = Manifest(ref.container, ref.uri, size, sha)
        self._publish(ref.manifest_path, [manifest.to_json()])
        return manifest

    def complete(self, key: CheckpointKey, containers: Iterable[str]) -> None:
        """Publishes the completion marker once every container's archive and manifest are in place."""
        names = sorted(containers)
        for name in names:
            ref = key.artifact(name)
            if not (self.backend.exists(ref.manifest_path) and self.backend.exists(ref.archive_path)):
                raise CheckpointIncomplete(f"checkpoint {key.relative_dir}: container {name} has no archive yet")
        self._publish(key.marker_path, [json.dumps({"containers": names}).encode()])

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
        manifest = self.manifest(ref)
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
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close()

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
        return resolve_under(self.root, relative)

    def open_write(self, path: str) -> WriteStream:
        target = self._path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        return _PosixWriter(target)

    def open_read(self, path: str) -> ReadStream:
        return open(self._path(path), "rb", buffering=0)  # noqa: SIM115 - the caller closes it

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


def open_store(storage: str) -> CheckpointStore:
    return CheckpointStore(open_backend(storage))
