"""The agent's start-up waits for its host ports instead of crashing while a previous agent still holds them."""

from __future__ import annotations

import io
import os
import socket
import threading
from pathlib import Path

import pytest

from lpm.agent import config
from lpm.agent.main import export_checkpoint, when_port_free
from lpm.storage.posix import PosixBackend
from lpm.storage.sealing import KeyDirectory
from lpm.storage.store import CheckpointStore
from lpm.storage.uri import CheckpointKey


def _bind(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_a_port_held_by_the_previous_agent_is_waited_for_then_taken() -> None:
    old = _bind(0)
    port = old.getsockname()[1]
    threading.Timer(0.5, old.close).start()  # the old agent's process finally exits
    new = when_port_free(lambda: _bind(port), "metrics", timeout=10)
    assert new.getsockname()[1] == port
    new.close()


def test_a_port_that_stays_taken_fails_after_the_wait_and_other_errors_at_once() -> None:
    old = _bind(0)
    port = old.getsockname()[1]
    try:
        with pytest.raises(OSError):
            when_port_free(lambda: _bind(port), "metrics", timeout=0.3)
    finally:
        old.close()
    calls = []

    def broken() -> None:
        calls.append(1)
        raise PermissionError(13, "Permission denied")

    with pytest.raises(PermissionError):
        when_port_free(broken, "metrics", timeout=10)
    assert calls == [1]


def test_export_writes_the_runtimes_archive_decrypted_and_refuses_without_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, keys = tmp_path / "repo", tmp_path / "keys"
    repo.mkdir()
    keys.mkdir()
    (keys / "k1").write_bytes(os.urandom(32))
    (keys / "active").write_text("k1")
    archive = b"checkpoint/pages-1.img" + os.urandom(100_000)
    ref = CheckpointKey("6a2b3c4d-1111-4222-8333-944455556666", "c1").artifact("app")
    store = CheckpointStore(PosixBackend(repo), "n1", KeyDirectory(keys))
    store.put_archive(ref, io.BytesIO(archive))
    store.complete(ref.key, ["app"])

    out = io.BytesIO()
    cfg = config.parse(["--storage", str(repo), "--encryption-keys", str(keys), "--export-checkpoint", ref.uri])
    assert export_checkpoint(cfg, out) == 0 and out.getvalue() == archive
    assert "sha256 verified" in capsys.readouterr().err

    without_keys = config.parse(["--storage", str(repo), "--export-checkpoint", ref.uri])
    assert export_checkpoint(without_keys, io.BytesIO()) == 1
    assert "encrypted with key 'k1'" in capsys.readouterr().err
    bad_uri = config.parse(["--storage", str(repo), "--export-checkpoint", "shared://nope"])
    assert export_checkpoint(bad_uri, io.BytesIO()) == 1
