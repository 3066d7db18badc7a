"""`ArtifactRef.parse` accepts only canonical `shared://<podUID>/<checkpointID>/<container>/dump.tar.zst`;
no string hypothesis can find names a path outside the repository."""

from __future__ import annotations

import pathlib
import posixpath

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lpm.api.names import InvalidName
from lpm.storage.uri import ArtifactRef, InvalidArtifactURI, resolve_under

ROOT = pathlib.Path("/mnt/checkpoints")
UID = "0f8fad5b-d9cb-469f-a165-70867728950e"
TRICKS = [
    "..",
    ".",
    "",
    "/",
    "//",
    "%2e%2e",
    "..%2f",
    "\x00",
    "\\..\\",
    "\uff0e\uff0e",
    "a/../b",
    "~",
    " ",
    "\n",
    "A",
    "-x",
    "x-",
]
component = st.one_of(st.sampled_from(TRICKS), st.text(max_size=12), st.from_regex(r"\A[a-z0-9-]{1,12}\Z"))


def _safe(ref: ArtifactRef) -> None:
    path = resolve_under(ROOT, ref.archive_path)
    assert str(path).startswith(str(ROOT) + "/")
    assert ".." not in pathlib.PurePosixPath(ref.archive_path).parts
    assert posixpath.normpath(ref.archive_path) == ref.archive_path
    assert ArtifactRef.parse(ref.uri) == ref


@settings(max_examples=500)
@given(
    uid=st.one_of(st.just(UID), component),
    ckpt=component,
    ctr=component,
    tail=st.sampled_from(["dump.tar.zst", "dump.tar.zst/..", "../dump.tar.zst", "x"]),
)
@example(uid=UID, ckpt="..", ctr="app", tail="dump.tar.zst")
@example(uid="..", ckpt="c", ctr="app", tail="dump.tar.zst")
def test_parse_never_yields_a_path_outside_the_repository(uid, ckpt, ctr, tail):
    uri = f"shared://{uid}/{ckpt}/{ctr}/{tail}"
    try:
        ref = ArtifactRef.parse(uri)
    except InvalidArtifactURI:
        return
    assert ref.uri == uri, "only canonical URIs parse"
    _safe(ref)


@settings(max_examples=500)
@given(st.text(max_size=120))
def test_arbitrary_strings_parse_only_when_canonical(text):
    try:
        ref = ArtifactRef.parse(text)
    except InvalidArtifactURI:
        return
    assert ref.uri == text
    _safe(ref)


@settings(max_examples=200)
@given(
    st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?\Z"),
    st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?\Z"),
    st.uuids(),
)
def test_valid_refs_round_trip(ckpt, ctr, uid):
    ref = ArtifactRef(str(uid), ckpt, ctr)
    _safe(ref)


@pytest.mark.parametrize("rel", ["../x", "/etc/passwd", "a/../../x", "a/./b", "", "a\x00b"])
def test_resolve_under_refuses_escapes(rel):
    with pytest.raises(InvalidName):
        resolve_under(ROOT, rel)
