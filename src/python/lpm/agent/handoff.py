"""The live engine's hand-off with lpm-runc on the target node: a directory per checkpoint, one per container.

lpm-runc (src/go/lpm-runc) runs as the runtime of the replacement pod's containers. For a container whose pod
carries `lpm.my.domain/restore-checkpoint: <checkpoint id>` it waits in `runc create` until the agent staged
that container's checkpoint here, then restores it with `runc restore`. The protocol, all files written
atomically (temporary name, then rename):

    <root>/<checkpoint id>/abort                 agent: the migration rolled back (text reason). Every waiting or
                                                 later lpm-runc fails at once; nothing is restored from this ID.
    <root>/<checkpoint id>/<container>/waiting   lpm-runc: the container waits for its checkpoint (JSON)
    <root>/<checkpoint id>/<container>/ready     agent: staged and verified (JSON: images, rootfs_diff,
                                                 deleted_files, volumes: the emptyDir volumes' contents and where
                                                 the container mounts each); written only after the whole archive
                                                 was read and its checksum matched, so a partial transfer is never
                                                 restored; post-copy adds lazy_pages {address, port, tls}: the
                                                 source's CRIU page server, and CRIU's TLS files (lpm.agent.pages)
    <root>/<checkpoint id>/<container>/lazy-pages.exit  lpm-runc: post-copy, how the page stream ended ({"code":
                                                 0 every page arrived, else broken; "killed": the restored process
                                                 it killed then}); the staged images are kept until it exists
    <root>/<checkpoint id>/volume-<name>         lpm-runc: the first restored container that mounts emptyDir
                                                 <name> claimed it and filled the replacement's volume
    <root>/<checkpoint id>/<container>/restored  lpm-runc: `runc restore` succeeded (a later restart of the
                                                 container starts fresh, like any restart)
    <root>/<checkpoint id>/<container>/failed    lpm-runc: `runc restore` failed (never tried again), with
                                                 CRIU's log kept beside it in restore-failed.log

The staged data is process memory: directories are 0700, files 0600, and the images are removed once the
container was restored or the restore was aborted. They are staged in memory when the archive fits there
(`<memory>/<checkpoint id>/<container>/staged`, see lpm.agent.scratch), else beside the markers
(`<root>/<checkpoint id>/<container>/staged`); `ready` names the directory either way.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lpm.agent.scratch import Scratch

log = logging.getLogger(__name__)

DEFAULT_ROOT = "/var/lib/lpm/restore"
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,252}$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# What a kubelet checkpoint archive holds that the restore needs (the rest is for other tools).
_IMAGES_PREFIX = "checkpoint/"
_ROOTFS_DIFF = "rootfs-diff.tar"
_DELETED_FILES = "deleted.files"
_VOLUMES_PREFIX = "volumes/"
_VOLUMES = "volumes.json"
LAZY_PAGES_EXIT = "lazy-pages.exit"  # lpm-runc's supervisor: how the post-copy restore's page stream ended
# A PAX header key: the member is a part of a CRIU image that starts at this offset (lpm.agent.dump.DumpStream
# sends page files while CRIU writes them). Parts of one file come in order, each where the previous ended.
PART_OFFSET = "LPM.offset"
_VOLUME_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a pod volume's name (DNS-1123 label)


class HandoffError(Exception):
    """The checkpoint cannot be staged (aborted, malformed archive, bad names)."""


class Aborted(HandoffError):
    pass


class State(enum.Enum):
    ABSENT = "ABSENT"  # lpm-runc has not asked for it (yet)
    WAITING = "WAITING"  # lpm-runc waits for it
    STAGED = "STAGED"  # ready for lpm-runc, not restored yet
    RESTORED = "RESTORED"  # lpm-runc restored it


@dataclass(frozen=True)
class ContainerState:
    container_name: str
    state: State
    container_id: str = ""
    waiting_since: str = ""
    pages: str = "NONE"  # post-copy: STREAMING, COMPLETE or BROKEN (agent.proto PageStream)
    pages_message: str = ""


@dataclass(frozen=True)
class Staged:
    container_name: str
    image_bytes: int
    rootfs_diff_bytes: int
    seconds: float


def _page_stream(d: Path) -> tuple[str, str]:
    """A post-copy restore's page stream, from lpm-runc's files: its supervisor writes `lazy-pages.exit`
    ({"code", "killed", ...}) once the daemon exited; `ready` names `lazy_pages` for every post-copy restore."""
    try:
        done = json.loads((d / LAZY_PAGES_EXIT).read_bytes())
    except FileNotFoundError:
        try:
            lazy = "lazy_pages" in json.loads((d / "ready").read_bytes())
        except (FileNotFoundError, ValueError):
            lazy = False
        return ("STREAMING" if lazy else "NONE"), ""
    except ValueError:
        return "BROKEN", f"{LAZY_PAGES_EXIT} does not parse"
    code = done.get("code")
    if code == 0:
        return "COMPLETE", ""
    killed = done.get("killed") or 0
    return "BROKEN", (
        f"criu lazy-pages exited with {code}; "
        + (f"lpm-runc killed the restored process (pid {killed})" if killed else "no restored process was running")
    )


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def _check(checkpoint_id: str, container: str | None = None) -> None:
    if not _ID.match(checkpoint_id):
        raise HandoffError(f"checkpoint id {checkpoint_id!r} is not a valid name")
    if container is not None and not _NAME.match(container):
        raise HandoffError(f"container name {container!r} is not a DNS-1123 label")


class Handoff:
    def __init__(self, root: Path, memory: Path | None = None, scratch: Scratch | None = None) -> None:
        self.root = root
        # Where staged images go: memory if they fit, else root. (A memory directory that is the root itself
        # would have release() delete the markers with the data.)
        self.scratch = scratch or Scratch(memory if memory != root else None, root)

    def usable(self) -> str:
        """Empty when the hand-off directory can be used; otherwise why not."""
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            # A probe file of its own: GetCapabilities runs concurrently (a drain probes for every pod at once),
            # and a shared name was unlinked by one call under another, which then reported the directory
            # unwritable and the node unable to restore live.
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe-"):
                pass
        except OSError as exc:
            return f"the restore hand-off directory {self.root} is not writable: {exc.strerror}"
        return ""

    def _dir(self, checkpoint_id: str, container: str | None = None) -> Path:
        _check(checkpoint_id, container)
        base = self.root / checkpoint_id
        return base / container if container else base

    def aborted(self, checkpoint_id: str) -> str | None:
        try:
            return (self._dir(checkpoint_id) / "abort").read_text(errors="replace")
        except FileNotFoundError:
            return None

    def states(self, checkpoint_id: str, containers: Iterable[str]) -> list[ContainerState]:
        out = []
        for name in containers:
            d = self._dir(checkpoint_id, name)
            waiting: dict[str, object] = {}
            try:
                waiting = json.loads((d / "waiting").read_bytes())
            except (FileNotFoundError, ValueError):
                pass
            pages, pages_message = _page_stream(d)
            if (d / "restored").exists():
                state = State.RESTORED
                if pages != "STREAMING":  # post-copy: the daemon reads the images until the stream ends
                    self._drop_staged(checkpoint_id, name)  # lpm-runc does, right after its restore; the backstop
            elif (d / "ready").exists():
                state = State.STAGED
            elif waiting:
                state = State.WAITING
            else:
                state = State.ABSENT
            if state is not State.RESTORED:
                pages, pages_message = "NONE", ""
            out.append(
                ContainerState(
                    name,
                    state,
                    str(waiting.get("container_id", "")),
                    str(waiting.get("since", "")),
                    pages,
                    pages_message,
                )
            )
        return out

    def stage(
        self,
        checkpoint_id: str,
        container: str,
        archive: Iterator[bytes | memoryview],
        size_bytes: int = 0,
        lazy_pages: dict[str, object] | None = None,
    ) -> Staged:
        """Lay out one container's checkpoint archive (the kubelet's tar, as a verified chunk stream) for
        lpm-runc. `archive` raises at its end if the bytes did not match their manifest: `ready` is written only
        after that end was reached. `size_bytes`: the archive's size if known, which decides whether it is staged
        in memory. `lazy_pages`: post-copy, where lpm-runc's `criu lazy-pages` gets the memory ({address, port,
        tls}: lpm.agent.pages). Idempotent: an already staged or restored container is left as it is."""
        started = time.monotonic()
        d = self._dir(checkpoint_id, container)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.aborted(checkpoint_id) is not None:
            raise Aborted(f"checkpoint {checkpoint_id} was aborted: {self.aborted(checkpoint_id)}")
        if (d / "ready").exists() or (d / "restored").exists():
            return Staged(container, 0, 0, 0.0)
        for root in self.scratch.roots():
            # Left by an agent killed mid-transfer (only one stager at a time), or staged without its `ready`.
            for stale in (root / checkpoint_id / container).glob(".staging-*"):
                shutil.rmtree(stale, ignore_errors=True)
            shutil.rmtree(root / checkpoint_id / container / "staged", ignore_errors=True)
        # This agent writes the staged images itself: in memory, they count against its memory limit.
        what = f"checkpoint {checkpoint_id}/{container}"
        tier = self.scratch.pick(size_bytes, what, charged_bytes=size_bytes) / checkpoint_id / container
        tier.mkdir(mode=0o700, parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".staging-", dir=tier))
        try:
            images = work / "images"
            images.mkdir(mode=0o700)
            volumes = work / "volumes"
            volumes.mkdir(mode=0o700)
            image_bytes, diff_bytes, deleted, mounted = _extract(archive, images, work / _ROOTFS_DIFF, volumes)
            final = tier / "staged"
            os.rename(work, final)
        except OSError as exc:
            shutil.rmtree(work, ignore_errors=True)
            if (why := self.aborted(checkpoint_id)) is not None:
                # A rollback during the transfer removed what was being staged: say that, not the missing file.
                raise Aborted(f"checkpoint {checkpoint_id} was aborted while it was staged: {why}") from exc
            raise
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        if self.aborted(checkpoint_id) is not None:  # a rollback raced the transfer: never hand it over
            shutil.rmtree(final, ignore_errors=True)
            raise Aborted(f"checkpoint {checkpoint_id} was aborted while it was staged")
        ready: dict[str, object] = {
            "images": str(final / "images"),
            "rootfs_diff": str(final / _ROOTFS_DIFF) if diff_bytes else "",
            "deleted_files": deleted,
            # emptyDir volumes lpm-runc fills before the restore: where the container mounts each, and its tar.
            "volumes": [
                {"destination": point, "name": name, "tar": str(final / "volumes" / f"{name}.tar")}
                for point, name in sorted(mounted.items())
            ],
        }
        if lazy_pages is not None:
            ready["lazy_pages"] = lazy_pages
        _write_atomic(d / "ready", json.dumps(ready).encode())
        seconds = time.monotonic() - started
        log.info(
            "staged %s/%s for lpm-runc in %s: %d bytes of images in %.2fs",
            checkpoint_id,
            container,
            final,
            image_bytes,
            seconds,
        )
        return Staged(container, image_bytes, diff_bytes, seconds)

    def wait_restore(self, checkpoint_id: str, container: str, timeout: float, poll: float = 0.005) -> str:
        """After `stage`: if an lpm-runc waits for this container, wait (at most `timeout` seconds) until it
        restored it ("restored"), its restore failed ("failed") or the checkpoint was aborted ("aborted"); else
        "not waiting" at once (a container created later, e.g. the next one of the pod, is not waited for), or
        "timeout". The Live engine's source starts the durable copy when the push returns: so that it does not
        take CPU from the restore, which the frozen workload waits for (on one machine, or a node shared with
        the source's store traffic), the push returns once the restore is over."""
        d = self._dir(checkpoint_id, container)
        if not (d / "waiting").exists():
            return "not waiting"
        deadline = time.monotonic() + timeout
        while True:
            if (d / "restored").exists():
                return "restored"
            if (d / "failed").exists():
                return "failed"
            if self.aborted(checkpoint_id) is not None:
                return "aborted"
            if time.monotonic() >= deadline:
                return "timeout"
            time.sleep(poll)

    def _drop_staged(self, checkpoint_id: str, container: str) -> None:
        shutil.rmtree(self._dir(checkpoint_id, container) / "staged", ignore_errors=True)
        if self.scratch.memory is not None:
            shutil.rmtree(self.scratch.memory / checkpoint_id / container, ignore_errors=True)
            try:
                (self.scratch.memory / checkpoint_id).rmdir()  # once the pod's last container is restored
            except OSError:
                pass

    def restore_log(self, checkpoint_id: str, container: str, limit: int = 1 << 20) -> str | None:
        """CRIU's log of lpm-runc's failed restore of this container: the copy lpm-runc kept when the restore
        failed (`restore-failed.log`), else runc's work directory's (which a later try would reuse)."""
        d = self._dir(checkpoint_id, container)
        for path in (d / "restore-failed.log", d / "work" / "restore.log"):
            try:
                with open(path, "rb") as f:
                    return f.read(limit).decode(errors="replace")
            except FileNotFoundError:
                continue
        return None

    def abort(self, checkpoint_id: str, reason: str) -> None:
        """Final: a waiting lpm-runc fails, none restores later; staged data of containers not restored goes."""
        base = self._dir(checkpoint_id)
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not (base / "abort").exists():
            _write_atomic(base / "abort", reason.encode()[:4096])
        self.release(checkpoint_id)

    def release(self, checkpoint_id: str) -> None:
        """Removes staged images (process memory). Keeps the small markers, so a restarted container of a
        restored pod starts fresh and an aborted ID stays aborted."""
        base = self._dir(checkpoint_id)
        if self.scratch.memory is not None:
            shutil.rmtree(self.scratch.memory / checkpoint_id, ignore_errors=True)  # holds nothing but staged data
        if not base.is_dir():
            return
        for child in base.iterdir():
            if child.is_dir():
                shutil.rmtree(child / "staged", ignore_errors=True)


def _extract(
    archive: Iterator[bytes | memoryview], images: Path, rootfs_diff: Path, volumes: Path
) -> tuple[int, int, list[str], dict[str, str]]:
    """The kubelet archive's `checkpoint/*` files into `images`, `rootfs-diff.tar` to `rootfs_diff`, the
    `deleted.files` list, and (the agent's own dump) the emptyDir volumes' tars into `volumes` with their mount
    points from `volumes.json`. Only regular files are written, each 0600; a member with a path that leaves its
    directory is refused. Reads `archive` to its end (its integrity check runs there).

    tarfile reads every header (ustar, PAX, GNU), through a forward-only reader of the chunks (ForwardReader); a
    member's data goes from the chunks to its file without passing through tarfile. tarfile's own stream mode
    copied each byte four to five times in Python (its buffer, the joins and slices of each read, the
    extracted file object's buffer): staging 256 MiB took 0.67 s more than receiving it, half of the whole
    node-to-node push (tests/bench/agent/bench_push.py)."""
    reader = ForwardReader(archive)
    image_bytes = diff_bytes = 0
    deleted: list[str] = []
    mounted: dict[str, str] = {}
    with tarfile.TarFile(fileobj=reader, mode="r") as tar:  # type: ignore[arg-type]
        while (member := tar.next()) is not None:
            name = member.name.removeprefix("./")
            part = member.pax_headers.get(PART_OFFSET)
            if part is not None and not (name.startswith(_IMAGES_PREFIX) and member.isfile()):
                raise HandoffError(f"checkpoint archive member {member.name!r} is a part, but not of a CRIU image")
            if name.startswith(_IMAGES_PREFIX) and member.isfile():
                leaf = name[len(_IMAGES_PREFIX) :]
                if not leaf or "/" in leaf or leaf in (".", ".."):
                    raise HandoffError(f"checkpoint archive member {member.name!r} is not a flat CRIU image")
                image_bytes += _write(reader, member, images / leaf, _offset(member, part))
            elif name == _ROOTFS_DIFF and member.isfile():
                diff_bytes += _write(reader, member, rootfs_diff)
            elif name == _DELETED_FILES and member.isfile():
                data = json.loads(reader.read_exactly(member.size))
                if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
                    raise HandoffError("deleted.files in the checkpoint archive is not a list of paths")
                deleted = data
            elif name.startswith(_VOLUMES_PREFIX) and name.endswith(".tar") and member.isfile():
                volume = name[len(_VOLUMES_PREFIX) : -len(".tar")]
                if not _VOLUME_NAME.fullmatch(volume):
                    raise HandoffError(f"checkpoint archive member {member.name!r} is not a volume's tar")
                diff_bytes += _write(reader, member, volumes / f"{volume}.tar")
            elif name == _VOLUMES and member.isfile():
                data = json.loads(reader.read_exactly(member.size))
                if not isinstance(data, dict) or not all(
                    isinstance(k, str) and k.startswith("/") and isinstance(v, str) and _VOLUME_NAME.fullmatch(v)
                    for k, v in data.items()
                ):
                    raise HandoffError("volumes.json in the checkpoint archive is not {mount point: volume}")
                mounted = data
            # Anything else (config.dump, spec.dump, the stats) is skipped: tarfile's next() seeks past it.
    reader.drain()
    if not image_bytes:
        raise HandoffError("the checkpoint archive holds no CRIU images (no checkpoint/ files)")
    missing = sorted(set(mounted.values()) - {p.stem for p in volumes.iterdir()})
    if missing:
        raise HandoffError(f"the checkpoint archive lacks the contents of emptyDir volume(s) {', '.join(missing)}")
    return image_bytes, diff_bytes, deleted, mounted


class ForwardReader:
    """A chunk iterator as the file tarfile reads headers from: read, tell and forward seeks (tarfile seeks past
    data it was not asked for); `write_to` moves a member's data to a file straight from the chunks."""

    def __init__(self, chunks: Iterator[bytes | memoryview]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")
        self._pos = 0

    def _fill(self) -> bool:
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return False
        return True

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        parts: list[bytes] = []
        while n != 0 and self._fill():
            take = len(self._pending) if n < 0 else min(n, len(self._pending))
            parts.append(bytes(self._pending[:take]))
            self._pending = self._pending[take:]
            self._pos += take
            n -= take if n > 0 else 0
        return b"".join(parts)

    def read_exactly(self, n: int) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise HandoffError("the checkpoint archive ends inside a member")
        return data

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET or pos < self._pos:
            raise OSError(f"the checkpoint stream only reads forward (at {self._pos}, asked for {pos})")
        while self._pos < pos and self._fill():
            take = min(pos - self._pos, len(self._pending))
            self._pending = self._pending[take:]
            self._pos += take
        return self._pos

    def write_to(self, fd: int, n: int) -> None:
        while n > 0:
            if not self._fill():
                raise HandoffError("the checkpoint archive ends inside a member")
            piece = self._pending[: min(n, len(self._pending))]
            written = os.write(fd, piece)
            self._pending = self._pending[written:]
            self._pos += written
            n -= written

    def drain(self) -> None:
        """Pull the iterator to its end so its final integrity check runs."""
        self._pending = memoryview(b"")
        for _ in self._chunks:
            pass


def _offset(member: tarfile.TarInfo, part: str | None) -> int | None:
    if part is None:
        return None
    if not (part.isascii() and part.isdigit()):
        raise HandoffError(f"checkpoint archive member {member.name!r}: part offset {part!r} is not a number")
    return int(part)


def _write(reader: ForwardReader, member: tarfile.TarInfo, dest: Path, part: int | None = None) -> int:
    """The member's data (the reader is at its start: tarfile has just read its header) into a new 0600 file;
    a part (`part`: its offset) must start where the file ends so far (a first part: at 0, the file new).
    The staging directory is removed if anything fails, so a file a refused part created goes with it."""
    if reader.tell() != member.offset_data:
        raise HandoffError(f"checkpoint archive member {member.name!r}: its data is not where its header says")
    if part is not None:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    else:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if part is not None and (end := os.fstat(fd).st_size) != part:
            raise HandoffError(f"checkpoint archive member {member.name!r}: a part at {part}, the file ends at {end}")
        reader.write_to(fd, member.size)
    finally:
        os.close(fd)
    return member.size
