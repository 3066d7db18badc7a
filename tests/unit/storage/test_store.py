"""The checkpoint store on a local directory: layout, zstd pipeline, manifest, marker, verification, cleanup."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lpm.api.names import InvalidName
from lpm.storage.backend import CheckpointIncomplete, IntegrityError, StorageFull
from lpm.storage.posix import PosixBackend
from lpm.storage.store import CheckpointStore
from lpm.storage.uri import ArtifactRef, CheckpointKey, resolve_under

POD = "6a2b3c4d-1111-4222-8333-944455556666"


def store_at(root: Path, node: str = "node-1") -> CheckpointStore:
    return CheckpointStore(PosixBackend(root), node)


def test_put_archive_streams_through_zstd_and_records_both_hashes(tmp_path: Path) -> None:
    data = os.urandom(1 << 20) + b"\0" * (3 << 20)
    store = store_at(tmp_path)
    key = CheckpointKey(POD, "c1")
    m = store.put_archive(key.artifact("app"), io.BytesIO(data), zstd_level=5, zstd_threads=2)
    assert m.info.raw_size == len(data) and m.info.raw_sha256 == hashlib.sha256(data).hexdigest()
    stored = (tmp_path / key.artifact("app").archive_path).read_bytes()
    assert m.size == len(stored) < len(data) and m.sha256 == hashlib.sha256(stored).hexdigest()
    assert m.info.compression == "zstd" and m.info.zstd_level == 5 and m.info.stored_at
    store.complete(key, ["app"])
    assert b"".join(store.read_raw(key.artifact("app"))) == data


def test_files_are_0600_and_directories_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = store_at(tmp_path)
        key = CheckpointKey(POD, "perm")
        store.put_archive(key.artifact("app"), io.BytesIO(b"x" * 1000))
        store.complete(key, ["app"])
    finally:
        os.umask(old)
    for path in (tmp_path / POD).rglob("*"):
        want = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == want, path


def test_reads_refuse_a_checkpoint_without_its_completion_marker(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    ref = CheckpointKey(POD, "nomark").artifact("app")
    store.put_archive(ref, io.BytesIO(b"payload"))
    with pytest.raises(CheckpointIncomplete):
        list(store.read_raw(ref))
    with pytest.raises(CheckpointIncomplete):
        store.complete(ref.key, ["app", "sidecar"])  # a container was never stored
    assert not store.is_complete(ref.key)


@pytest.mark.parametrize("damage", ["flip", "truncate", "append"])
def test_damaged_archive_fails_verification_on_read_and_on_complete(tmp_path: Path, damage: str) -> None:
    store = store_at(tmp_path)
    ref = CheckpointKey(POD, "dmg").artifact("app")
    store.put_archive(ref, io.BytesIO(os.urandom(200_000)))
    path = tmp_path / ref.archive_path
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[100] ^= 1
    elif damage == "truncate":
        del data[-10:]
    else:
        data += b"junk"
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        store.complete(ref.key, ["app"])
    assert not store.is_complete(ref.key)


def test_verified_read_of_a_sealed_checkpoint_detects_later_corruption(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    ref = CheckpointKey(POD, "late").artifact("app")
    store.put_archive(ref, io.BytesIO(os.urandom(300_000)))
    store.complete(ref.key, ["app"])
    path = tmp_path / ref.archive_path
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=ref.uri):
        b"".join(store.read_artifact(ref))


def test_complete_writes_a_marker_naming_every_verified_artifact(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    key = CheckpointKey(POD, "multi")
    shas = {n: store.put_archive(key.artifact(n), io.BytesIO(n.encode() * 1000)).sha256 for n in ("a", "b")}
    store.complete(key, ["b", "a"])
    marker = json.loads((tmp_path / key.marker_path).read_text())
    assert marker["containers"] == ["a", "b"]
    assert {n: v["sha256"] for n, v in marker["artifacts"].items()} == shas


def test_startup_sweep_removes_own_and_old_temp_files_but_not_a_live_writer_elsewhere(tmp_path: Path) -> None:
    d = tmp_path / POD / "ck" / "app"
    d.mkdir(parents=True)
    now = int(time.time())
    own = d / f".dump.tar.zst.tmp-node1-{now}-aaaaaa"
    old_other = d / f".dump.tar.zst.tmp-node2-{now - 7 * 3600}-bbbbbb"
    live_other = d / f".dump.tar.zst.tmp-node2-{now}-cccccc"
    marker_temp = tmp_path / POD / "ck" / f"..checkpoint-complete.tmp-node1-{now}-dddddd"
    for p in (own, old_other, live_other, marker_temp):
        p.write_bytes(b"partial")
    removed = store_at(tmp_path, "node-1").clean_stale_temps()
    assert sorted(removed) == sorted(str(p.relative_to(tmp_path)) for p in (own, old_other, marker_temp))
    assert live_other.exists()


def test_a_full_volume_is_reported_and_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    store = store_at(tmp_path)
    ref = CheckpointKey(POD, "full").artifact("app")
    backend = store.backend
    real = backend.open_write

    class Full:
        def __init__(self, inner):
            self.inner = inner

        def write(self, data):
            raise OSError(28, "No space left on device")

        def sync(self):
            pass

        def close(self):
            self.inner.close()

    monkeypatch.setattr(backend, "open_write", lambda p: Full(real(p)))
    with pytest.raises(StorageFull, match="no space left"):
        store.put_archive(ref, io.BytesIO(b"x" * 100_000))
    assert list((tmp_path / ref.relative_dir).iterdir()) == []


# ---- properties --------------------------------------------------------------------------------------------

SEGMENT = st.sampled_from(["..", ".", "", "a", "b", "/", "//", "\x00", "..%2f", "\\", "~", " "])


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(SEGMENT | st.text(min_size=1, max_size=5), min_size=1, max_size=8))
def test_resolve_under_never_escapes_the_root(tmp_path: Path, parts: list[str]) -> None:
    relative = "/".join(parts)
    root = tmp_path / "root"
    try:
        resolved = resolve_under(root, relative)
    except InvalidName:
        return
    normal = os.path.normpath(resolved)
    assert normal == str(root) or normal.startswith(str(root) + os.sep)


@settings(max_examples=300)
@given(
    uri=st.text(max_size=120)
    | st.builds(
        lambda a, b, c: f"shared://{a}/{b}/{c}/dump.tar.zst",
        st.text(max_size=40),
        st.text(max_size=40),
        st.text(max_size=40),
    )
)
def test_any_parsed_artifact_uri_names_a_path_inside_the_repository(uri: str) -> None:
    try:
        ref = ArtifactRef.parse(uri)
    except InvalidName:
        return
    assert ref.uri == uri
    path = os.path.normpath(os.path.join("/repo", ref.archive_path))
    assert path.startswith("/repo/") and path.count("/") == 5


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300_000), level=st.integers(1, 19))
def test_whatever_goes_in_comes_out_verified(tmp_path_factory, data: bytes, level: int) -> None:
    root = tmp_path_factory.mktemp("prop")
    store = store_at(root)
    key = CheckpointKey(POD, "prop")
    store.put_archive(key.artifact("app"), io.BytesIO(data), zstd_level=level)
    store.complete(key, ["app"])
    assert b"".join(store.read_raw(key.artifact("app"))) == data


def test_list_all_names_complete_and_unsealed_checkpoints_and_skips_temps_and_strangers(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    done, open_ = CheckpointKey(POD, "done"), CheckpointKey(POD, "open")
    for key in (done, open_):
        store.put_archive(key.artifact("app"), io.BytesIO(b"x" * 100))
    store.complete(done, ["app"])
    (tmp_path / POD / ".open.tmp-n1-1-abc").write_bytes(b"")  # a writer's temp file
    (tmp_path / "not-a-pod-uid" / "x").mkdir(parents=True)  # something else in the repository
    assert store.list_all() == [(done, True), (open_, False)]
