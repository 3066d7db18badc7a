"""The runtime dump: where a container's overlay is, its changes as lpm-runc applies them, the archive, and the
call to containerd's task API (a stand-in here; the real one in tests/integration/agent/test_containerd.py)."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lpm.agent import transfer
from lpm.agent.dump import (
    DumpCriuFailed,
    DumpError,
    DumpStream,
    LazyAlreadyStarted,
    Overlay,
    RuntimeDumper,
    TarLayout,
    root_overlay,
    write_rootfs_diff,
)
from lpm.agent.handoff import Handoff
from lpm.agent.scratch import Scratch
from lpm.api.agent.v1 import agent_pb2
from lpm.api.containerd.v1 import tasks_pb2, tasks_pb2_grpc

MOUNTINFO = (
    "1203 1190 0:317 / / rw,relatime master:437 - overlay overlay rw,lowerdir=/var/lib/containerd/io.containerd."
    "snapshotter.v1.overlayfs/snapshots/12/fs:/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots"
    "/11/fs,upperdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/40/fs,workdir=/var/lib/"
    "containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/40/work,index=off\n"
    "1204 1203 0:318 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n"
    "1205 1203 0:319 / /data\\040dir rw - overlay overlay rw,lowerdir=/x,upperdir=/y,workdir=/z\n"
)
SNAP = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots"


def test_the_root_overlay_is_found_with_its_layers_in_order() -> None:
    found = root_overlay(MOUNTINFO)
    assert found.upper == Path(f"{SNAP}/40/fs")
    assert found.lowers == (Path(f"{SNAP}/12/fs"), Path(f"{SNAP}/11/fs"))


def test_escaped_paths_are_unescaped() -> None:
    text = "1 0 0:1 / / rw - overlay overlay rw,lowerdir=/l\\040a,upperdir=/u\\134b,workdir=/w\n"
    assert root_overlay(text) == Overlay(Path("/u\\b"), (Path("/l a"),))


@pytest.mark.parametrize(
    ("mountinfo", "says"),
    [
        ("1 0 0:1 / / rw - ext4 /dev/vda rw\n", "is ext4, not overlay"),
        ("1 0 0:1 / / ro - overlay overlay ro,lowerdir=/a:/b\n", "no upper directory"),
        ("1 0 0:1 / /proc rw - proc proc rw\n", "no root mount"),
    ],
)
def test_a_root_that_is_not_a_writable_overlay_is_refused_with_the_reason(mountinfo: str, says: str) -> None:
    with pytest.raises(DumpError, match=says):
        root_overlay(mountinfo)


def _layers(tmp_path: Path) -> Overlay:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for d in ("etc", "var/cache/app/sub", "opt/keep"):
        (lower / d).mkdir(parents=True)
    for f in ("etc/passwd", "etc/stale", "var/cache/app/old", "var/cache/app/sub/deep", "opt/keep/x"):
        (lower / f).write_text("lower")
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "passwd").write_text("changed")
    os.mknod(upper / "etc" / "stale", 0o600 | 0o020000, os.makedev(0, 0))  # overlay's whiteout
    (upper / "tmp").mkdir()
    (upper / "tmp" / "count").write_text("41")
    (upper / "tmp" / "link").symlink_to("count")
    # var/cache/app was removed and recreated: an opaque directory that holds one new file and a new sub/.
    (upper / "var" / "cache" / "app" / "sub").mkdir(parents=True)
    (upper / "var" / "cache" / "app" / "new").write_text("fresh")
    os.setxattr(upper / "var" / "cache" / "app", "trusted.overlay.opaque", b"y")
    return Overlay(upper, (lower,))


def test_the_upper_directory_becomes_a_tar_and_a_deleted_list(tmp_path: Path) -> None:
    overlay = _layers(tmp_path)
    deleted, entries = write_rootfs_diff(overlay, tmp_path / "diff.tar")
    with tarfile.open(tmp_path / "diff.tar") as tar:
        names = set(tar.getnames())
        assert tar.extractfile("etc/passwd").read() == b"changed"  # type: ignore[union-attr]
        assert tar.getmember("tmp/link").issym() and tar.getmember("tmp/link").linkname == "count"
    assert {"etc/passwd", "tmp/count", "tmp/link", "var/cache/app/new", "var/cache/app/sub"} <= names
    assert "etc/stale" not in names, "a whiteout is a deletion, not a file"
    assert entries == len(names)
    # The whiteout, and what the opaque directory hid: its old file, and inside the recreated sub/ the old one.
    assert sorted(deleted) == ["/etc/stale", "/var/cache/app/old", "/var/cache/app/sub/deep"]
    assert not any(d.startswith("/opt") for d in deleted), "a directory that is not opaque keeps its lower files"


def test_applying_the_diff_then_the_deletions_gives_the_containers_view(tmp_path: Path) -> None:
    """What lpm-runc does on the target (tar first, then deletions) reproduces the merged overlay."""
    overlay = _layers(tmp_path)
    deleted, _ = write_rootfs_diff(overlay, tmp_path / "diff.tar")
    target = tmp_path / "target"
    shutil.copytree(overlay.lowers[0], target, symlinks=True)
    with tarfile.open(tmp_path / "diff.tar") as tar:
        tar.extractall(target, filter="tar")
    for d in deleted:
        path = target / d.lstrip("/")
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if not p.is_dir())
    assert files == [
        "etc/passwd",
        "opt/keep/x",
        "tmp/count",
        "tmp/link",
        "var/cache/app/new",
    ]
    assert (target / "etc" / "passwd").read_text() == "changed"


def test_an_unreadable_change_is_an_os_error_the_caller_turns_into_a_kubelet_dump(tmp_path: Path) -> None:
    overlay = Overlay(tmp_path / "missing", ())
    with pytest.raises(OSError):
        write_rootfs_diff(overlay, tmp_path / "diff.tar")


def test_each_emptydir_a_container_mounts_becomes_one_tar_read_through_its_root(tmp_path: Path) -> None:
    from lpm.agent.dump import write_volumes

    proc = tmp_path / "proc"
    root = proc / "42" / "root"
    (root / "data" / "sub").mkdir(parents=True)
    (root / "data" / "events.log").write_text("1\n2\n")
    (root / "data" / "sub" / "x").write_text("x")
    os.symlink("/etc/passwd", root / "data" / "link")  # kept as a link, never followed
    shutil.copytree(root / "data", root / "again", symlinks=True)  # the same volume mounted a second time
    kubelet = "/var/lib/kubelet/pods/0e3c/volumes/kubernetes.io~empty-dir"
    mountinfo = (
        f"1300 1203 8:1 {kubelet}/data /data rw,relatime - ext4 /dev/sda1 rw\n"
        f"1301 1203 8:1 {kubelet}/data /again rw,relatime - ext4 /dev/sda1 rw\n"
        "1302 1203 8:1 /var/lib/kubelet/pods/0e3c/etc-hosts /etc/hosts rw - ext4 /dev/sda1 rw\n"
    )
    found = write_volumes(proc, 42, mountinfo, tmp_path / "out")
    assert found == {"/data": "data", "/again": "data"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["data.tar"]
    with tarfile.open(tmp_path / "out" / "data.tar") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"events.log", "sub", "sub/x", "link"}
        assert members["link"].issym() and members["link"].linkname == "/etc/passwd"
        assert tar.extractfile(members["events.log"]).read() == b"1\n2\n"  # type: ignore[union-attr]


def test_a_dump_reads_as_one_tar_archive_that_every_reader_gets_byte_for_byte(tmp_path: Path) -> None:
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "pages-1.img").write_bytes(b"p" * 70000)
    (tmp_path / "checkpoint" / "empty.img").write_bytes(b"")
    (tmp_path / "deleted.files").write_text("[]")
    names = ["checkpoint", "checkpoint/empty.img", "checkpoint/pages-1.img", "deleted.files"]
    layout = TarLayout.of([(n, tmp_path / n) for n in names], roots=(tmp_path / "checkpoint",))
    with layout.open() as a, layout.open() as b:
        first, second = a.read(), b.read()
    assert first == second and len(first) == layout.size
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        assert tar.getnames() == names
        assert tar.getmember("checkpoint").isdir()
        pages = tar.extractfile("checkpoint/pages-1.img")
        assert pages is not None and pages.read() == b"p" * 70000
        assert all(m.mode == (0o700 if m.isdir() else 0o600) for m in tar.getmembers())
    layout.discard()
    assert not (tmp_path / "checkpoint").exists() and (tmp_path / "deleted.files").exists(), "its roots, no more"


def test_a_file_that_shrinks_after_the_dump_fails_the_reader_instead_of_passing_short(tmp_path: Path) -> None:
    (tmp_path / "pages-1.img").write_bytes(b"p" * 5000)
    layout = TarLayout.of([("pages-1.img", tmp_path / "pages-1.img")])
    (tmp_path / "pages-1.img").write_bytes(b"p" * 100)
    with pytest.raises(OSError, match="shrank"), layout.open() as f:
        f.read()


def test_a_post_copy_dump_is_claimed_once_per_checkpoint_on_the_node(tmp_path: Path) -> None:
    """The claim is a file on the node: an agent that restarted mid-stream finds it and refuses a second lazy
    dump (the first page server may still be serving the target); a dump that failed before its page server
    went live gives it back."""
    first = RuntimeDumper(tmp_path / "dump")
    first.claim_lazy("ckpt-app")
    with pytest.raises(LazyAlreadyStarted, match="cannot be resumed"):
        RuntimeDumper(tmp_path / "dump").claim_lazy("ckpt-app")
    RuntimeDumper(tmp_path / "dump").claim_lazy("ckpt-db")  # another container of the pod: its own claim
    first.unclaim_lazy("ckpt-app")
    RuntimeDumper(tmp_path / "dump").claim_lazy("ckpt-app")


def test_the_task_pid_comes_from_the_bundles_init_pid_and_is_none_when_unknown(tmp_path: Path) -> None:
    bundle = tmp_path / "tasks" / "k8s.io" / "abc"
    bundle.mkdir(parents=True)
    (bundle / "init.pid").write_text("4242")
    dumper = RuntimeDumper(tmp_path / "dumps", task_dir=tmp_path / "tasks")
    assert dumper.task_pid("abc") == 4242
    assert dumper.task_pid("gone") is None
    (bundle / "init.pid").write_text("")  # the shim has not written it yet
    assert dumper.task_pid("abc") is None
    assert RuntimeDumper(tmp_path / "dumps").task_pid("abc") is None


class StandInContainerd(tasks_pb2_grpc.TasksServicer):
    """containerd's task API on a unix socket (the runtime is the boundary broken here): a Checkpoint writes one
    CRIU image where its runc options point, or fails the way the runc shim reports a CRIU failure."""

    def __init__(self, socket: Path, fail: str = "", pages: list[bytes] | None = None) -> None:
        self.calls: list[tuple[tasks_pb2.CheckpointTaskRequest, tuple[tuple[str, str], ...]]] = []
        self.fail = fail
        # CRIU's memory: appended to pages-1.img block by block; after the first, the dump waits (at most 10 s)
        # for `first_block_seen`, so a stream that sends nothing before the dump ends is caught.
        self.pages = pages or []
        self.first_block_seen = threading.Event()
        self.waited_for_the_stream = False
        self.server = grpc.server(ThreadPoolExecutor(2))
        tasks_pb2_grpc.add_TasksServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix:{socket}")
        self.server.start()

    def Checkpoint(
        self, request: tasks_pb2.CheckpointTaskRequest, context: grpc.ServicerContext
    ) -> tasks_pb2.CheckpointTaskResponse:
        self.calls.append((request, tuple(context.invocation_metadata())))
        assert request.options.type_url == "containerd.runc.v1.CheckpointOptions"
        options = tasks_pb2.RuncCheckpointOptions.FromString(request.options.value)
        with open(Path(options.image_path) / "pages-1.img", "ab") if self.pages else io.BytesIO() as f:
            for i, block in enumerate(self.pages):
                f.write(block)
                f.flush()
                if i == 0:
                    self.waited_for_the_stream = self.first_block_seen.wait(10)
        if self.fail:
            context.abort(grpc.StatusCode.UNKNOWN, self.fail)
        (Path(options.image_path) / "inventory.img").write_text("inventory\n")
        return tasks_pb2.CheckpointTaskResponse()


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[StandInContainerd]:
    fake = StandInContainerd(tmp_path / "containerd.sock")
    yield fake
    fake.server.stop(None)


def _task(tmp_path: Path, upper: Path) -> Path:
    """A proc root whose process 42 has an overlay root with `upper`."""
    proc = tmp_path / "proc" / "42"
    proc.mkdir(parents=True)
    (proc / "mountinfo").write_text(
        f"1203 1190 0:317 / / rw - overlay overlay rw,lowerdir=/l,upperdir={upper},workdir=/w\n"
    )
    (proc / "statm").write_text("100 10 0 0 0 0 0\n")
    return tmp_path / "proc"


def test_a_dump_asks_containerd_for_the_images_reads_the_changes_beside_it_and_archives_both(
    tmp_path: Path, containerd: StandInContainerd, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="lpm.agent.dump")
    upper = tmp_path / "upper"
    (upper / "tmp").mkdir(parents=True)
    (upper / "tmp" / "count").write_text("7")
    dumper = RuntimeDumper(tmp_path / "dumps", _task(tmp_path, upper), address=str(tmp_path / "containerd.sock"))
    result = dumper.dump("abc", 42, "ck-1-app", timeout=10)
    try:
        with result.open() as raw, tarfile.open(fileobj=io.BytesIO(raw.read())) as tar:
            assert tar.extractfile("checkpoint/inventory.img").read() == b"inventory\n"  # type: ignore[union-attr]
            diff = tarfile.open(fileobj=io.BytesIO(tar.extractfile("rootfs-diff.tar").read()))  # type: ignore[union-attr]
            assert diff.extractfile("tmp/count").read() == b"7"  # type: ignore[union-attr]
    finally:
        result.discard()
    ((request, metadata),) = containerd.calls
    assert request.container_id == "abc" and ("containerd-namespace", "k8s.io") in metadata
    options = tasks_pb2.RuncCheckpointOptions.FromString(request.options.value)
    assert not options.exit, "the source must stay (paused) after its dump: a rollback thaws it"
    assert (
        "dumped ck-1-app through containerd" in caplog.text and "beside them, 2 changes" in caplog.text
    )  # tmp, tmp/count


def test_unreadable_file_changes_fail_the_dump_after_the_runtime_ran_and_leave_nothing_behind(
    tmp_path: Path, containerd: StandInContainerd
) -> None:
    dumper = RuntimeDumper(
        tmp_path / "dumps", _task(tmp_path, tmp_path / "no-upper"), address=str(tmp_path / "containerd.sock")
    )
    with pytest.raises(DumpError, match="file-system changes"):
        dumper.dump("abc", 42, "ck-1-app", timeout=10)
    assert len(containerd.calls) == 1, "the changes are read beside the runtime's dump, not before it"
    assert list((tmp_path / "dumps").iterdir()) == [], "no image (process memory) is left behind"


def test_a_criu_failure_is_told_apart_from_a_runtime_that_cannot_be_reached(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    proc = _task(tmp_path, upper)
    socket = tmp_path / "containerd.sock"
    criu_says = (
        "runc did not terminate successfully: exit status 1: criu failed: type NOTIFY errno 0\n"
        "log file: /run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/criu-dump.log"
    )
    fake = StandInContainerd(socket, fail=criu_says)
    try:
        with pytest.raises(DumpCriuFailed, match="criu-dump.log"):
            RuntimeDumper(tmp_path / "dumps", proc, address=str(socket)).dump("abc", 42, "ck-1-app", timeout=10)
    finally:
        fake.server.stop(None)
    with pytest.raises(DumpError, match="could not checkpoint task abc") as raised:
        RuntimeDumper(tmp_path / "dumps", proc, address=str(tmp_path / "none.sock")).dump("abc", 42, "x", timeout=2)
    assert not isinstance(raised.value, DumpCriuFailed), "no CRIU verdict: the caller dumps through the kubelet"
    assert list((tmp_path / "dumps").iterdir()) == []


class Reader:
    """The push's side of a DumpStream (transfer.chunks, what gRPC sends, here collected as the target's server
    takes it), on its own thread from the moment the dump began the stream; `seen` is set once `threshold` bytes
    came."""

    def __init__(self, seen: threading.Event, threshold: int) -> None:
        self.messages: list[transfer.Received] = []
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        self.size_hint = 0
        self._seen, self._threshold = seen, threshold

    def begin(self, stream: DumpStream) -> None:
        self.size_hint = stream.size_hint
        self.thread = threading.Thread(target=self._read, args=(stream,))
        self.thread.start()

    def _read(self, stream: DumpStream) -> None:
        try:
            for message in transfer.chunks(stream.open, stream.size_hint, CKPT, "app"):
                self.messages.append(transfer.decode(transfer.encode(message)))
                if sum(len(_data(m)) for m in self.messages) >= self._threshold:
                    self._seen.set()
        except BaseException as exc:
            self.error = exc

    def join(self) -> None:
        assert self.thread is not None, "the dump never began its stream"
        self.thread.join(10)

    def received(self) -> Iterator[bytes | memoryview]:
        """What the target's agent reads from the stream (transfer.received: its checksum checked at the end)."""
        return transfer.received(_first(self.messages), iter(self.messages[1:]))


def _data(m: transfer.Received) -> bytes | memoryview:
    return m if isinstance(m, memoryview) else m.data


def _first(messages: list[transfer.Received]) -> agent_pb2.CheckpointChunk:
    assert isinstance(messages[0], agent_pb2.CheckpointChunk), "a push begins with a message that names it"
    return messages[0]


CKPT = "20260101t000000z-abcdef12"
BLOCK = (1 << 20) + 4096  # above dump.MIN_PART and the push's 1 MiB reads: sent while the dump goes on


def test_a_whole_dump_is_streamed_while_criu_writes_its_pages_and_arrives_as_the_archive_would(
    tmp_path: Path,
) -> None:
    """CRIU's page file goes out while the runtime still dumps (the stand-in waits, mid-dump, until the reader
    got its first block); the rest follows once the caller finishes the stream; staged, it is byte for byte what
    the dump wrote, with the agent's own files beside it."""
    blocks = [bytes([i]) * BLOCK for i in range(1, 4)] + [b"tail" * 100]
    fake = StandInContainerd(tmp_path / "containerd.sock", pages=blocks)
    upper = tmp_path / "upper"
    (upper / "tmp").mkdir(parents=True)
    (upper / "tmp" / "count").write_text("7")
    reader = Reader(fake.first_block_seen, 1 << 19)
    totals: list[int] = []
    stream = DumpStream(reader.begin, deadline=time.monotonic() + 30, on_total=totals.append)
    dumper = RuntimeDumper(tmp_path / "dumps", _task(tmp_path, upper), address=str(tmp_path / "containerd.sock"))
    try:
        result = dumper.dump("abc", 42, "ck-1-app", timeout=10, stream=stream)
    finally:
        fake.server.stop(None)
    assert fake.waited_for_the_stream, "the first pages were sent while the runtime was still dumping"
    assert result.stream is stream and stream.sent["checkpoint/pages-1.img"] >= 1 << 19
    assert reader.size_hint >= 10 * 4096, "the hint covers the container's resident memory (statm: 10 pages)"
    stream.finish(result.layout)  # type: ignore[arg-type]
    reader.join()
    assert reader.error is None
    assert totals == [sum(len(_data(m)) for m in reader.messages)], "the progress total is what the stream carried"
    handoff = Handoff(tmp_path / "handoff", scratch=Scratch(None, tmp_path / "staging"))
    handoff.stage(CKPT, "app", reader.received())
    ready = json.loads((tmp_path / "handoff" / CKPT / "app" / "ready").read_text())
    assert (Path(ready["images"]) / "pages-1.img").read_bytes() == b"".join(blocks)
    assert (Path(ready["images"]) / "inventory.img").read_text() == "inventory\n"
    with tarfile.open(ready["rootfs_diff"]) as diff:
        assert diff.extractfile("tmp/count").read() == b"7"  # type: ignore[union-attr]
    result.discard()


def test_a_dump_that_fails_after_its_first_pages_went_ends_the_stream_with_an_error_and_nothing_is_staged(
    tmp_path: Path,
) -> None:
    fake = StandInContainerd(tmp_path / "containerd.sock", fail="criu failed: type NOTIFY", pages=[b"x" * BLOCK] * 2)
    upper = tmp_path / "upper"
    upper.mkdir()
    reader = Reader(fake.first_block_seen, 1 << 19)
    stream = DumpStream(reader.begin, deadline=time.monotonic() + 30)
    dumper = RuntimeDumper(tmp_path / "dumps", _task(tmp_path, upper), address=str(tmp_path / "containerd.sock"))
    try:
        with pytest.raises(DumpCriuFailed):
            dumper.dump("abc", 42, "ck-1-app", timeout=10, stream=stream)
    finally:
        fake.server.stop(None)
    reader.join()
    assert fake.waited_for_the_stream and isinstance(reader.error, DumpError)
    assert "criu failed" in str(reader.error)
    handoff = Handoff(tmp_path / "handoff", scratch=Scratch(None, tmp_path / "staging"))
    assert reader.messages and not any(
        isinstance(m, agent_pb2.CheckpointChunk) and m.last for m in reader.messages
    ), "the stream ended without its last chunk"
    with pytest.raises(transfer.TransferError, match="before its last chunk"):
        handoff.stage(CKPT, "app", reader.received())
    assert not (tmp_path / "handoff" / CKPT / "app" / "ready").exists()
    assert not list((tmp_path / "staging").rglob("*.img")), "no part of the memory is left on the target"


def test_a_stream_nobody_finishes_gives_up_at_its_deadline(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    stream = DumpStream(lambda s: None, deadline=time.monotonic() + 0.2)
    stream.begin(tmp_path / "images", 0)
    with pytest.raises(DumpError, match="deadline"), stream.open() as f:
        f.read()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    writes=st.lists(st.tuples(st.integers(1, 2), st.integers(1, 20000), st.booleans()), min_size=1, max_size=15),
    min_part=st.integers(1, 8192),
    fails=st.booleans(),
)
def test_whatever_went_while_criu_wrote_the_target_stages_what_it_wrote_or_nothing(
    tmp_path: Path, writes: list[tuple[int, int, bool]], min_part: int, fails: bool
) -> None:
    """Any interleaving of CRIU's appends to its page files (here a writer, pausing now and then so that the
    stream's poll sees a file mid-write) with the stream's reads: finished, the target stages exactly the files;
    failed, the stream ends without its last chunk and nothing is staged."""
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    images = root / "checkpoint"
    images.mkdir()
    messages: list[transfer.Received] = []
    errors: list[BaseException] = []

    def read(stream: DumpStream) -> None:
        try:
            for m in transfer.chunks(stream.open, stream.size_hint, CKPT, "app", chunk_size=4096):
                messages.append(transfer.decode(transfer.encode(m)))
        except BaseException as exc:
            errors.append(exc)

    threads: list[threading.Thread] = []

    def begin(s: DumpStream) -> None:
        threads.append(threading.Thread(target=read, args=(s,)))
        threads[-1].start()

    stream = DumpStream(begin, deadline=time.monotonic() + 30, min_part=min_part)
    stream.begin(images, 0)
    for n, (page_file, size, pause) in enumerate(writes):
        with open(images / f"pages-{page_file}.img", "ab") as f:
            f.write(bytes([n % 251]) * size)
        if pause:
            time.sleep(0.003)
    (images / "inventory.img").write_bytes(b"inv")
    if fails:
        stream.fail("criu failed")
    else:
        files = [("checkpoint", images), *((f"checkpoint/{p.name}", p) for p in sorted(images.iterdir()))]
        stream.finish(TarLayout.of(files, roots=(images,)))
    threads[0].join(10)
    staging = Handoff(root / "handoff", scratch=Scratch(None, root / "staging"))
    if fails:
        assert [type(e) for e in errors] == [DumpError]
        assert not any(isinstance(m, agent_pb2.CheckpointChunk) and m.last for m in messages)
        if messages:  # else the target never heard of it
            with pytest.raises(transfer.TransferError):
                staging.stage(CKPT, "app", transfer.received(_first(messages), iter(messages[1:])))
        assert not (root / "handoff" / CKPT / "app" / "ready").exists()
        return
    assert not errors
    staging.stage(CKPT, "app", transfer.received(_first(messages), iter(messages[1:])))
    staged = Path(json.loads((root / "handoff" / CKPT / "app" / "ready").read_text())["images"])
    assert {p.name: p.read_bytes() for p in staged.iterdir()} == {p.name: p.read_bytes() for p in images.iterdir()}
