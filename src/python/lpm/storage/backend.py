"""What a checkpoint repository is made of: the file primitives a backend provides (`Backend`), the errors
every layer above raises, and the constants they share (chunk sizes, temp-name infix, file modes).

Backends: `lpm.storage.posix.PosixBackend` (a mounted volume) and `lpm.storage.nfs.NfsBackend` (NFSv3 spoken
by the agent itself). The layout and publishing protocol above them are `lpm.storage.store`'s.
"""

from __future__ import annotations

from typing import Final, Protocol

TEMP_INFIX: Final = ".tmp-"
READ_CHUNK: Final = 8 << 20
WRITE_CHUNK: Final = 1 << 20
FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700


class StorageError(Exception):
    """A checkpoint store operation failed; the message says what to do about it."""


class CheckpointIncomplete(StorageError):
    """The checkpoint has no completion marker (still being written, or its writer died)."""


class IntegrityError(StorageError):
    """Stored bytes do not match their manifest."""


class StorageUnavailable(StorageError, ConnectionError):
    """The repository's server could not be reached within the backend's own retry budget."""


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
