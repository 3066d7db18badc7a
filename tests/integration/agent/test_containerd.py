"""The agent against a private containerd (the same v2.x the local cluster builds): checkpoint images are imported
and unpacked (zstd layer, annotations), and sources are frozen the way containerd's own checkpoint keeps them frozen.

containerd is not packaged for bookworm; the cluster's build (infra/local/deps/containerd.sh) caches it under
$LPM_CACHE/containerd-<version>/bin. Without that build this test is skipped, saying so."""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lpm.agent.images import ImageLoader, default_image_ref
from lpm.api.agent.v1 import agent_pb2
from lpm.api.constants import IMAGE_ANNOTATION_CRIO_CHECKPOINT_NAME, IMAGE_ANNOTATION_CRIU_CONTAINER_NAME
from lpm.storage.backend import IntegrityError
from lpm.storage.posix import PosixBackend
from lpm.storage.store import CheckpointStore
from lpm.storage.uri import CheckpointKey


def containerd_bin() -> Path | None:
    found = shutil.which("containerd")
    if found:
        return Path(found).parent
    cache = os.environ.get("LPM_CACHE", "/var/cache/lpm")
    for candidate in sorted(glob.glob(f"{cache}/containerd-v2*/bin/containerd"), reverse=True):
        return Path(candidate).parent
    return None


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    bin_dir = containerd_bin()
    if bin_dir is None:
        pytest.skip("no containerd v2 binary (build it with infra/local/deps/containerd.sh)")
    d = tmp_path / "ctrd"
    d.mkdir()
    sock = d / "containerd.sock"
    (d / "config.toml").write_text(
        f'version = 3\nroot = "{d / "root"}"\nstate = "{d / "state"}"\n'
        "disabled_plugins = ["
        '"io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime"]\n'
        f'[grpc]\n  address = "{sock}"\n'
    )
    with open(d / "log", "wb") as log:
        proc = subprocess.Popen(
            [str(bin_dir / "containerd"), "--config", str(d / "config.toml")], stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (d / "log").read_text()[-2000:]
            time.sleep(0.05)
        yield bin_dir / "ctr", sock
    finally:
        ctr = [str(bin_dir / "ctr"), "--address", str(sock), "-n", "k8s.io"]
        for task in subprocess.run([*ctr, "tasks", "ls", "-q"], capture_output=True, text=True).stdout.split():
            subprocess.run([*ctr, "tasks", "resume", task], capture_output=True)
            subprocess.run([*ctr, "tasks", "kill", "-s", "KILL", task], capture_output=True)
            subprocess.run([*ctr, "tasks", "rm", "-f", task], capture_output=True)
        for c in subprocess.run([*ctr, "containers", "ls", "-q"], capture_output=True, text=True).stdout.split():
            subprocess.run([*ctr, "containers", "rm", c], capture_output=True)
        proc.terminate()
        proc.wait(timeout=30)
        # containerd's mount manager can leave its own mounts below the state dir: leave none behind.
        for _ in range(5):
            left = [m.split()[1] for m in Path("/proc/mounts").read_text().splitlines() if str(d) in m.split()[1]]
            if not left:
                break
            for target in reversed(left):
                done = subprocess.run(["umount", target], capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    print(f"umount {target}: {done.stderr.strip()}")
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            for leftover in sorted(hierarchy.glob("lpm-ctrd-test*/**"), key=lambda q: len(q.parts), reverse=True):
                if leftover.is_dir():
                    leftover.rmdir()


def stored_checkpoint(
    tmp_path: Path, checkpoint_id: str, files: list[tuple[str, bytes]]
) -> tuple[CheckpointStore, CheckpointKey]:
    """A sealed checkpoint of container "web" whose archive holds `files`, in a fresh repository."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw.seek(0)
    (tmp_path / "repo").mkdir()
    store = CheckpointStore(PosixBackend(tmp_path / "repo"))
    key = CheckpointKey("6a2b3c4d-1111-4222-8333-944455556666", checkpoint_id)
    store.put_archive(key.artifact("web"), raw)
    store.complete(key, ["web"])
    return store, key


def test_checkpoint_image_is_imported_and_unpacked_by_containerd(tmp_path: Path, containerd) -> None:
    ctr, sock = containerd
    files = [("checkpoint/inventory.img", os.urandom(4096)), ("config.dump", b"{}"), ("spec.dump", b"{}")]
    store, key = stored_checkpoint(tmp_path, "ck-ctrd", files)

    loader = ImageLoader(runtime="containerd", containerd_address=str(sock), ctr=str(ctr), work_dir=str(tmp_path / "w"))
    assert loader.version().startswith("containerd v2")
    ref = default_image_ref(key.artifact("web"))
    loaded = loader.convert(store, key.artifact("web"), "web", ref)
    assert loaded.image_ref == ref and loaded.image_id.startswith("sha256:")

    base = [str(ctr), "--address", str(sock), "-n", "k8s.io"]
    listing = subprocess.run([*base, "images", "ls", "-q"], capture_output=True, text=True, check=True).stdout
    assert ref in listing.split()
    manifest = json.loads(
        subprocess.run([*base, "content", "get", loaded.image_id], capture_output=True, check=True).stdout
    )
    assert manifest["annotations"][IMAGE_ANNOTATION_CRIU_CONTAINER_NAME] == "web"
    assert manifest["annotations"][IMAGE_ANNOTATION_CRIO_CHECKPOINT_NAME] == "web"
    mnt = tmp_path / "ctrd" / "mnt"
    mnt.mkdir()
    subprocess.run([*base, "images", "mount", ref, str(mnt)], capture_output=True, check=True)
    try:
        assert sorted(p.name for p in mnt.iterdir()) == ["checkpoint", "config.dump", "spec.dump"]
    finally:
        subprocess.run([*base, "images", "unmount", str(mnt)], capture_output=True, check=False)


COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done"


def run_counter(ctr: Path, sock: Path, tmp_path: Path, name: str) -> tuple[Path, Path]:
    rootfs = tmp_path / f"{name}-rootfs"
    for d in ("bin", "tmp", "proc", "dev", "sys"):
        (rootfs / d).mkdir(parents=True)
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in ("sh", "sleep"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    cgroup = start_task(ctr, sock, name, rootfs, rootfs / "tmp" / "count")
    return rootfs / "tmp" / "count", Path("/sys/fs/cgroup/freezer") / cgroup.lstrip("/")


def start_task(ctr: Path, sock: Path, name: str, rootfs: Path, count: Path, before: str = "") -> str:
    """`ctr run` of the counter (after the shell commands `before`) on `rootfs`; waits until `count` (where the
    counter's /tmp/count is seen from here) has a value. Returns the task's cgroup."""
    cgroup = f"/lpm-ctrd-test-{name}/{name}"
    subprocess.run(
        [
            str(ctr),
            "--address",
            str(sock),
            "-n",
            "k8s.io",
            "run",
            "-d",
            "--cgroup",
            cgroup,
            "--rootfs",
            str(rootfs),
            name,
            "/bin/sh",
            "-c",
            before + COUNTER,
        ],
        capture_output=True,
        check=True,
    )
    deadline = time.monotonic() + 30
    while not (count.exists() and count.read_text().strip()):
        assert time.monotonic() < deadline, "counter did not start"
        time.sleep(0.02)
    return cgroup


def read(count: Path) -> int:
    return int(count.read_text().strip() or 0)


def test_a_task_paused_through_containerd_is_checkpointed_by_containerd_and_stays_paused(
    tmp_path: Path, containerd
) -> None:
    from lpm.agent import freezer as fz

    ctr, sock = containerd
    count, _ = run_counter(ctr, sock, tmp_path, "paused")
    control = fz.ContainerdControl(address=str(sock), ctr=str(ctr))
    freezer = fz.Freezer(lambda uid, name: "paused", tmp_path / "state", control=control)
    freezer.freeze("ck-1", "6a2b3c4d-1111-4222-8333-944455556666", ["app"])
    freezer.freeze("ck-1", "6a2b3c4d-1111-4222-8333-944455556666", ["app"])  # idempotent
    assert control.frozen("paused")
    at_freeze = read(count)
    # containerd's checkpoint (the CRI path uses the same client call) of a task it knows is paused:
    done = subprocess.run(
        [str(ctr), "--address", str(sock), "-n", "k8s.io", "tasks", "checkpoint", "paused"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert control.status("paused") == "PAUSED", "containerd must not resume a task it found paused"
    time.sleep(0.3)
    assert read(count) == at_freeze
    freezer.thaw("ck-1", "6a2b3c4d-1111-4222-8333-944455556666", [])
    assert control.status("paused") == "RUNNING"
    deadline = time.monotonic() + 30
    while read(count) <= at_freeze:
        assert time.monotonic() < deadline, "the counter did not advance after thaw"
        time.sleep(0.02)


def test_a_cgroup_frozen_behind_containerds_back_makes_its_checkpoint_fail(tmp_path: Path, containerd) -> None:
    """Why the agent pauses through containerd on containerd nodes (documents containerd 2.2 behaviour)."""
    from lpm.agent import freezer as fz

    ctr, sock = containerd
    _, cgroup = run_counter(ctr, sock, tmp_path, "raw")
    fz.freeze_cgroup(cgroup)
    try:
        done = subprocess.run(
            [str(ctr), "--address", str(sock), "-n", "k8s.io", "tasks", "checkpoint", "raw"],
            capture_output=True,
            text=True,
        )
        assert done.returncode != 0 and "pause" in done.stderr
    finally:
        fz.thaw_cgroup(cgroup)


def test_a_corrupt_stored_checkpoint_is_refused_and_containerd_keeps_no_image(tmp_path: Path, containerd) -> None:
    ctr, sock = containerd
    store, key = stored_checkpoint(tmp_path, "ck-rot", [("checkpoint/pages-1.img", os.urandom(4 << 20))])
    stored = tmp_path / "repo" / key.pod_uid / key.checkpoint_id / "web" / "dump.tar.zst"
    with open(stored, "r+b") as f:  # bit rot after the checkpoint was sealed
        f.seek(stored.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))

    loader = ImageLoader(runtime="containerd", containerd_address=str(sock), ctr=str(ctr), work_dir=str(tmp_path / "w"))
    ref = default_image_ref(key.artifact("web"))
    with pytest.raises(IntegrityError):
        loader.convert(store, key.artifact("web"), "web", ref)
    base = [str(ctr), "--address", str(sock), "-n", "k8s.io"]
    listing = subprocess.run([*base, "images", "ls", "-q"], capture_output=True, text=True, check=True).stdout
    assert ref not in listing.split()


def test_the_runtime_dump_takes_a_paused_tasks_images_and_overlay_changes_and_leaves_it_paused(
    tmp_path: Path, containerd
) -> None:
    """The Live engine's source-side dump (lpm.agent.dump) on a real containerd task with an overlay root:
    CRIU's images through `ctr tasks checkpoint --image-path`, the file-system changes from the upper
    directory, the kubelet archive's layout, and the task still paused afterwards."""
    from lpm.agent import freezer as fz
    from lpm.agent import transfer
    from lpm.agent.dump import DumpStream, RuntimeDumper, TarLayout
    from lpm.agent.handoff import Handoff
    from lpm.agent.scratch import Scratch

    ctr, sock = containerd
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "ovl-work", "merged"))
    for sub in ("bin", "tmp", "proc", "dev", "sys", "etc"):
        (lower / sub).mkdir(parents=True)
    shutil.copy2("/bin/busybox", lower / "bin" / "busybox")
    for applet in ("sh", "sleep", "rm", "yes", "head"):
        (lower / "bin" / applet).symlink_to("busybox")
    (lower / "etc" / "motd").write_text("from the image")
    for path in (upper, work, merged):
        path.mkdir()
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True)
    try:
        count = upper / "tmp" / "count"
        # 16 MB in the shell's memory: CRIU writes its pages for long enough that some go while it writes.
        start_task(
            ctr, sock, "dump", merged, count, before="rm /etc/motd; x=$(yes 0123456789abcdef | head -c 16000000); "
        )
        control = fz.ContainerdControl(address=str(sock), ctr=str(ctr))
        freezer = fz.Freezer(lambda uid, name: "dump", tmp_path / "state", control=control)
        freezer.freeze("ck-d", "6a2b3c4d-1111-4222-8333-944455556666", ["app"])
        at_freeze = read(count)

        tasks = sock.parent / "state" / "io.containerd.runtime.v2.task"
        dumper = RuntimeDumper(tmp_path / "dumps", address=str(sock), ctr=str(ctr), task_dir=tasks)
        assert dumper.usable() == ""
        assert dumper.task_pid("dump") == control.pid("dump"), "the bundle's init.pid is containerd's task pid"
        # The push's stream, read as the push reads it, in small parts: the pages CRIU writes while the poll
        # looks go early (how many is up to timing, so it is printed, not asserted: tests/unit/agent/test_dump.py
        # makes it certain with a stand-in runtime); whatever went early, the target must get what CRIU wrote.
        messages: list[transfer.Received] = []  # as the target's server takes them off the wire
        pushing: list[threading.Thread] = []

        def send(stream: DumpStream) -> None:
            messages.extend(transfer.decode(transfer.encode(m)) for m in transfer.chunks(stream.open, 0, "c", "a"))

        def push(stream: DumpStream) -> None:
            pushing.append(threading.Thread(target=send, args=(stream,)))
            pushing[-1].start()

        stream = DumpStream(push, time.monotonic() + 60, min_part=4096)
        result = dumper.dump("dump", control.pid("dump"), "ck-d-app", timeout=60, stream=stream)
        try:
            assert result.stream is stream and pushing and stream.images is not None, "a whole dump streams"
            early = len(messages)
            assert isinstance(result.layout, TarLayout)
            stream.finish(result.layout)
            pushing[0].join(30)
            print(f"{early} of {len(messages)} messages were sent before the dump was complete")
            handoff = Handoff(tmp_path / "handoff", scratch=Scratch(None, tmp_path / "staging"))
            first = messages[0]
            assert isinstance(first, agent_pb2.CheckpointChunk)
            handoff.stage("ck-d", "app", transfer.received(first, iter(messages[1:])))
            staged = Path(json.loads((tmp_path / "handoff" / "ck-d" / "app" / "ready").read_text())["images"])
            assert {p.name: p.read_bytes() for p in staged.iterdir()} == {
                p.name: p.read_bytes() for p in stream.images.iterdir()
            }, "the target has exactly what CRIU wrote"
            assert result.local_path.stat().st_mode & 0o777 == 0o700
            archive = tmp_path / "archive.tar"  # what the push and the store read, written here to look at it
            with result.open() as raw:
                archive.write_bytes(raw.read())
            assert archive.stat().st_size == result.size
            with tarfile.open(archive) as tar:
                names = tar.getnames()
                assert "checkpoint/inventory.img" in names and any(n.startswith("checkpoint/pages-") for n in names)
                assert json.loads(tar.extractfile("deleted.files").read()) == ["/etc/motd"]  # type: ignore[union-attr]
                diff = tarfile.open(fileobj=io.BytesIO(tar.extractfile("rootfs-diff.tar").read()))  # type: ignore[union-attr]
                assert int(diff.extractfile("tmp/count").read()) == at_freeze  # type: ignore[union-attr]
                assert json.loads(tar.extractfile("config.dump").read())["id"] == "dump"  # type: ignore[union-attr]
            # Forensics read it as they read the kubelet's archives (tests/integration/agent/setup-host.sh).
            assert shutil.which("checkpointctl"), "checkpointctl missing: run tests/integration/agent/setup-host.sh"
            shown = subprocess.run(["checkpointctl", "show", str(archive)], capture_output=True, text=True, check=False)
            assert shown.returncode == 0, shown.stderr
            assert "dump" in shown.stdout and "runc" in shown.stdout, shown.stdout
        finally:
            result.discard()
        assert list((tmp_path / "dumps").iterdir()) == [], "nothing of the dump (process memory) is left behind"
        assert control.status("dump") == "PAUSED", "the dump must leave the source paused"
        time.sleep(0.3)
        assert read(count) == at_freeze
        freezer.thaw("ck-d", "6a2b3c4d-1111-4222-8333-944455556666", [])
        deadline = time.monotonic() + 30
        while read(count) <= at_freeze:
            assert time.monotonic() < deadline, "the counter did not advance after thaw"
            time.sleep(0.02)
    finally:
        base = [str(ctr), "--address", str(sock), "-n", "k8s.io"]
        subprocess.run([*base, "tasks", "kill", "-s", "KILL", "dump"], capture_output=True, check=False)
        time.sleep(0.5)
        subprocess.run([*base, "tasks", "rm", "-f", "dump"], capture_output=True, check=False)
        subprocess.run([*base, "containers", "rm", "dump"], capture_output=True, check=False)
        subprocess.run(["umount", "-l", str(merged)], check=False)
