"""The live engine's dump: CRIU through containerd's task API, without the kubelet's checkpoint round trip.

Why: the kubelet's checkpoint (`POST /checkpoint`, CRI CheckpointContainer) spends most of the source's frozen
time around CRIU rather than in it: containerd computes the rootfs diff through its diff service, writes the
container's config and spec, and packs everything into one tar before the kubelet answers. For the Live engine
the target needs only CRIU's images and the container's file-system changes, so the agent asks containerd for
exactly that (containerd's Tasks.Checkpoint with an image path, called on its socket; `ctr tasks checkpoint
--image-path` for a post-copy dump, which must run on: either runs `runc checkpoint` in the task's shim, with the
node's CRIU configuration) and reads the changes straight from the container's overlay upper directory, while
CRIU runs.

The result has the kubelet archive's layout (`checkpoint/<CRIU images>`, `rootfs-diff.tar`, `deleted.files`),
so pushing, storing and staging are the same as for a kubelet archive. It has no `config.dump`/`spec.dump`:
the Image engine cannot turn it into a checkpoint image, and it is used only when the migration's target
restores through lpm-runc.

A task that containerd paused (the Freezer's containerd control) is checkpointed as it is and stays paused:
containerd pauses and resumes around the dump only a task it believes is running. The images are written by
the shim on the node, into a directory the agent sees at the same path, made 0700: in memory (`--memory-dir`,
see lpm.agent.scratch) when the container's resident memory fits there, else on disk (`--dump-dir`); what the
agent writes itself (file changes, emptyDir contents) stays on disk, since a tmpfs page it writes counts against
its own memory limit, whatever the size of a volume. The archive is not written: the push and the store each
read it as a tar stream made from those files (TarLayout).

emptyDir volumes mounted in the container travel with it: each one's contents (read through the frozen process's
own root, `/proc/<pid>/root/<mount point>`) become `volumes/<volume>.tar`, and `volumes.json` maps mount points to
volume names. lpm-runc fills the replacement's (new, empty) emptyDir from them before CRIU reopens the files.

Overlay upper directory -> rootfs diff: regular files, directories and symlinks go into the tar as they are;
a whiteout (a 0:0 character device) becomes a `deleted.files` entry; an opaque directory
(`trusted.overlay.opaque=y`) deletes what the lower layers hold under it and is then filled from the tar.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, cast

import grpc
from google.protobuf.any_pb2 import Any as AnyProto

from lpm.agent import eligibility
from lpm.agent.handoff import PART_OFFSET
from lpm.agent.images import IterReader
from lpm.agent.kubelet import CheckpointResult
from lpm.agent.pages import free_port, split_host_port
from lpm.agent.scratch import Scratch, resident_bytes
from lpm.api.containerd.v1 import tasks_pb2, tasks_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_DUMP_DIR: Final = "/var/lib/lpm/dump"
# The type URL of the runc shim's checkpoint options: the message's full name, which containerd resolves (checked
# against the real one in tests/integration/agent/test_containerd.py).
RUNC_CHECKPOINT_OPTIONS: Final = "containerd.runc.v1.CheckpointOptions"
_OPAQUE_XATTRS: Final = ("trusted.overlay.opaque", "user.overlay.opaque")
_CHUNK: Final = 1 << 20
_TAR_END: Final = bytes(2 * tarfile.BLOCKSIZE)  # two zero blocks end a tar archive


class DumpError(Exception):
    """The runtime could not dump the container (not a CRIU verdict: the runtime or the node failed)."""


class LazyAlreadyStarted(Exception):
    """A post-copy dump of this checkpoint was started before (by this agent, or by the one it replaced): its
    page server may still be serving the target, and a second dump would hold the task until nobody connects.
    Not a DumpError: nothing may dump this container again for the same checkpoint."""


class DumpCriuFailed(DumpError):
    """CRIU refused or failed; the message is the runtime's and names CRIU's log on the node (the shim copies it to
    <task dir>/criu-dump.log, which the agent reads through its mount of the task directory)."""


@dataclass(frozen=True)
class Overlay:
    upper: Path
    lowers: tuple[Path, ...]


@dataclass(frozen=True)
class TarLayout:
    """A tar archive of files that exist, read without being written: a second copy of a checkpoint (its
    archive beside its images) would double the bytes written inside the freeze and the memory they take.
    Every reader gets the same bytes (headers are built once; the files are not changed once dumped); a file
    that changed size fails the reader."""

    # (tar header, file or None for a directory, bytes, from where in the file)
    members: tuple[tuple[bytes, Path | None, int, int], ...]
    size: int
    roots: tuple[Path, ...] = ()  # the directories the files are in, which discard() removes
    files: tuple[tuple[str, Path], ...] = ()

    @classmethod
    def of(
        cls, files: list[tuple[str, Path]], roots: tuple[Path, ...] = (), sent: Mapping[str, int] | None = None
    ) -> TarLayout:
        """`files`: (name in the archive, path) in archive order. `sent`: names whose first bytes went before
        (DumpStream): each is the rest of its file, a part (handoff.PART_OFFSET) from that offset on."""
        members, size = [], 0
        for name, path in files:
            st = path.stat()
            info = tarfile.TarInfo(name)
            info.mtime = int(st.st_mtime)
            if stat.S_ISDIR(st.st_mode):
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                entry: tuple[bytes, Path | None, int, int] = (info.tobuf(tarfile.PAX_FORMAT), None, 0, 0)
            else:
                start = (sent or {}).get(name, 0)
                if start > st.st_size:
                    raise OSError(f"{path} shrank after its first {start} bytes were sent")
                info.size, info.mode = st.st_size - start, 0o600
                if name in (sent or {}):
                    info.pax_headers = {PART_OFFSET: str(start)}
                entry = (info.tobuf(tarfile.PAX_FORMAT), path, info.size, start)
            members.append(entry)
            size += len(entry[0]) + _padded(entry[2])
        return cls(tuple(members), size + len(_TAR_END), roots, tuple(files))

    def rest(self, sent: Mapping[str, int]) -> TarLayout:
        """This archive without the first bytes of the files in `sent`, which a DumpStream sent before."""
        return TarLayout.of(list(self.files), self.roots, sent)

    def discard(self) -> None:
        for root in self.roots:
            shutil.rmtree(root, ignore_errors=True)

    def open(self) -> BinaryIO:
        return cast(BinaryIO, io.BufferedReader(IterReader(self._chunks()), _CHUNK))

    def _chunks(self) -> Iterator[bytes]:
        for header, path, size, start in self.members:
            yield header
            if path is None:
                continue
            with open(path, "rb") as f:
                f.seek(start)
                left = size
                while left:
                    data = f.read(min(_CHUNK, left))
                    if not data:
                        raise OSError(f"{path} shrank while it was archived")
                    left -= len(data)
                    yield data
            if _padded(size) > size:
                yield bytes(_padded(size) - size)
        yield _TAR_END


def _part(name: str, offset: int, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, int(time.time())
    info.pax_headers = {PART_OFFSET: str(offset)}
    return info.tobuf(tarfile.PAX_FORMAT)


MIN_PART: Final = 256 << 10  # a DumpStream part smaller than this waits for more (a tar header and a message each)


class DumpStream:
    """A runtime dump's archive, read while CRIU writes it: the Live engine's push starts inside the dump.

    CRIU writes a container's memory into its `pages-*.img` files, sequentially and only by appending (its page
    transfer splices each batch of pages to the end of the file; nothing in them is rewritten), and those are
    nearly all of a large container's checkpoint. So while the runtime dumps, the stream sends each page file's
    new bytes as they appear, as parts (tar members with a PAX `LPM.offset`, which the target appends to the
    file: lpm.agent.handoff); once the dump is complete, the rest of the archive follows (TarLayout.rest: every
    other file, and the remainder of each page file). A dump that failed, or that must not be handed over (the
    migration was rolled back meanwhile), ends the stream with an error: the target never receives its last
    chunk, so it never stages it (the push's checksum and `ready` come only at the end).

    The dumper calls `begin` once the images directory exists and the agent's own files are written (their
    size, with the container's resident memory, is the `size_hint` the target stages by); then the agent's
    service `finish`es it with the complete layout, or `fail`s it. The push reads `open()` on its own thread."""

    POLL_SECONDS: Final = 0.002  # how often an idle stream looks for new pages

    def __init__(
        self,
        on_begin: Callable[[DumpStream], None],
        deadline: float,
        on_total: Callable[[int], None] = lambda n: None,
        min_part: int = MIN_PART,
    ) -> None:
        self._on_begin = on_begin
        self._min_part = min_part
        self._on_total = on_total  # the stream's whole size, once the dump is complete (the begin's is a hint)
        self._yielded = 0
        self._deadline = deadline  # time.monotonic(): a stream nobody finished or failed by then fails
        self._cond = threading.Condition()
        self.images: Path | None = None
        self.size_hint = 0
        self._final: TarLayout | None = None
        self._failed = ""
        self.sent: dict[str, int] = {}  # archive name -> bytes of it already sent

    @property
    def began(self) -> bool:
        return self.images is not None

    def begin(self, images: Path, size_hint: int) -> None:
        with self._cond:
            self.images, self.size_hint = images, size_hint
        self._on_begin(self)

    def finish(self, layout: TarLayout) -> None:
        with self._cond:
            self._final = layout
            self._cond.notify_all()

    def fail(self, why: str) -> None:
        with self._cond:
            if self._final is None:
                self._failed = why or "the dump failed"
            self._cond.notify_all()

    def open(self) -> BinaryIO:
        return cast(BinaryIO, io.BufferedReader(IterReader(self._chunks()), _CHUNK))

    def _chunks(self) -> Iterator[bytes]:
        assert self.images is not None
        while True:
            with self._cond:
                final, failed = self._final, self._failed
            if not failed and time.monotonic() > self._deadline:
                failed = "neither complete nor failed by the checkpoint's deadline"
            if failed:
                raise DumpError(f"the dump did not complete: {failed}")
            if final is not None:
                rest = final.rest(self.sent)
                self._on_total(self._yielded + rest.size)
                yield from rest._chunks()
                return
            for path in sorted(self.images.glob("pages-*.img")):
                for data in self._new_bytes(path, f"checkpoint/{path.name}"):
                    self._yielded += len(data)
                    yield data
            with self._cond:
                if self._final is None and not self._failed:
                    self._cond.wait(self.POLL_SECONDS)

    def _new_bytes(self, path: Path, name: str) -> Iterator[bytes]:
        """The bytes CRIU appended to `path` since the last part, as parts of at most _CHUNK."""
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return
        with f:
            while True:
                offset = self.sent.get(name, 0)
                available = os.fstat(f.fileno()).st_size - offset
                if available < self._min_part:
                    return
                n = min(available, _CHUNK)
                f.seek(offset)
                data = f.read(n)
                if len(data) != n:
                    raise OSError(f"{path} shrank while CRIU wrote it")
                yield _part(name, offset, n)
                yield data
                if _padded(n) > n:
                    yield bytes(_padded(n) - n)
                self.sent[name] = offset + n
                with self._cond:
                    if self._final is not None or self._failed:
                        return


def _request_file(images: Path) -> Path:
    """Beside the image directory: lpm-runc's `checkpoint` turns lazy when it exists (src/go/lpm-runc)."""
    return images.with_name(images.name + ".lpm-lazy.json")


def _ready_file(images: Path) -> Path:
    """Written by lpm-runc once CRIU's page server listens (the images are complete then)."""
    return images.with_name(images.name + ".lpm-lazy-ready")


def _check_dumped(done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip()
        if "criu failed" in message.lower():
            raise DumpCriuFailed(message)
        raise DumpError(f"ctr tasks checkpoint failed: {message}")


@dataclass
class LazyDump:
    """A post-copy dump whose page server still runs: `ctr tasks checkpoint` returns once every page was pulled
    (CRIU's page server then exits), or the transfer broke (the source runs on: leave-running, still paused)."""

    process: subprocess.Popen[str]
    page_server: str  # host:port
    memory_bytes: int = 0  # the container's resident memory at the dump: about what the page stream carries

    def wait(self, timeout: float) -> str:
        """Empty once every page went; else why not."""
        try:
            out, err = self.process.communicate(timeout=max(0.1, timeout))
        except subprocess.TimeoutExpired:
            return f"the page server still ran after {timeout:.0f}s"
        if self.process.returncode != 0:
            return f"ctr tasks checkpoint (post-copy) failed: {(err or out).strip()}"
        return ""

    def stop(self) -> None:
        """Give up: ctr goes, and the page server, which waits for one connection and holds the task (and its
        shim) until then, gets one that closes at once (it fails the TLS handshake): CRIU ends, the task stays
        as it was (leave-running, paused)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()
        host, port = split_host_port(self.page_server)
        for _ in range(3):
            try:
                socket.create_connection((host, port), timeout=2).close()
            except OSError:
                return  # nothing listens (any more)
            time.sleep(0.2)


def _padded(size: int) -> int:
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and len(field[i + 1 : i + 4]) == 3:
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _split_options(options: str) -> dict[str, str]:
    """Overlay's super options; a lowerdir list is colon separated, so only commas split options."""
    found: dict[str, str] = {}
    for part in options.split(","):
        key, _, value = part.partition("=")
        found[key] = value
    return found


def root_overlay(mountinfo: str) -> Overlay:
    """The overlay mounted at a process's `/`, from its `/proc/<pid>/mountinfo`."""
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if not sep or len(fields) < 5 or _unescape(fields[4]) != "/":
            continue
        fstype, _source, options = [*tail.split(" ", 2), "", ""][:3]
        if fstype != "overlay":
            raise DumpError(f"the container's root is {fstype or 'unknown'}, not overlay: its changes cannot be read")
        opts = _split_options(options)
        if not opts.get("upperdir"):
            raise DumpError("the container's root overlay has no upper directory (read-only root?)")
        lowers = tuple(Path(_unescape(p)) for p in opts.get("lowerdir", "").split(":") if p)
        return Overlay(Path(_unescape(opts["upperdir"])), lowers)
    raise DumpError("the container's mount table has no root mount")


def _opaque(path: Path) -> bool:
    for name in _OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def _whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _walk(upper: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    """(path in the rootfs, path in upper, lstat) for every entry, parents first."""
    stack = [("", upper)]
    while stack:
        rel, here = stack.pop()
        with os.scandir(here) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                child_rel = f"{rel}/{entry.name}"
                st = entry.stat(follow_symlinks=False)
                yield child_rel, Path(entry.path), st
                if stat.S_ISDIR(st.st_mode):
                    stack.append((child_rel, Path(entry.path)))


def _hidden_below(lowers: tuple[Path, ...], rel: str, kept: set[str]) -> Iterator[str]:
    """What the lower layers hold under opaque directory `rel` that the upper directory does not put back:
    gone in the container. A directory that upper recreated hides its lower contents too (recursively)."""
    names: set[str] = set()
    for lower in lowers:
        below = lower / rel.lstrip("/")
        if below.is_dir() and not below.is_symlink():
            names.update(os.listdir(below))
    for name in sorted(names):
        child = f"{rel}/{name}"
        if child.lstrip("/") not in kept:
            yield child
        elif any((lower / child.lstrip("/")).is_dir() for lower in lowers):
            yield from _hidden_below(lowers, child, kept)


def write_volumes(proc_root: Path, pid: int, mountinfo: str, out: Path) -> dict[str, str]:
    """Each emptyDir volume mounted in the container (`pid`'s mount table) as `out/<volume>.tar`, read through the
    process's own root; returns {mount point: volume name}. A volume mounted twice is written once."""
    mounts = eligibility.parse_mountinfo(mountinfo)
    host: list[eligibility.Mount] = []
    if any(m.fs_type == "tmpfs" for m in mounts):
        host = eligibility.parse_mountinfo((proc_root / "1" / "mountinfo").read_text(errors="surrogateescape"))
    found = dict(eligibility.emptydir_mounts(mounts, host))
    out.mkdir(mode=0o700, exist_ok=True)
    for mount_point, name in sorted(found.items()):
        dest = out / f"{name}.tar"
        if dest.exists():
            continue
        src = proc_root / str(pid) / "root" / mount_point.lstrip("/")
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for entry in sorted(src.iterdir()):
                tar.add(entry, arcname=entry.name)  # recursive; symlinks as links, never followed
    return found


def write_rootfs_diff(overlay: Overlay, tar_path: Path) -> tuple[list[str], int]:
    """The upper directory as a tar (paths relative to the rootfs) and the paths the container deleted;
    returns (deleted, number of entries in the tar). lpm-runc applies the tar first, then the deletions."""
    deleted: list[str] = []
    opaque: list[str] = []
    kept: set[str] = set()
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel, path, st in _walk(overlay.upper):
            if _whiteout(st):
                deleted.append(rel)
                continue
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                log.warning("rootfs diff: skipping %s (not a file, directory or symlink)", rel)
                continue
            if stat.S_ISDIR(st.st_mode) and _opaque(path):
                opaque.append(rel)
            tar.add(path, arcname=rel.lstrip("/"), recursive=False)
            kept.add(rel.lstrip("/"))
    for rel in opaque:
        deleted.extend(_hidden_below(overlay.lowers, rel, kept))
    return list(dict.fromkeys(deleted)), len(kept)


@dataclass(frozen=True)
class RuntimeDumper:
    """Dumps a containerd task through containerd's task API (see the module docstring)."""

    dump_dir: Path = Path(DEFAULT_DUMP_DIR)
    proc_root: Path = Path("/proc")
    address: str = "/run/containerd/containerd.sock"
    ctr: str = "ctr"
    namespace: str = "k8s.io"
    # containerd's task bundles (config.json, the container's OCI spec): the archive carries it as spec.dump,
    # as the kubelet's does, so that checkpointctl reads either. None: the archive goes without.
    task_dir: Path | None = None
    # Memory-backed dump directory (lpm.agent.scratch); None: always dump_dir.
    memory_dir: Path | None = None
    # Post-copy: the node address CRIU's page server listens on (the agent runs in the node's network); None:
    # no post-copy from this node.
    page_server_host: str | None = None

    def task_pid(self, container_id: str) -> int | None:
        """The task's init process from its bundle's init.pid (containerd's shim writes it at the task's
        start): a file read where `ctr tasks ls` costs ~10 ms, inside the freeze. None when unknown."""
        if self.task_dir is None:
            return None
        try:
            pid = int((self.task_dir / self.namespace / container_id / "init.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid > 0 else None

    def _checkpoint_task(self, container_id: str, images: Path, timeout: float) -> None:
        """containerd's Tasks.Checkpoint with an image path: the task's shim runs `runc checkpoint
        --leave-running --image-path <images>` (a paused task stays paused). One gRPC call on containerd's socket
        where `ctr tasks checkpoint` would start a process and make three more calls first (see
        src/proto/lpm/api/containerd/v1/tasks.proto), inside the frozen time."""
        options = AnyProto(
            type_url=RUNC_CHECKPOINT_OPTIONS,
            value=tasks_pb2.RuncCheckpointOptions(image_path=str(images)).SerializeToString(),
        )
        request = tasks_pb2.CheckpointTaskRequest(container_id=container_id, options=options)
        try:
            with grpc.insecure_channel(f"unix:{self.address}") as channel:
                tasks_pb2_grpc.TasksStub(channel).Checkpoint(
                    request, timeout=max(1.0, timeout), metadata=(("containerd-namespace", self.namespace),)
                )
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = (exc.details() if hasattr(exc, "details") else "") or str(exc)
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DumpError(f"containerd did not checkpoint task {container_id} within {timeout:.0f}s") from None
            if "criu failed" in details.lower():
                raise DumpCriuFailed(details) from None
            raise DumpError(
                f"containerd could not checkpoint task {container_id} ({code.name} from {self.address}): {details}"
            ) from None

    def usable(self) -> str:
        """Empty when the dump directory can be used; otherwise why not."""
        try:
            self.dump_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.dump_dir):
                pass
        except OSError as exc:
            return f"the runtime dump directory {self.dump_dir} is not writable: {exc.strerror}"
        if shutil.which(self.ctr) is None:
            return f"{self.ctr} is not installed"
        return ""

    def dump(
        self,
        container_id: str,
        pid: int,
        label: str,
        timeout: float,
        lazy_above_bytes: int = 0,
        stream: DumpStream | None = None,
    ) -> CheckpointResult:
        """Checkpoint task `container_id` (init process `pid` in the node's PID namespace) into a directory
        that reads as an archive in the kubelet's layout (`CheckpointResult.open`); the caller discards it.

        Post-copy when the container holds at least `lazy_above_bytes` (> 0) of resident memory: the result's
        `lazy` is the page server still running (its memory is not in the archive); None when the runtime dumped
        it whole (a runtime that is not lpm-runc ignores the request).

        `stream`: a whole dump begins it while CRIU runs (DumpStream), which the caller then finishes or fails;
        a dump that raises fails it here. A post-copy dump never begins it."""
        started = time.monotonic()
        try:
            mountinfo = (self.proc_root / str(pid) / "mountinfo").read_text()
        except OSError as exc:
            raise DumpError(f"cannot read the container's mount table: {exc.strerror}") from None
        overlay = root_overlay(mountinfo)
        self.sweep()
        # What this agent writes (the file changes, the emptyDir contents: of any size) goes to disk; CRIU's
        # images, written by the runtime and as large as the container's memory, go to memory when they fit.
        self.dump_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{label}-", dir=self.dump_dir))
        resident = resident_bytes(self.proc_root, pid)
        lazy = 0 < lazy_above_bytes <= resident and self.page_server_host is not None
        # Post-copy leaves the memory out of the images: they are small, and go to memory.
        base = self._scratch().pick(0 if lazy else resident, f"the dump of {label}")
        images = Path(tempfile.mkdtemp(prefix=f".{label}-images-", dir=base))
        pending: LazyDump | None = None
        files_took = 0.0

        def read_files() -> tuple[list[str], int, dict[str, str]]:
            # The task is frozen, so its file-system changes and emptyDir contents are final.
            nonlocal files_took
            begun = time.monotonic()
            try:
                deleted, entries = write_rootfs_diff(overlay, work / "rootfs-diff.tar")
            except OSError as exc:
                raise DumpError(f"cannot read the container's file-system changes: {exc}") from None
            (work / "deleted.files").write_text(json.dumps(deleted))
            try:
                volumes = write_volumes(self.proc_root, pid, mountinfo, work / "volumes")
            except OSError as exc:
                raise DumpError(f"cannot read the container's emptyDir volumes: {exc}") from None
            (work / "volumes.json").write_text(json.dumps(volumes))
            files_took = time.monotonic() - begun
            return deleted, entries, volumes

        try:
            if lazy:
                argv = ("tasks", "checkpoint", "--image-path", str(images), container_id)
                # First, alone: a change the agent cannot read fails here, before a page server holds the task
                # for a stream that could never be resumed (the caller then dumps through the kubelet).
                deleted, entries, volumes = read_files()
                runtime_started = time.monotonic()
                # Once per checkpoint: a page stream cannot be resumed by a second dump (the claim stays once
                # the page server went live, and goes if the dump failed before).
                self.claim_lazy(label)
                try:
                    pending = self._dump_lazy(images, timeout, argv, resident)
                except BaseException:
                    self.unclaim_lazy(label)
                    raise
                if pending is None:
                    self.unclaim_lazy(label)
            else:
                # Beside CRIU (~10 ms of the freeze for a few dozen changes): the agent reads the upper
                # directory while the runtime dumps the memory. If reading fails, the caller dumps through the
                # kubelet; this CRIU run, which leaves the task frozen, is then only wasted time.
                runtime_started = time.monotonic()

                def read_files_then_stream() -> tuple[list[str], int, dict[str, str]]:
                    found = read_files()
                    if stream is not None:
                        # The agent's own files are final: with the memory, at most what the archive holds.
                        written = sum(p.stat().st_size for p in work.rglob("*") if p.is_file())
                        stream.begin(images, resident + written + (1 << 20))
                    return found

                with ThreadPoolExecutor(1, thread_name_prefix="dump-files") as pool:
                    changes = pool.submit(read_files_then_stream)
                    self._checkpoint_task(container_id, images, timeout)
                    deleted, entries, volumes = changes.result()
            dumped = time.monotonic()
            self._describe(container_id, work)
            # The archive is never written: its readers (the push, the store) read it from these files.
            files = [(n, work / n) for n in ("config.dump", "spec.dump") if (work / n).exists()]
            files += [("checkpoint", images), *((f"checkpoint/{i.name}", i) for i in sorted(images.iterdir()))]
            files += [("rootfs-diff.tar", work / "rootfs-diff.tar")] if entries else []
            files += [("deleted.files", work / "deleted.files")]
            files += [(f"volumes/{n}.tar", work / "volumes" / f"{n}.tar") for n in sorted(set(volumes.values()))]
            files += [("volumes.json", work / "volumes.json")]
            layout = TarLayout.of(files, roots=(work, images))
            log.info(
                "dumped %s through containerd into %s in %.3fs (rootfs diff and %d emptyDir volumes %.3fs, CRIU "
                "%.3fs%s, %d changes, %d deleted)%s",
                label,
                base,
                time.monotonic() - started,
                len(volumes),
                files_took,
                dumped - runtime_started,
                "" if lazy else " beside them",
                entries,
                len(deleted),
                f"; its {resident} bytes of memory are served from {pending.page_server}" if pending else "",
            )
            began = stream if stream is not None and stream.began else None
            return CheckpointResult(str(work), work, 1, time.monotonic() - started, layout, pending, began)
        except BaseException as exc:
            if stream is not None:
                stream.fail(str(exc) or type(exc).__name__)
            if pending is not None:
                pending.stop()
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(images, ignore_errors=True)
            raise
        finally:
            for sibling in (_request_file(images), _ready_file(images)):
                sibling.unlink(missing_ok=True)

    def claim_lazy(self, label: str) -> None:
        """Records, on the node (it survives this agent), that a post-copy dump of `label` starts; raises
        LazyAlreadyStarted if one did before."""
        self.dump_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.close(os.open(self.dump_dir / f".lazy-{label}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            raise LazyAlreadyStarted(
                f"post-copy: a lazy dump of {label} was started on this node before (its agent restarted?); a page "
                "stream cannot be resumed, and whether it ended is for the target to say"
            ) from None

    def unclaim_lazy(self, label: str) -> None:
        (self.dump_dir / f".lazy-{label}").unlink(missing_ok=True)

    def _dump_lazy(self, images: Path, timeout: float, argv: tuple[str, ...], resident: int) -> LazyDump | None:
        """Ask lpm-runc (the task's runtime) for a lazy dump, and wait until its page server listens or the
        dump ended. None: the runtime dumped the whole memory (it is not lpm-runc)."""
        assert self.page_server_host is not None
        page_server = f"{self.page_server_host}:{free_port(self.page_server_host)}"
        fd = os.open(_request_file(images), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"page_server": page_server}, f)
        cmd = [self.ctr, "--address", self.address, "-n", self.namespace, *argv]
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        except FileNotFoundError:
            raise DumpError(f"{self.ctr} is not installed: cannot checkpoint through containerd") from None
        pending = LazyDump(proc, page_server, resident)
        deadline = time.monotonic() + max(1.0, timeout)
        while not _ready_file(images).exists():
            if proc.poll() is not None:
                out, err = proc.communicate()
                _check_dumped(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
                return None  # dumped whole: the runtime did not serve pages
            if time.monotonic() >= deadline:
                pending.stop()
                raise DumpError(f"ctr tasks checkpoint (post-copy) did not start serving pages within {timeout:.0f}s")
            time.sleep(0.002)
        return pending

    def _describe(self, container_id: str, work: Path) -> None:
        """spec.dump (the bundle's OCI spec) and config.dump (checkpointctl's ContainerConfig), as containerd's
        CRI writes them into a kubelet checkpoint. Best effort: they are for forensics, not for the restore."""
        if self.task_dir is None:
            return
        try:
            spec_bytes = (self.task_dir / self.namespace / container_id / "config.json").read_bytes()
            spec = json.loads(spec_bytes)
        except (OSError, ValueError) as exc:
            log.info("no spec.dump for %s: %s", container_id, exc)
            return
        annotations = spec.get("annotations") or {}
        (work / "spec.dump").write_bytes(spec_bytes)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        config = {
            "id": container_id,
            "name": annotations.get("io.kubernetes.cri.container-name", container_id),
            "rootfsImageName": annotations.get("io.kubernetes.cri.image-name", ""),
            "runtime": "io.containerd.runc.v2",
            "createdTime": now,
            "checkpointedTime": now,
            "restoredTime": "0001-01-01T00:00:00Z",
            "restored": False,
        }
        (work / "config.dump").write_text(json.dumps(config))

    def _scratch(self) -> Scratch:
        return Scratch(self.memory_dir, self.dump_dir)

    def sweep(self, older_than: float = 3600.0) -> None:
        """Remove what an agent that died mid-dump left behind (process memory: never keep it)."""
        cutoff = time.time() - older_than
        for entry in (e for root in self._scratch().roots() for e in root.glob(".*")):
            try:
                if entry.lstat().st_mtime < cutoff:
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
            except OSError:
                continue
