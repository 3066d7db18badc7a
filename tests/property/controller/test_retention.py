"""Checkpoint retention as a specification: which of a pod's checkpoints expire under keep=N,maxAge=D."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lpm.controller.retention import ANNOTATION, Checkpoint, RetentionPolicy, expired, policy_for

NOW = 1_000_000.0

checkpoints = st.lists(
    st.builds(
        Checkpoint,
        name=st.text("abcdef", min_size=1, max_size=4),
        finished_at=st.one_of(st.none(), st.floats(NOW - 10 * 86400, NOW, allow_nan=False)),
        in_use=st.booleans(),
    ),
    max_size=12,
    unique_by=lambda c: c.name,
)
policies = st.builds(RetentionPolicy, keep=st.integers(0, 5), max_age=st.sampled_from([0.0, 3600.0, 3 * 86400.0]))


def survivors(group: list[Checkpoint], policy: RetentionPolicy) -> list[Checkpoint]:
    return [c for c in group if expired(c, group, policy, NOW) is None]


@settings(max_examples=500)
@given(group=checkpoints, policy=policies)
def test_what_expires_is_exactly_what_the_policy_says(group: list[Checkpoint], policy: RetentionPolicy) -> None:
    finished = [c for c in group if c.finished_at is not None]
    for c in group:
        why = expired(c, group, policy, NOW)
        if c.finished_at is None or c.in_use:
            assert why is None, "a checkpoint being taken, or one a running migration uses, never expires"
            continue
        assert c.finished_at is not None
        too_old = bool(policy.max_age) and NOW - c.finished_at > policy.max_age
        newer = [o for o in finished if o is not c and (o.finished_at, o.name) > (c.finished_at, c.name)]
        too_many = bool(policy.keep) and len(newer) >= policy.keep
        assert (why is not None) == (too_old or too_many), (c, why)


@settings(max_examples=500)
@given(group=checkpoints, policy=policies)
def test_expiring_reaches_a_fixed_point_at_once(group: list[Checkpoint], policy: RetentionPolicy) -> None:
    """The controller deletes expired checkpoints one timer tick at a time; what is left must not expire
    later because others went (no cascade, no dependence on the order of deletions)."""
    left = survivors(group, policy)
    assert survivors(left, policy) == left
    if policy.keep and not policy.max_age:
        unprotected = [c for c in left if c.finished_at is not None and not c.in_use]
        assert len(unprotected) <= policy.keep


@given(group=checkpoints)
def test_no_bounds_keeps_everything(group: list[Checkpoint]) -> None:
    assert survivors(group, RetentionPolicy(keep=0, max_age=0)) == group


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("keep=5,maxAge=72h", RetentionPolicy(5, 72 * 3600.0)),
        ("keep=0", RetentionPolicy(0, 7 * 86400.0)),
        ("maxAge=30m", RetentionPolicy(3, 1800.0)),
        ("maxAge=0, keep=1", RetentionPolicy(1, 0.0)),
        ("", RetentionPolicy()),
    ],
)
def test_policy_text(text: str, want: RetentionPolicy) -> None:
    assert RetentionPolicy.parse(text) == want


@pytest.mark.parametrize(
    ("text", "error"),
    [("keep=-1", "whole number"), ("maxAge=3 days", "duration"), ("ttl=1h", "unknown key"), ("keep", "key=value")],
)
def test_bad_policy_text_is_explained(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        RetentionPolicy.parse(text)


def test_the_nearest_annotation_wins_and_fills_in_from_the_default() -> None:
    default = RetentionPolicy(3, 86400.0)
    sources = [
        ("PodCheckpoint x", {}),
        ("pod p", {ANNOTATION: "keep=1"}),
        ("namespace n", {ANNOTATION: "keep=9,maxAge=1h"}),
    ]
    assert policy_for(sources, default) == (RetentionPolicy(1, 86400.0), "pod p")
    assert policy_for([("namespace n", None)], default) == (default, "the controller's default")
