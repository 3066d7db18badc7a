"""User-facing messages never carry node-internal paths."""

from __future__ import annotations

import pytest

from lpm.api.messages import scrub_paths


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (
            "criu failed: type NOTIFY errno 0 path= /run/containerd/io.containerd.runtime.v2.task/a/criu-dump.log",
            "criu failed: type NOTIFY errno 0 path= criu-dump.log",
        ),
        ("Can't open file var/lib/kubelet/pods/u/volumes/x/data/events.log", "Can't open file events.log"),
        ("kubelet https://10.0.0.1:10250 answered 503", "kubelet https://10.0.0.1:10250 answered 503"),
        (
            "artifact shared://0f8f/ck/app/dump.tar.zst is missing",
            "artifact shared://0f8f/ck/app/dump.tar.zst is missing",
        ),
        ("ratio 3/4 and a/b stay", "ratio 3/4 and a/b stay"),
    ],
)
def test_node_paths_are_cut_to_their_last_component_and_nothing_else_changes(raw: str, shown: str) -> None:
    assert scrub_paths(raw) == shown
