"""Encryption at rest: sealed streams round-trip, and every kind of damage, a wrong key or a missing key is
caught before a single unauthenticated byte comes out. Then the same through the store: manifests record the
key, rotation keeps old checkpoints readable, and a store without the key refuses to read."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lpm.storage import sealing
from lpm.storage.backend import IntegrityError
from lpm.storage.posix import PosixBackend
from lpm.storage.sealing import KeyConfigError, KeyDirectory, KeyRing, KeyUnavailable, seal, unseal
from lpm.storage.store import CheckpointStore
from lpm.storage.uri import CheckpointKey

POD = "6a2b3c4d-1111-4222-8333-944455556666"
URI = f"lpm://{POD}/c1/app/checkpoint.tar.zst"
RING = KeyRing({"k1": b"\x01" * 32}, "k1")


def pieces(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    """`data` cut at arbitrary points: the sealer must not depend on how its input is chunked."""
    start = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        yield data[start:cut]
        start = cut
    yield data[start:]


def sealed(data: bytes, chunk: int = 64, ring: KeyRing = RING, context: str = URI) -> bytes:
    return b"".join(seal(iter([data]), ring, context, chunk=chunk))


def opened(blob: bytes, ring: KeyRing = RING, context: str = URI, read: int = 7) -> bytes:
    return b"".join(unseal((blob[i : i + read] for i in range(0, len(blob), read)), ring, context, "k1"))


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=700),
    chunk=st.integers(1, 100),
    cuts=st.lists(st.integers(0, 700), max_size=6),
    read=st.integers(1, 300),
)
def test_round_trip_whatever_the_chunking_of_input_output_and_reads(
    data: bytes, chunk: int, cuts: list[int], read: int
) -> None:
    blob = b"".join(seal(pieces(data, cuts), RING, URI, chunk=chunk))
    assert opened(blob, read=read) == data


def header_length(blob: bytes) -> int:
    return len(sealing.MAGIC) + 4 + int.from_bytes(blob[8:12], "big")


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=1, max_size=400), position=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_any_flipped_bit_anywhere_is_detected(data: bytes, position: int, bit: int) -> None:
    blob = bytearray(sealed(data))
    blob[position % len(blob)] ^= 1 << bit
    with pytest.raises(IntegrityError):
        opened(bytes(blob))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400), keep=st.integers(0, 10_000))
def test_a_stream_cut_short_anywhere_is_detected(data: bytes, keep: int) -> None:
    blob = sealed(data)
    cut = keep % len(blob)  # strictly shorter than the whole
    with pytest.raises(IntegrityError):
        opened(blob[:cut])


def test_reordered_dropped_or_duplicated_chunks_are_detected() -> None:
    data = os.urandom(64 * 5 + 10)
    blob = sealed(data)
    head, body = blob[: header_length(blob)], blob[header_length(blob) :]
    frames = [body[i : i + 64 + 16] for i in range(0, len(body), 64 + 16)]
    assert len(frames) == 6
    for bad in (
        [frames[1], frames[0], *frames[2:]],  # swapped
        frames[:2] + frames[3:],  # one dropped from the middle
        frames[:5],  # the last one dropped: the stream now ends on a chunk not flagged last
        [*frames[:3], frames[2], *frames[3:]],  # one repeated
    ):
        with pytest.raises(IntegrityError):
            opened(head + b"".join(bad))


def test_an_archive_moved_to_another_checkpoints_name_does_not_open() -> None:
    blob = sealed(b"memory of pod A")
    with pytest.raises(IntegrityError):
        opened(blob, context=URI.replace("/c1/", "/c2/"))


def test_a_different_key_under_the_same_id_does_not_open_it() -> None:
    blob = sealed(b"secret")
    with pytest.raises(IntegrityError, match="does not unwrap"):
        opened(blob, ring=KeyRing({"k1": b"\x02" * 32}, "k1"))


def test_without_the_key_the_error_names_it() -> None:
    blob = sealed(b"secret")
    with pytest.raises(KeyUnavailable, match="'k1'.*keys: k2"):
        opened(blob, ring=KeyRing({"k2": b"\x02" * 32}, "k2"))


def test_ciphertext_shows_nothing_of_the_plaintext_and_two_seals_differ() -> None:
    secret = b"PASSWORD=hunter2;" * 1000
    one, two = sealed(secret, chunk=1024), sealed(secret, chunk=1024)
    assert b"hunter2" not in one and one != two  # a fresh data key and nonce prefix per archive
    assert opened(one) == opened(two) == secret


def test_something_that_is_not_sealed_is_refused() -> None:
    with pytest.raises(IntegrityError, match="not an LPM-sealed archive"):
        opened(b"\x28\xb5\x2f\xfd" + os.urandom(100))  # a zstd frame


def repo(path: Path) -> PosixBackend:
    path.mkdir()
    return PosixBackend(path)


def write_keys(directory: Path, active: str, **keys: bytes) -> None:
    directory.mkdir(exist_ok=True)
    for name, key in keys.items():
        (directory / name).write_bytes(key)
    (directory / "active").write_text(active + "\n")


def test_key_directory_reads_raw_and_base64_keys_and_skips_the_kubelets_entries(tmp_path: Path) -> None:
    raw, b64 = os.urandom(32), os.urandom(32)
    write_keys(tmp_path, "b", a=raw, b=base64.b64encode(b64) + b"\n")
    (tmp_path / "..data").mkdir()  # what a mounted Secret also holds
    ring = KeyDirectory(tmp_path).ring()
    assert ring.keys == {"a": raw, "b": b64} and ring.active == "b"


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ({"a": b"short"}, "neither 32 raw bytes nor base64"),
        ({"a": base64.b64encode(b"x" * 16)}, "decodes to 16 bytes"),
        ({"a": b"\x00" * 32, "active": b"b"}, "active encryption key 'b' is not among the keys"),
        ({"a": b"\x00" * 32}, "no 'active' entry"),
    ],
)
def test_key_directory_problems_are_explained(tmp_path: Path, files: dict[str, bytes], error: str) -> None:
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(KeyConfigError, match=error):
        KeyDirectory(tmp_path).ring()
    with pytest.raises(KeyConfigError, match="does not exist"):
        KeyDirectory(tmp_path / "missing").ring()


# -- through the store -------------------------------------------------------------------------------------


def test_store_seals_archives_and_records_the_key_in_the_manifest(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    write_keys(keys, "2026-12", **{"2026-12": os.urandom(32)})
    store = CheckpointStore(repo(tmp_path / "repo"), "n1", KeyDirectory(keys))
    data = b"TOKEN=s3cr3t-" * 50_000 + os.urandom(3 << 20)
    ref = CheckpointKey(POD, "c1").artifact("app")
    m = store.put_archive(ref, io.BytesIO(data))
    store.complete(ref.key, ["app"])
    stored = (tmp_path / "repo" / ref.archive_path).read_bytes()
    assert b"s3cr3t" not in stored and stored.startswith(sealing.MAGIC)
    manifest = json.loads((tmp_path / "repo" / ref.manifest_path).read_bytes())
    assert manifest["encryption"] == "AES-256-GCM-STREAM" and manifest["key_id"] == "2026-12"
    assert m.sha256 == hashlib.sha256(stored).hexdigest() and m.size == len(stored)
    # The payload (zstd stream) is what the image layer is made of: its digest is recorded too.
    payload = b"".join(store.read_artifact(ref))
    assert payload.startswith(b"\x28\xb5\x2f\xfd") and m.payload_sha256 == hashlib.sha256(payload).hexdigest()
    assert b"".join(store.read_raw(ref)) == data


def test_rotation_new_checkpoints_use_the_new_key_old_ones_stay_readable_while_it_is_kept(tmp_path: Path) -> None:
    keys, root = tmp_path / "keys", tmp_path / "repo"
    old_key, new_key = os.urandom(32), os.urandom(32)
    write_keys(keys, "old", old=old_key)
    store = CheckpointStore(repo(root), "n1", KeyDirectory(keys))
    before, after = CheckpointKey(POD, "before").artifact("app"), CheckpointKey(POD, "after").artifact("app")
    store.put_archive(before, io.BytesIO(b"first"))
    store.complete(before.key, ["app"])
    write_keys(keys, "new", new=new_key)  # rotated in place, as the kubelet updates a mounted Secret
    store.put_archive(after, io.BytesIO(b"second"))
    store.complete(after.key, ["app"])
    assert store.manifest(before).info.key_id == "old" and store.manifest(after).info.key_id == "new"
    assert b"".join(store.read_raw(before)) == b"first" and b"".join(store.read_raw(after)) == b"second"
    (keys / "old").unlink()  # the old key retired: its checkpoints become unreadable, the new ones are not
    with pytest.raises(KeyUnavailable, match="'old'"):
        list(store.read_raw(before))
    assert b"".join(store.read_raw(after)) == b"second"


def test_a_store_without_keys_cannot_read_a_sealed_checkpoint_but_a_keyed_one_reads_old_clear_ones(
    tmp_path: Path,
) -> None:
    backend = repo(tmp_path / "repo")
    clear, secret = CheckpointKey(POD, "clear").artifact("app"), CheckpointKey(POD, "sealed").artifact("app")
    plain_store = CheckpointStore(backend, "n1")
    plain_store.put_archive(clear, io.BytesIO(b"from before encryption"))
    plain_store.complete(clear.key, ["app"])
    keyed = CheckpointStore(backend, "n1", RING)
    keyed.put_archive(secret, io.BytesIO(b"memory"))
    keyed.complete(secret.key, ["app"])
    assert b"".join(keyed.read_raw(clear)) == b"from before encryption"
    with pytest.raises(KeyUnavailable, match="no encryption keys"):
        list(plain_store.read_raw(secret))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, 1 << 30))
def test_tampering_is_detected_even_when_the_manifest_is_rewritten_to_match(tmp_path: Path, position: int) -> None:
    """The manifest's sha256 is no authentication (whoever can write the archive can write the manifest);
    the sealed stream is."""
    root = tmp_path / f"repo-{position}"
    store = CheckpointStore(repo(root), "n1", RING)
    ref = CheckpointKey(POD, "t").artifact("app")
    store.put_archive(ref, io.BytesIO(os.urandom(300_000)))
    store.complete(ref.key, ["app"])
    path = root / ref.archive_path
    blob = bytearray(path.read_bytes())
    blob[position % len(blob)] ^= 0x40
    path.write_bytes(blob)
    manifest = json.loads((root / ref.manifest_path).read_bytes())
    manifest["sha256"] = hashlib.sha256(blob).hexdigest()
    (root / ref.manifest_path).write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError):
        list(store.read_raw(ref))
