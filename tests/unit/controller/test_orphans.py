"""Which stored checkpoints the sweep deletes: those no object names, once they stayed unnamed for the grace."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lpm.api import constants as c
from lpm.controller.orphans import due, referenced

keys = st.sets(st.tuples(st.sampled_from("abc"), st.sampled_from("123")), max_size=9)


def test_every_kind_that_names_a_checkpoint_counts() -> None:
    named = referenced(
        {
            c.PLURAL_POD_CHECKPOINTS: [{"status": {"podUID": "u1", "checkpointID": "c1"}}, {"status": {}}],
            c.PLURAL_POD_CHECKPOINT_CONTENTS: [{"spec": {"podUID": "u2", "checkpointID": "c2"}}],
            c.PLURAL_CONTAINER_CHECKPOINT_CONTENTS: [{"spec": {"podUID": "u3", "checkpointID": "c3"}}],
            c.PLURAL_POD_MIGRATIONS: [{"status": {"podUID": "u4", "checkpointID": "c4"}}],
        }
    )
    assert named == {("u1", "c1"), ("u2", "c2"), ("u3", "c3"), ("u4", "c4")}


@given(stored=keys, named=keys, later=keys)
def test_only_what_stayed_unnamed_for_the_whole_grace_is_due(
    stored: set[tuple[str, str]], named: set[tuple[str, str]], later: set[tuple[str, str]]
) -> None:
    first_seen: dict[tuple[str, str], float] = {}
    assert due(stored, named, first_seen, now=0.0, grace=10.0) == []  # never on first sight
    # Ten seconds on, a key named meanwhile (its object appeared) is forgotten, not deleted.
    result = due(stored, named | later, first_seen, now=10.0, grace=10.0)
    assert set(result) == stored - named - later
    assert set(first_seen) == stored - named - later
    # Named again later: its clock starts over.
    assert due(stored, named, first_seen, now=15.0, grace=10.0) == sorted(stored - named - later)
