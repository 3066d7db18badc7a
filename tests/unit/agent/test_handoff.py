"""The live engine's hand-off directory, on real files: what lpm-runc finds, and when."""

from __future__ import annotations

import io
import itertools
import json
import stat
import tarfile
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lpm.agent.handoff import PART_OFFSET, Aborted, Handoff, HandoffError, State
from lpm.agent.scratch import Scratch

CKPT = "20260101t000000z-abcdef12"


def archive(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def chunks(data: bytes, fail_at_end: bool = False) -> Iterator[bytes]:
    for i in range(0, len(data), 1000):
        yield data[i : i + 1000]
    if fail_at_end:
        raise OSError("sha256 mismatch")  # what the store's verified stream does at its end


KUBELET_ARCHIVE = archive(
    {
        "checkpoint/inventory.img": b"inv",
        "checkpoint/pages-1.img": b"p" * 5000,
        "checkpoint/descriptors.json": b'["pipe:[1]"]',
        "rootfs-diff.tar": archive({"etc/new": b"x"}),
        "deleted.files": json.dumps(["/etc/old"]).encode(),
        "spec.dump": b"{}",
    }
)


def test_a_staged_container_is_ready_only_after_the_whole_verified_archive_was_laid_out(tmp_path: Path) -> None:
    h = Handoff(tmp_path)
    staged = h.stage(CKPT, "app", chunks(KUBELET_ARCHIVE))
    d = tmp_path / CKPT / "app"
    ready = json.loads((d / "ready").read_text())
    images = Path(ready["images"])
    assert sorted(p.name for p in images.iterdir()) == ["descriptors.json", "inventory.img", "pages-1.img"]
    assert (images / "pages-1.img").read_bytes() == b"p" * 5000
    assert Path(ready["rootfs_diff"]).is_file() and ready["deleted_files"] == ["/etc/old"]
    assert staged.image_bytes == 3 + 5000 + len(b'["pipe:[1]"]')
    assert stat.S_IMODE((images / "inventory.img").stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert [s.state for s in h.states(CKPT, ["app"])] == [State.STAGED]


def test_a_transfer_that_fails_its_integrity_check_leaves_nothing_for_lpm_runc(tmp_path: Path) -> None:
    h = Handoff(tmp_path)
    with pytest.raises(OSError, match="sha256"):
        h.stage(CKPT, "app", chunks(KUBELET_ARCHIVE, fail_at_end=True))
    d = tmp_path / CKPT / "app"
    assert not (d / "ready").exists()
    assert [p.name for p in d.iterdir()] == [], "no half-staged images stay behind"


def test_an_archive_without_criu_images_or_with_nested_paths_is_refused(tmp_path: Path) -> None:
    h = Handoff(tmp_path)
    with pytest.raises(HandoffError, match="no CRIU images"):
        h.stage(CKPT, "a", chunks(archive({"spec.dump": b"{}"})))
    with pytest.raises(HandoffError, match="not a flat CRIU image"):
        h.stage(CKPT, "b", chunks(archive({"checkpoint/../../etc/passwd": b"x"})))
    assert not (tmp_path / CKPT / "b" / "ready").exists()


def test_abort_is_final_and_removes_staged_memory_but_keeps_the_markers(tmp_path: Path) -> None:
    h = Handoff(tmp_path)
    h.stage(CKPT, "app", chunks(KUBELET_ARCHIVE))
    h.abort(CKPT, "the dump failed")
    assert h.aborted(CKPT) == "the dump failed"
    assert not (tmp_path / CKPT / "app" / "staged").exists()
    with pytest.raises(Aborted):
        h.stage(CKPT, "other", chunks(KUBELET_ARCHIVE))
    h.abort(CKPT, "again")  # idempotent: the first reason stays
    assert h.aborted(CKPT) == "the dump failed"


def test_states_follow_what_lpm_runc_wrote(tmp_path: Path) -> None:
    h = Handoff(tmp_path)
    assert [s.state for s in h.states(CKPT, ["app"])] == [State.ABSENT]
    d = tmp_path / CKPT / "app"
    d.mkdir(parents=True)
    (d / "waiting").write_text(json.dumps({"container_id": "abc", "since": "2026-01-01T00:00:00Z"}))
    (waiting,) = h.states(CKPT, ["app"])
    assert waiting.state is State.WAITING and waiting.container_id == "abc"
    h.stage(CKPT, "app", chunks(KUBELET_ARCHIVE))
    assert h.states(CKPT, ["app"])[0].state is State.STAGED
    (d / "restored").write_text("{}")
    assert h.states(CKPT, ["app"])[0].state is State.RESTORED
    assert h.stage(CKPT, "app", chunks(b"")).image_bytes == 0, "staging again changes nothing"


@pytest.mark.parametrize("bad", ["../x", "A", "", "a/b"])
def test_names_that_could_leave_the_directory_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(HandoffError):
        Handoff(tmp_path).states(bad, ["app"])
    with pytest.raises(HandoffError):
        Handoff(tmp_path).states(CKPT, [bad])


def test_the_restore_log_lpm_runc_kept_wins_over_a_later_tries_work_log(tmp_path: Path) -> None:
    h = Handoff(tmp_path)
    d = tmp_path / CKPT / "app"
    (d / "work").mkdir(parents=True)
    assert h.restore_log(CKPT, "app") is None
    (d / "work" / "restore.log").write_text("a later try, still running")
    assert h.restore_log(CKPT, "app") == "a later try, still running"
    (d / "restore-failed.log").write_text("Error (criu/files-reg.c:1): Can't open file")
    assert "Can't open file" in (h.restore_log(CKPT, "app") or "")


def test_concurrent_capability_probes_all_find_the_directory_usable(tmp_path: Path) -> None:
    # A drain probes the target's agent for several pods at once; a shared probe file made some of those calls
    # report the node unable to restore live (found by the drain benchmark: one pod of five took the Image path).
    h = Handoff(tmp_path / "handoff")
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: h.usable(), range(400)))
    assert answers == [""] * 400
    assert not list((tmp_path / "handoff").iterdir()), "probe files left behind"


def test_emptydir_volumes_are_staged_with_their_mount_points_for_lpm_runc(tmp_path: Path) -> None:
    data = archive({"events.log": b"1\n2\n"})
    with_volumes = archive(
        {
            "checkpoint/inventory.img": b"inv",
            "volumes/data.tar": data,
            "volumes.json": json.dumps({"/data": "data", "/also": "data"}).encode(),
        }
    )
    Handoff(tmp_path).stage(CKPT, "app", chunks(with_volumes))
    ready = json.loads((tmp_path / CKPT / "app" / "ready").read_text())
    assert [(v["destination"], v["name"]) for v in ready["volumes"]] == [("/also", "data"), ("/data", "data")]
    assert Path(ready["volumes"][0]["tar"]).read_bytes() == data
    # A kubelet archive has no volumes: nothing to fill.
    Handoff(tmp_path).stage(CKPT, "other", chunks(KUBELET_ARCHIVE))
    assert json.loads((tmp_path / CKPT / "other" / "ready").read_text())["volumes"] == []


@pytest.mark.parametrize(
    "members",
    [
        {"volumes.json": json.dumps({"/data": "data"}).encode()},  # contents missing
        {"volumes/../x.tar": b"", "volumes.json": b"{}"},
        {"volumes/data.tar": b"", "volumes.json": json.dumps({"data": "data"}).encode()},  # not a mount point
    ],
)
def test_a_volume_list_that_does_not_add_up_is_refused(tmp_path: Path, members: dict[str, bytes]) -> None:
    with pytest.raises(HandoffError):
        Handoff(tmp_path).stage(CKPT, "app", chunks(archive({"checkpoint/inventory.img": b"inv", **members})))
    assert not (tmp_path / CKPT / "app" / "ready").exists()


def test_a_checkpoint_that_fits_in_memory_is_staged_there_and_released_from_there(tmp_path: Path) -> None:
    root, memory = tmp_path / "root", tmp_path / "memory"
    h = Handoff(root, scratch=Scratch(memory, root, reserve_fraction=0.0, reserve_min_bytes=0, headroom=lambda: None))
    h.stage(CKPT, "app", chunks(KUBELET_ARCHIVE), size_bytes=len(KUBELET_ARCHIVE))
    ready = json.loads((root / CKPT / "app" / "ready").read_text())
    images = Path(ready["images"])
    assert images == memory / CKPT / "app" / "staged" / "images"
    assert (images / "pages-1.img").read_bytes() == b"p" * 5000
    assert Path(ready["rootfs_diff"]).parent == images.parent
    assert not (root / CKPT / "app" / "staged").exists(), "staged once, in memory only"
    h.stage(CKPT, "other", chunks(KUBELET_ARCHIVE))  # size unknown: beside the markers, as before
    assert Path(json.loads((root / CKPT / "other" / "ready").read_text())["images"]).is_relative_to(root)
    h.abort(CKPT, "rolled back")
    assert not (memory / CKPT).exists() and not (root / CKPT / "other" / "staged").exists()
    assert (root / CKPT / "app" / "ready").exists() and h.aborted(CKPT) == "rolled back", "the markers stay"


def test_a_memory_directory_that_is_the_root_itself_never_takes_the_markers_with_it(tmp_path: Path) -> None:
    h = Handoff(tmp_path, tmp_path)
    assert h.scratch.memory is None
    h.stage(CKPT, "app", chunks(KUBELET_ARCHIVE), size_bytes=len(KUBELET_ARCHIVE))
    h.release(CKPT)
    assert (tmp_path / CKPT / "app" / "ready").exists()
    assert not (tmp_path / CKPT / "app" / "staged").exists()


def test_once_lpm_runc_restored_a_container_its_staged_memory_goes_even_if_lpm_runc_left_it(tmp_path: Path) -> None:
    root, memory = tmp_path / "root", tmp_path / "memory"
    h = Handoff(root, scratch=Scratch(memory, root, reserve_fraction=0.0, reserve_min_bytes=0, headroom=lambda: None))
    h.stage(CKPT, "app", chunks(KUBELET_ARCHIVE), size_bytes=len(KUBELET_ARCHIVE))
    h.stage(CKPT, "sidecar", chunks(KUBELET_ARCHIVE), size_bytes=len(KUBELET_ARCHIVE))
    (root / CKPT / "app" / "restored").write_text("{}")
    assert [s.state for s in h.states(CKPT, ["app", "sidecar"])] == [State.RESTORED, State.STAGED]
    assert not (memory / CKPT / "app").exists()
    assert (memory / CKPT / "sidecar" / "staged" / "images").is_dir(), "a container not restored yet keeps its own"
    (root / CKPT / "sidecar" / "restored").write_text("{}")
    h.states(CKPT, ["sidecar"])
    assert not (memory / CKPT).exists()


def test_a_post_copy_restore_keeps_its_images_while_pages_stream_and_says_how_the_stream_ended(
    tmp_path: Path,
) -> None:
    h = Handoff(tmp_path)
    lazy = {"address": "10.0.0.7", "port": 40123, "tls": {"cacert": "/t/ca", "cert": "/t/c", "key": "/t/k"}}
    h.stage(CKPT, "app", chunks(archive({"checkpoint/inventory.img": b"inv"})), lazy_pages=lazy)
    d = tmp_path / CKPT / "app"
    ready = json.loads((d / "ready").read_text())
    assert ready["lazy_pages"] == lazy
    staged = Path(ready["images"])
    (d / "restored").write_text("{}")
    (state,) = h.states(CKPT, ["app"])
    assert (state.state, state.pages) == (State.RESTORED, "STREAMING")
    assert staged.is_dir(), "criu lazy-pages still reads the images"
    (d / "lazy-pages.exit").write_text(json.dumps({"code": 1, "killed": 4242}))
    (state,) = h.states(CKPT, ["app"])
    assert state.pages == "BROKEN" and "killed the restored process (pid 4242)" in state.pages_message
    assert not staged.exists()
    (d / "lazy-pages.exit").write_text(json.dumps({"code": 0, "killed": 0}))
    assert h.states(CKPT, ["app"])[0].pages == "COMPLETE"
    # A restore that was not post-copy has no page stream.
    h.stage(CKPT, "db", chunks(archive({"checkpoint/inventory.img": b"inv"})))
    (tmp_path / CKPT / "db" / "restored").write_text("{}")
    assert h.states(CKPT, ["db"])[0].pages == "NONE"


_LEAF = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._é", min_size=1, max_size=140).filter(
    lambda n: n not in (".", "..")
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    files=st.dictionaries(_LEAF, st.integers(0, 3000), min_size=1, max_size=6),
    skipped=st.integers(0, 1500),
    fmt=st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]),
    piece=st.integers(1, 4096),
)
def test_staged_images_are_the_archives_files_whatever_its_headers_and_chunking(
    tmp_path: Path, files: dict[str, int], skipped: int, fmt: int, piece: int
) -> None:
    """tarfile writes the archive (long names as PAX or GNU headers, sizes on and off block boundaries, a member
    the restore skips); any chunking of it stages exactly the files written into it."""
    if fmt == tarfile.USTAR_FORMAT:
        files = {n: size for n, size in files.items() if len(n.encode()) <= 90 and n.isascii()}
        if not files:
            return
    members = {f"checkpoint/{name}": bytes((i * 7 + n) % 251 for n in range(size)) for i, (name, size) in
               enumerate(sorted(files.items()))}  # fmt: skip
    members = {"spec.dump": b"s" * skipped, **members, "deleted.files": json.dumps(["/gone"]).encode()}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    h = Handoff(root)
    stream = (raw[i : i + piece] for i in range(0, len(raw), piece))
    if not any(files.values()):
        with pytest.raises(HandoffError, match="no CRIU images"):
            h.stage(CKPT, "app", stream)
        return
    h.stage(CKPT, "app", stream)
    ready = json.loads((root / CKPT / "app" / "ready").read_text())
    images = Path(ready["images"])
    assert {p.name: p.read_bytes() for p in images.iterdir()} == {
        name.removeprefix("checkpoint/"): data for name, data in members.items() if name.startswith("checkpoint/")
    }
    assert ready["deleted_files"] == ["/gone"]


def test_an_archive_cut_inside_a_member_is_refused_and_stages_nothing(tmp_path: Path) -> None:
    h = Handoff(tmp_path)
    cut = KUBELET_ARCHIVE[: KUBELET_ARCHIVE.index(b"p" * 100) + 2000]
    with pytest.raises((HandoffError, tarfile.TarError)):
        h.stage(CKPT, "app", chunks(cut))
    assert not (tmp_path / CKPT / "app" / "ready").exists()


def parted(data: bytes, cuts: list[int], name: str = "checkpoint/pages-1.img", order: list[int] | None = None) -> bytes:
    """An archive that sends `data` as parts (a PAX LPM.offset each, as DumpStream does) cut at `cuts`, in
    `order` (default: as they come), then an inventory."""
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(data))), len(data)]
    pieces = list(itertools.pairwise(bounds))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in order if order is not None else range(len(pieces)):
            start, end = pieces[i]
            info = tarfile.TarInfo(name)
            info.size, info.pax_headers = end - start, {PART_OFFSET: str(start)}
            tar.addfile(info, io.BytesIO(data[start:end]))
        info = tarfile.TarInfo("checkpoint/inventory.img")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"inv"))
    return buf.getvalue()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(1, 5000), cuts=st.lists(st.integers(1, 4999), max_size=8), piece=st.integers(1, 3000))
def test_a_page_file_sent_in_parts_is_staged_whole_wherever_it_was_cut(
    tmp_path: Path, size: int, cuts: list[int], piece: int
) -> None:
    data = bytes((n * 31) % 253 for n in range(size))
    raw = parted(data, cuts)
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    Handoff(root).stage(CKPT, "app", (raw[i : i + piece] for i in range(0, len(raw), piece)))
    images = Path(json.loads((root / CKPT / "app" / "ready").read_text())["images"])
    assert (images / "pages-1.img").read_bytes() == data
    assert (images / "inventory.img").read_bytes() == b"inv"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (parted(b"abcdefgh", [3, 6], order=[0, 2, 1]), "a part at 6, the file ends at 3"),
        (parted(b"abcdefgh", [3], order=[0, 0, 1]), "a part at 0, the file ends at 3"),
        (parted(b"abcdefgh", [3], order=[1, 0]), "a part at 3, the file ends at 0"),
        (parted(b"abcdefgh", [3], name="rootfs-diff.tar"), "is a part, but not of a CRIU image"),
    ],
    ids=["out of order", "repeated", "no beginning", "not an image"],
)
def test_parts_that_do_not_follow_each_other_are_refused_and_nothing_is_staged(
    tmp_path: Path, raw: bytes, says: str
) -> None:
    with pytest.raises(HandoffError, match=says):
        Handoff(tmp_path).stage(CKPT, "app", chunks(raw))
    assert not (tmp_path / CKPT / "app" / "ready").exists()


def test_a_part_offset_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    raw = parted(b"abcdefgh", []).replace(f"{PART_OFFSET}=0".encode(), f"{PART_OFFSET}=x".encode())
    with pytest.raises(HandoffError, match="is not a number"):
        Handoff(tmp_path).stage(CKPT, "app", chunks(raw))


def test_a_rollback_in_the_middle_of_a_transfer_is_reported_as_the_abort_it_is(tmp_path: Path) -> None:
    """The agent's abort removes what is being staged while the push still writes into it (seen on the
    cluster: a cancelled migration's target answered NOT_FOUND for a CRIU image); the stager says aborted."""
    root, memory = tmp_path / "root", tmp_path / "memory"
    h = Handoff(root, scratch=Scratch(memory, root, reserve_fraction=0.0, reserve_min_bytes=0, headroom=lambda: None))

    def aborted_midway() -> Iterator[bytes]:
        for i, chunk in enumerate(chunks(KUBELET_ARCHIVE)):
            if i == 1:
                h.abort(CKPT, "migration cancelled")  # in memory, the staging directory goes with it
            yield chunk

    with pytest.raises(Aborted, match="aborted while it was staged: migration cancelled"):
        h.stage(CKPT, "app", aborted_midway(), size_bytes=len(KUBELET_ARCHIVE))
    assert not (root / CKPT / "app" / "ready").exists() and not (memory / CKPT).exists()


def _waiting(tmp_path: Path) -> Path:
    d = tmp_path / CKPT / "app"
    d.mkdir(parents=True)
    (d / "waiting").write_text(json.dumps({"container_id": "abc", "since": "2026-01-01T00:00:00Z"}))
    return d


@pytest.mark.parametrize("outcome", ["restored", "failed", "aborted"])
def test_waiting_for_the_restore_ends_when_lpm_runc_says_how_it_went(tmp_path: Path, outcome: str) -> None:
    h = Handoff(tmp_path)
    d = _waiting(tmp_path)
    h.stage(CKPT, "app", chunks(KUBELET_ARCHIVE))

    def lpm_runc() -> None:
        time.sleep(0.2)
        if outcome == "aborted":
            h.abort(CKPT, "the migration was rolled back")
        else:
            (d / outcome).write_text("{}")

    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        pool.submit(lpm_runc)
        assert h.wait_restore(CKPT, "app", timeout=30) == outcome
        waited = time.monotonic() - started
    assert 0.2 <= waited < 10, f"returned after {waited:.2f}s"


def test_no_restore_is_waited_for_when_no_lpm_runc_waits_and_a_silent_one_is_waited_for_until_the_timeout(
    tmp_path: Path,
) -> None:
    h = Handoff(tmp_path)
    h.stage(CKPT, "app", chunks(KUBELET_ARCHIVE))  # e.g. a pod's next container, created after the first started
    started = time.monotonic()
    assert h.wait_restore(CKPT, "app", timeout=30) == "not waiting"
    assert time.monotonic() - started < 1
    _waiting(tmp_path / "other")
    h2 = Handoff(tmp_path / "other")
    h2.stage(CKPT, "app", chunks(KUBELET_ARCHIVE))
    started = time.monotonic()
    assert h2.wait_restore(CKPT, "app", timeout=0.3) == "timeout"
    assert time.monotonic() - started >= 0.3
