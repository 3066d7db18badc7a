"""Fixtures of the storage contract suite: one repository per test on each backend.

`repo` is parametrized over the POSIX backend (a local directory; a small tmpfs for "volume full") and the
NFS backend (a real nfs-ganesha through testcontainers; its `/small` tmpfs export for "volume full").
"""

from __future__ import annotations

import itertools
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass

import nfs_rs
import pytest
from integration.storage.nfs_server import (
    SMALL_EXPORT,
    SMALL_EXPORT_SIZE,
    NfsServer,
    nfs_server,
    podman_api,
    scratch_tmpfs,
)

from lpm.storage.nfs import NfsBackend, RetryPolicy
from lpm.storage.posix import PosixBackend
from lpm.storage.sealing import KeySource
from lpm.storage.store import CheckpointStore

_ids = itertools.count()


@pytest.fixture(scope="session")
def nfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NfsServer]:
    work = tmp_path_factory.mktemp("nfs-engine")
    export = work / "export"
    export.mkdir()
    with podman_api(work), nfs_server(export) as server:
        yield server


@pytest.fixture(scope="session")
def small_volume(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """A tmpfs as small as the NFS server's `/small` export, for the POSIX backend's "volume full"."""
    with scratch_tmpfs(tmp_path_factory.mktemp("small-volume"), SMALL_EXPORT_SIZE) as mountpoint:
        yield mountpoint


@dataclass
class Repo:
    """A private repository for one test; `store()` opens another agent's view of it (another NFS client)."""

    kind: str
    storage: str  # what the agent's --storage flag would say
    small_storage: str
    server: NfsServer | None = None

    def store(
        self, retry: RetryPolicy | None = None, *, small: bool = False, keys: KeySource | None = None
    ) -> CheckpointStore:
        storage = self.small_storage if small else self.storage
        if self.kind == "nfs":
            return CheckpointStore(NfsBackend(storage, retry), keys=keys)
        return CheckpointStore(PosixBackend(storage), keys=keys)


@pytest.fixture(params=["posix", "nfs"])
def repo(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Repo:
    name = f"repo-{next(_ids)}"
    if request.param == "posix":
        small: pathlib.Path = request.getfixturevalue("small_volume")
        (small / name).mkdir()
        (tmp_path / name).mkdir()
        return Repo("posix", str(tmp_path / name), str(small / name))
    server: NfsServer = request.getfixturevalue("nfs")
    server.mkdir(name)
    with nfs_rs.Client.connect(server.url(SMALL_EXPORT)) as client:
        client.mkdir(name, exist_ok=True)
    return Repo("nfs", server.url(subdir=name), server.url(SMALL_EXPORT, name), server)
