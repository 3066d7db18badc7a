"""A checkpoint repository on a mounted filesystem (the kubelet-mounted PVC, or a local directory)."""

from __future__ import annotations

import os
import pathlib

from lpm.storage.backend import DIR_MODE, FILE_MODE, ReadStream, StorageError, WriteStream
from lpm.storage.uri import resolve_under


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
