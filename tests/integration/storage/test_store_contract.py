"""The checkpoint store's contract, on every backend (POSIX path and NFSv3 against a real nfs-ganesha).

Each test gets a private repository (`repo`, parametrized over the backends); `repo.store()` is another
agent's store on it, which on NFS means another NFS client.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from integration.storage.conftest import Repo

from lpm.storage import sealing
from lpm.storage.backend import TEMP_INFIX, CheckpointIncomplete, IntegrityError, StorageFull
from lpm.storage.nfs import NfsUnavailable, RetryPolicy
from lpm.storage.sealing import KeyRing
from lpm.storage.store import CheckpointStore
from lpm.storage.uri import ArtifactRef, CheckpointKey

MiB = 1 << 20
POD = "6a2b3c4d-1111-4222-8333-944455556666"


def payload(size: int, seed: int) -> bytes:
    block = hashlib.sha256(f"{seed}".encode()).digest() * (MiB // 32)
    return (block * (size // len(block) + 1))[:size]


def chunks(data: bytes, size: int = MiB) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def read_all(store: CheckpointStore, ref: ArtifactRef) -> bytes:
    return b"".join(store.read_artifact(ref))


def stored_bytes(store: CheckpointStore, path: str) -> bytes:
    stream, out, buffer = store.backend.open_read(path), bytearray(), bytearray(MiB)
    try:
        while n := stream.readinto(buffer):
            out += buffer[:n]
    finally:
        stream.close()
    return bytes(out)


def temp_files(store: CheckpointStore, key: CheckpointKey) -> list[str]:
    found = []
    for directory in [key.relative_dir] + [f"{key.relative_dir}/{n}" for n in store.backend.listdir(key.relative_dir)]:
        found += [f"{directory}/{n}" for n in store.backend.listdir(directory) if TEMP_INFIX in n]
    return found


def test_sealed_archives_round_trip_between_agents_and_damage_on_the_server_is_refused(repo: Repo) -> None:
    """Encryption at rest over each backend: another agent holding the key reads what one wrote; the bytes on
    the server are ciphertext; one flipped byte written to the server is refused, never yielded."""
    ring = KeyRing({"2026-12": os.urandom(32)}, "2026-12")
    writer, reader = repo.store(keys=ring), repo.store(keys=ring)
    data = b"API_TOKEN=abc123;" * (MiB // 16) + os.urandom(5 * MiB)  # incompressible: several sealed chunks
    key = CheckpointKey(POD, "sealed")
    ref = key.artifact("app")
    m = writer.put_archive(ref, io.BytesIO(data))
    writer.complete(key, ["app"])
    assert m.info.key_id == "2026-12" and m.info.encryption
    stored = stored_bytes(reader, ref.archive_path)
    assert hashlib.sha256(stored).hexdigest() == m.sha256
    assert b"API_TOKEN" not in stored
    assert b"".join(reader.read_raw(ref)) == data
    position = len(stored) // 2
    damaged = bytearray(stored)
    damaged[position] ^= 1
    stream = writer.backend.open_write(ref.archive_path)  # what a bad disk or an attacker on the server does
    stream.write(bytes(damaged))
    stream.sync()
    stream.close()
    header = len(sealing.MAGIC) + 4 + int.from_bytes(stored[8:12], "big")
    bad_chunk = (position - header) // (sealing.CHUNK + sealing.TAG)
    yielded = bytearray()
    with pytest.raises(IntegrityError, match=f"chunk {bad_chunk} fails authentication"):
        for chunk in reader.read_artifact(ref):
            yielded += chunk
    assert bad_chunk >= 2 and len(yielded) == bad_chunk * sealing.CHUNK  # what precedes the damage, none of it
    for s in (writer, reader):
        s.close()


def test_two_agents_write_and_read_concurrently(repo: Repo) -> None:
    stores = [repo.store(), repo.store()]
    data = {(a, c): payload(6 * MiB + a * 1000 + c, seed=10 * a + c) for a in (0, 1) for c in (0, 1)}

    def write(agent: int) -> CheckpointKey:
        key = CheckpointKey(POD, f"ckpt-agent-{agent}")
        for c in (0, 1):
            stores[agent].write_artifact(key.artifact(f"app-{c}"), chunks(data[(agent, c)]))
        stores[agent].complete(key, ["app-0", "app-1"])
        return key

    with ThreadPoolExecutor(2) as pool:
        keys = list(pool.map(write, (0, 1)))

    def read_other(agent: int) -> list[bytes]:
        other = keys[1 - agent]
        return [read_all(stores[agent], other.artifact(f"app-{c}")) for c in (0, 1)]

    with ThreadPoolExecutor(2) as pool:
        seen = list(pool.map(read_other, (0, 1)))
    for agent in (0, 1):
        assert seen[agent] == [data[(1 - agent, 0)], data[(1 - agent, 1)]]
    assert stores[0].list_complete(POD) == sorted(keys, key=lambda k: k.checkpoint_id)
    for s in stores:
        s.close()


def test_reader_never_sees_a_checkpoint_without_its_completion_marker(repo: Repo) -> None:
    writer, reader = repo.store(), repo.store()
    key = CheckpointKey(POD, "ckpt-marker")
    data = {c: payload(3 * MiB, seed=c) for c in range(3)}
    observations: list[str] = []
    done = threading.Event()

    def verify() -> None:
        for c in range(3):
            assert read_all(reader, key.artifact(f"c{c}")) == data[c]
        observations.append("complete")

    def watch() -> None:
        # Whenever the reader is told the checkpoint exists, every archive must read back whole and verified.
        while not done.is_set():
            if key in reader.list_complete(POD) or reader.is_complete(key):
                return verify()
            try:
                reader.manifest(key.artifact("c0"))
            except CheckpointIncomplete:
                observations.append("absent")
                continue
            return verify()  # the marker appeared in between

    with ThreadPoolExecutor(1) as pool:
        watcher = pool.submit(watch)
        try:
            for c in range(3):
                writer.write_artifact(key.artifact(f"c{c}"), chunks(data[c]))
            # Every archive and manifest is in place, but without the marker the checkpoint does not exist.
            assert not reader.is_complete(key)
            with pytest.raises(CheckpointIncomplete, match="no completion marker"):
                read_all(reader, key.artifact("c0"))
            writer.complete(key, [f"c{c}" for c in range(3)])
            watcher.result(timeout=120)
        finally:
            done.set()
    assert observations and observations[-1] == "complete"
    assert reader.list_complete(POD) == [key]


def test_publish_writes_a_temp_file_syncs_and_renames_atomically(repo: Repo) -> None:
    writer, reader = repo.store(), repo.store()
    ref = CheckpointKey(POD, "ckpt-atomic").artifact("app")
    old, new = payload(4 * MiB, seed=1), payload(5 * MiB, seed=2)
    writer.write_artifact(ref, chunks(old))
    writer.complete(ref.key, ["app"])

    halfway, resume = threading.Event(), threading.Event()

    def slow(data: bytes) -> Iterator[bytes]:
        for i, chunk in enumerate(chunks(data)):
            if i == 2:
                halfway.set()
                assert resume.wait(60)
            yield chunk

    republish = threading.Thread(target=writer.write_artifact, args=(ref, slow(new)))
    republish.start()
    try:
        assert halfway.wait(60)
        # Mid-stream: the bytes go to a temp name in the same directory; the published name is untouched.
        temps = [n for n in reader.backend.listdir(ref.relative_dir) if TEMP_INFIX in n]
        assert len(temps) == 1 and temps[0].startswith(".dump.tar.zst")
        assert read_all(reader, ref) == old
    finally:
        resume.set()
        republish.join()
    # After the rename the other agent sees the whole new archive at once, and no temp file remains.
    assert read_all(reader, ref) == new
    assert temp_files(reader, ref.key) == []


WRITER = textwrap.dedent(
    """
    import sys, time
    from lpm.storage.store import open_store
    from lpm.storage.uri import CheckpointKey
    store = open_store(sys.argv[1])
    def stream():
        for i in range(64):
            yield bytes([i]) * (1 << 20)
            if i == 3:
                print("streaming", flush=True)
                time.sleep(600)
    store.write_artifact(CheckpointKey(sys.argv[2], "ckpt-killed").artifact("app"), stream())
    """
)


def test_writer_killed_mid_stream_leaves_nothing_readable_and_next_run_cleans_its_temp_files(repo: Repo) -> None:
    key = CheckpointKey(POD, "ckpt-killed")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, repo.storage, POD], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "streaming"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()

    store = repo.store()
    assert not store.is_complete(key)
    with pytest.raises(CheckpointIncomplete):
        read_all(store, key.artifact("app"))
    assert not store.backend.exists(key.artifact("app").archive_path)
    left = temp_files(store, key)
    assert len(left) == 1, f"the killed writer should have left exactly its temp file, found {left}"

    # The next run cleans up, then writes the checkpoint for real.
    assert store.clean_temp(key) == left
    assert temp_files(store, key) == []
    data = payload(2 * MiB, seed=7)
    store.write_artifact(key.artifact("app"), chunks(data))
    store.complete(key, ["app"])
    assert read_all(repo.store(), key.artifact("app")) == data


def test_full_volume_gives_a_clear_enospc_error_and_no_partial_artifact(repo: Repo) -> None:
    store = repo.store(small=True)
    ref = CheckpointKey(POD, "ckpt-full").artifact("app")
    with pytest.raises(StorageFull, match="no space left") as raised:
        store.write_artifact(ref, chunks(payload(16 * MiB, seed=3)))
    cause = raised.value.__cause__
    assert isinstance(cause, OSError) and cause.errno == errno.ENOSPC
    assert not store.backend.exists(ref.archive_path)
    assert not store.backend.exists(ref.manifest_path)
    assert temp_files(store, ref.key) == []
    assert not store.is_complete(ref.key)
    # The space was given back: a checkpoint that fits still goes through.
    small = payload(MiB, seed=4)
    store.write_artifact(ref, chunks(small))
    store.complete(ref.key, ["app"])
    assert read_all(repo.store(small=True), ref) == small


def test_handle_gone_stale_after_a_concurrent_rename_is_reopened(repo: Repo, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lpm.storage.nfs")
    writer, reader, republisher = repo.store(), repo.store(), repo.store()
    ref = CheckpointKey(POD, "ckpt-stale").artifact("app")
    data = payload(24 * MiB, seed=5)
    writer.write_artifact(ref, chunks(data))
    writer.complete(ref.key, ["app"])

    stream = reader.read_artifact(ref)
    first = next(stream)
    # Another agent republishes the same archive (a retried checkpoint): a new file is renamed over it.
    republisher.write_artifact(ref, chunks(data))
    assert first + b"".join(stream) == data
    if repo.kind == "nfs":
        assert "went stale" in caplog.text, "the reader's handle should have gone stale and been reopened"


def test_archive_replaced_with_other_bytes_mid_read_is_never_mixed_silently(repo: Repo) -> None:
    writer, reader = repo.store(), repo.store()
    ref = CheckpointKey(POD, "ckpt-replaced").artifact("app")
    old = payload(24 * MiB, seed=8)
    writer.write_artifact(ref, chunks(old))
    writer.complete(ref.key, ["app"])
    stream = reader.read_artifact(ref)
    first = next(stream)
    writer.write_artifact(ref, chunks(payload(24 * MiB, seed=9)))
    try:
        # POSIX keeps reading the old inode; NFS reopens by name and the sha256 check catches the change.
        assert first + b"".join(stream) == old
    except IntegrityError as exc:
        assert ref.uri in str(exc)


def test_server_restarted_mid_read_is_retried_then_fails_clearly(repo: Repo) -> None:
    if repo.server is None:
        pytest.skip("a mounted path has no server to restart")
    server = repo.server
    retry = RetryPolicy(attempts=4, first_backoff=0.5, max_backoff=2.0, connect_timeout=2.0, operation_timeout=3.0)
    store = repo.store(retry)
    ref = CheckpointKey(POD, "ckpt-restart").artifact("app")
    data = payload(24 * MiB, seed=6)
    store.write_artifact(ref, chunks(data))
    store.complete(ref.key, ["app"])

    # Back within the retry budget: the read resumes where it stopped and verifies.
    stream = store.read_artifact(ref)
    first = next(stream)
    server.stop()
    restart = threading.Timer(1.0, server.start)
    restart.start()
    try:
        assert first + b"".join(stream) == data
    finally:
        restart.join()

    # Gone for longer than the budget: a bounded number of retries, then an error naming server and file.
    stream = store.read_artifact(ref)
    next(stream)
    server.stop()
    try:
        with pytest.raises(NfsUnavailable, match=rf"127\.0\.0\.1:{server.nfs_port} unavailable.*failed 4 times"):
            b"".join(stream)
    finally:
        server.start()
    assert read_all(repo.store(), ref) == data
