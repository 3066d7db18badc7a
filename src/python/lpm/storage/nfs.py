"""Checkpoint-store backend that speaks NFSv3 itself (nfs-rs), for agents that cannot mount the volume.

Selected by `nfs://host[:port]/export[/subdir][?mountport=N&uid=N&gid=N]`. Only the primitives live here
(temp file, write, durable commit, rename, read stream, list, remove); the layout, manifest, completion
marker, sha256 verification and atomic publish are the store's (store.py), shared with the POSIX backend.

Failure handling, which a kernel mount would otherwise hide:
- The server unreachable or restarted (connection refused/reset, RPC timeout): reconnect and redo the
  operation, with bounded exponential backoff (RetryPolicy); then `NfsUnavailable` naming the server, the
  operation and the path. An nfs-rs client does not recover from a server restart by itself, so every retry
  uses a fresh client. Reads and writes are positional (`read_at`/`write_at` at the stream's own offset),
  so redoing one is idempotent; a rename whose reply was lost is checked against the namespace.
- A handle gone stale (NFS3ERR_STALE: another client renamed over or removed the file): reopen by name
  and continue at the same offset. Artifacts are immutable once published, and the store verifies sha256
  over the whole stream, so a replacement with different bytes is reported, never silently mixed in.
- A full export (NFS3ERR_NOSPC) is an `OSError(ENOSPC)` that says which export is full.
"""

from __future__ import annotations

import concurrent.futures
import errno
import functools
import io
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import nfs_rs

from lpm.storage.backend import DIR_MODE, FILE_MODE, StorageUnavailable

log = logging.getLogger(__name__)

SCHEME: Final = "nfs"
DEFAULT_PORT: Final = 2049
# Query options passed through to the client; anything else is rejected (a typo must not be ignored).
CLIENT_OPTIONS: Final = frozenset({"mountport", "uid", "gid", "noresvport", "version"})
WRITE_BATCH: Final = 32 << 20
T = TypeVar("T")


class NfsUnavailable(StorageUnavailable):
    """The NFS server could not be reached within the retry budget."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of operations that failed in transport (server down, restarting, unreachable)."""

    attempts: int = 6
    first_backoff: float = 0.2
    max_backoff: float = 3.0
    connect_timeout: float = 5.0
    operation_timeout: float = 15.0

    def backoffs(self) -> list[float]:
        delays, delay = [], self.first_backoff
        for _ in range(self.attempts - 1):
            delays.append(delay)
            delay = min(delay * 2, self.max_backoff)
        return delays


@dataclass(frozen=True)
class NfsLocation:
    """A parsed `nfs://` storage URL."""

    host: str
    port: int
    path: str  # the export, optionally followed by a subdirectory of it (the repository root)
    options: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, url: str) -> NfsLocation:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != SCHEME:
            raise ValueError(f"storage URL {url!r} must start with {SCHEME}://")
        if not parts.hostname:
            raise ValueError(f"storage URL {url!r} names no server: use {SCHEME}://host[:port]/export")
        path = parts.path.rstrip("/")
        if not path.startswith("/") or "/../" in f"{path}/" or "\x00" in path:
            raise ValueError(f"storage URL {url!r} names no export: use {SCHEME}://host[:port]/export")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise ValueError(f"storage URL {url!r} has an invalid port") from None
        options = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        for key, value in options:
            if key not in CLIENT_OPTIONS:
                raise ValueError(f"storage URL {url!r}: unknown option {key!r} (known: {sorted(CLIENT_OPTIONS)})")
            if key == "version" and value != "3":
                # NFSv3 only: nfs-rs's NFSv4 listdir fails against ganesha, and v3 is what was measured.
                raise ValueError(f"storage URL {url!r}: only version=3 is supported")
        return cls(parts.hostname, port, path, tuple((k, v) for k, v in options if k != "version"))

    @property
    def client_url(self) -> str:
        query = urllib.parse.urlencode([("version", "3"), *self.options])
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{SCHEME}://{host}:{self.port}{self.path}?{query}"

    def __str__(self) -> str:
        return f"{SCHEME}://{self.host}:{self.port}{self.path}"


def _is_transport(exc: BaseException) -> bool:
    return isinstance(
        exc,
        nfs_rs.NfsConnectionError
        | nfs_rs.NfsTimeoutError
        | nfs_rs.NfsRetryableError
        | nfs_rs.NfsRpcError
        | nfs_rs.NfsClosedResourceError
        # The connection broke after a request went out (a server killed mid-write): whether it was applied
        # is unknown. Redoing is safe here: reads and writes are positional, and renames are checked.
        | nfs_rs.NfsUncertainOutcomeError,
    ) or (isinstance(exc, nfs_rs.NfsError) and exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNREFUSED))


def _is_stale(exc: BaseException) -> bool:
    return isinstance(exc, nfs_rs.NfsError) and (
        exc.code_name in ("NFS3ERR_STALE", "NFS3ERR_BADHANDLE") or exc.errno == errno.ESTALE
    )


class NfsSession:
    """One server connection, replaced by a fresh one whenever the transport fails."""

    def __init__(self, location: NfsLocation, retry: RetryPolicy) -> None:
        self.location = location
        self.retry = retry
        self.generation = 0
        self._client: nfs_rs.Client | None = None

    @property
    def client(self) -> nfs_rs.Client:
        if self._client is None:
            self._client = nfs_rs.Client.connect(
                self.location.client_url,
                connect_timeout=self.retry.connect_timeout,
                operation_timeout=self.retry.operation_timeout,
            )
        return self._client

    def reset(self) -> None:
        client, self._client = self._client, None
        self.generation += 1
        if client is not None:
            try:
                client.close()
            except nfs_rs.NfsError as exc:  # the old connection is already broken: nothing to release
                log.debug("closing broken NFS client: %s", exc)

    def close(self) -> None:
        self.reset()

    def call(
        self, what: str, path: str, op: Callable[[nfs_rs.Client], T], on_retry: Callable[[], None] = lambda: None
    ) -> T:
        """Runs `op(client)`, reconnecting and redoing it after transport failures, within the retry budget.

        `on_retry` runs before each redo (a file reader reopens its handle there). NFS error statuses
        (not found, exists, no space, ...) are not transport failures and go straight to the caller.
        """
        delays = self.retry.backoffs()
        started = time.monotonic()
        for attempt in range(self.retry.attempts):
            try:
                return op(self.client)
            except nfs_rs.NfsError as exc:
                if exc.errno == errno.ENOSPC or exc.code_name == "NFS3ERR_NOSPC":
                    raise OSError(
                        errno.ENOSPC,
                        f"NFS export {self.location} is full (no space left on device) during {what}",
                        path,
                    ) from exc
                if not _is_transport(exc):
                    raise
                if attempt == len(delays):
                    raise NfsUnavailable(
                        f"NFS server {self.location.host}:{self.location.port} unavailable: {what} of {path!r} "
                        f"failed {self.retry.attempts} times over {time.monotonic() - started:.1f}s; last error: {exc}"
                    ) from exc
                log.warning("NFS %s of %s failed (%s); reconnecting in %.1fs", what, path, exc, delays[attempt])
                time.sleep(delays[attempt])
                self.reset()
                on_retry()
        raise AssertionError("unreachable")


def _write_at(data: memoryview, offset: int, file: nfs_rs.File) -> int:
    return file.write_at(data, offset)


class NfsFile(io.RawIOBase):
    """A file opened by name whose handle is renewed when it goes stale or the connection is replaced.

    I/O is positional at this object's own offset, so a redone read or write is idempotent.
    """

    def __init__(self, session: NfsSession, path: str, mode: str) -> None:
        super().__init__()
        self._session = session
        self._path = path
        self._mode = mode
        self._offset = 0  # read position
        self._written = 0  # bytes sent to the server
        self._pending = bytearray()  # written by the caller, not yet sent (see write)
        self._sender: concurrent.futures.ThreadPoolExecutor | None = None
        self._in_flight: concurrent.futures.Future[None] | None = None
        self._file: nfs_rs.File | None = None
        self._generation = -1
        self._handle()  # open now, so "not found" and "no space" surface at open time

    @property
    def name(self) -> str:
        return self._path

    def _handle(self) -> nfs_rs.File:
        if self._file is None or self._generation != self._session.generation:
            # A reopen after the first open must not truncate what was already written.
            mode = self._mode if self._generation < 0 else ("r+b" if self.writable() else "rb")
            self._file = self._session.call("open", self._path, lambda c: c.open(self._path, mode))
            self._generation = self._session.generation
        return self._file

    def _drop(self) -> None:
        self._file = None

    def _io(self, what: str, op: Callable[[nfs_rs.File], T]) -> T:
        for _ in range(3):
            try:
                return self._session.call(what, self._path, lambda _c: op(self._handle()), on_retry=self._drop)
            except nfs_rs.NfsError as exc:
                if not _is_stale(exc):
                    raise
                log.info("NFS handle of %s went stale (%s); reopening by name", self._path, exc)
                self._drop()
        raise OSError(errno.ESTALE, f"NFS handle of {self._path!r} kept going stale on reopen", self._path)

    def readable(self) -> bool:
        return "r" in self._mode or "+" in self._mode

    def writable(self) -> bool:
        return "w" in self._mode or "a" in self._mode or "+" in self._mode

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._io("read", lambda f: f.readinto_at(buffer, self._offset))
        self._offset += n
        return n

    def tell(self) -> int:
        return self._offset + self._written + len(self._pending)

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        # Batched: nfs-rs commits every write_at call before returning (UNSTABLE WRITEs, then COMMIT), so
        # the 1 MiB chunks a compressor yields would each cost a COMMIT round trip. One call per WRITE_BATCH
        # keeps its 8 concurrent 4 MiB WRITEs busy; sync() is the durability point, as fsync is on POSIX.
        # A full batch goes out on a background thread while the caller produces (and hashes) the next one;
        # its error surfaces at the next write or at sync.
        self._pending += data
        if len(self._pending) >= WRITE_BATCH:
            self._wait_in_flight()
            batch, offset = self._pending, self._written
            self._pending = bytearray()
            self._written += len(batch)
            if self._sender is None:
                self._sender = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nfs-write")
            self._in_flight = self._sender.submit(self._send, batch, offset)
        return len(data)

    def _send(self, batch: bytearray, offset: int) -> None:
        with memoryview(batch) as view:
            done = 0
            while done < len(view):
                done += self._io("write", functools.partial(_write_at, view[done:], offset + done))

    def _wait_in_flight(self) -> None:
        future, self._in_flight = self._in_flight, None
        if future is not None:
            future.result()

    def sync(self) -> None:
        """Makes everything written durable: sends what is batched (nfs-rs commits before returning)."""
        self._wait_in_flight()
        batch, self._pending = self._pending, bytearray()
        self._send(batch, self._written)
        self._written += len(batch)
        self._io("flush", lambda f: f.flush())

    def close(self) -> None:
        """Releases the handle. A batch not yet synced is dropped, as a crash would drop unsynced data."""
        self._pending = bytearray()
        if self._sender is not None:
            self._sender.shutdown(wait=True)  # let a batch in flight settle before the handle goes
            self._sender = None
        if self._file is not None and not self.closed:
            file, self._file = self._file, None
            try:
                file.close()
            except nfs_rs.NfsError as exc:
                # Writes were already committed; a close that fails because the server restarted loses nothing.
                if not (_is_transport(exc) or _is_stale(exc) or isinstance(exc, nfs_rs.NfsFileCloseError)):
                    raise
                log.debug("closing NFS file %s: %s", self._path, exc)
        super().close()


class NfsBackend:
    """`store.Backend` over NFSv3: the repository root is the URL's export (plus optional subdirectory)."""

    def __init__(self, url: str, retry: RetryPolicy | None = None) -> None:
        self.location = NfsLocation.parse(url)
        self.session = NfsSession(self.location, retry or RetryPolicy())

    def describe(self) -> str:
        return str(self.location)

    def _call(self, what: str, path: str, op: Callable[[nfs_rs.Client], T]) -> T:
        return self.session.call(what, path, op)

    def open_write(self, path: str) -> NfsFile:
        parent = path.rpartition("/")[0]
        if parent:
            self._call("mkdir", parent, lambda c: c.mkdir(parent, DIR_MODE, parents=True, exist_ok=True))
        stream = NfsFile(self.session, path, "wb")
        # Checkpoints hold process memory: same modes as the POSIX backend (the server applies no umask here).
        self._call("chmod", path, lambda c: c.chmod(path, FILE_MODE))
        return stream

    def open_read(self, path: str) -> NfsFile:
        return NfsFile(self.session, path, "rb")

    def rename(self, source: str, destination: str) -> None:
        def rename(c: nfs_rs.Client) -> None:
            try:
                c.rename(source, destination)
            except nfs_rs.NfsNotFoundError:
                # A redo after a lost reply: the first attempt already moved it.
                if self.session.generation and c.exists(destination) and not c.exists(source):
                    return
                raise

        self._call("rename", source, rename)

    def exists(self, path: str) -> bool:
        return self._call("stat", path, lambda c: c.exists(path))

    def listdir(self, path: str) -> list[str]:
        def listdir(c: nfs_rs.Client) -> list[str]:
            try:
                return c.listdir(path)
            except (nfs_rs.NfsNotFoundError, nfs_rs.NfsNotADirectoryError):
                return []

        return self._call("listdir", path, listdir)

    def remove(self, path: str) -> None:
        def remove(c: nfs_rs.Client) -> None:
            try:
                c.remove(path, missing_ok=True)
            except nfs_rs.NfsIsADirectoryError:
                pass

        self._call("remove", path, remove)

    def rmdir(self, path: str) -> None:
        def rmdir(c: nfs_rs.Client) -> None:
            try:
                c.rmdir(path)
            except (nfs_rs.NfsNotFoundError, nfs_rs.NfsNotADirectoryError, nfs_rs.NfsOSError):
                pass

        self._call("rmdir", path, rmdir)

    def close(self) -> None:
        self.session.close()
