from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from lpm.agent.kernel import dirty_tracking_problem


def test_the_probe_agrees_with_the_running_kernels_own_config():
    config = Path("/proc/config.gz")
    if not config.exists():
        pytest.skip("this kernel does not publish its config (CONFIG_IKCONFIG_PROC)")
    soft_dirty = "CONFIG_MEM_SOFT_DIRTY=y" in gzip.decompress(config.read_bytes()).decode().splitlines()
    problem = dirty_tracking_problem()
    assert (problem == "") == soft_dirty, problem
    if not soft_dirty:
        assert "CONFIG_MEM_SOFT_DIRTY" in problem


def test_a_pagemap_without_the_probe_page_or_without_a_pagemap_is_reported_as_not_probed(tmp_path: Path):
    (tmp_path / "clear_refs").write_text("")
    (tmp_path / "pagemap").write_bytes(b"")  # no entry for any page
    assert "not present" in dirty_tracking_problem(tmp_path)
    missing = tmp_path / "gone"
    missing.mkdir()
    assert "could not be probed (No such file" in dirty_tracking_problem(missing)
