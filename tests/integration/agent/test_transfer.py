"""Node to node: one real agent server pushes a checkpoint archive to another over mutual TLS with the agents'
own certificate (CN lpm-agent), and the receiver stages it for lpm-runc only once it arrived whole."""

from __future__ import annotations

import io
import json
import stat
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from integration.agent.harness import Pki

from lpm.agent import config, pages, transfer
from lpm.agent import freezer as fz
from lpm.agent.deps import Deps
from lpm.agent.dump import TarLayout
from lpm.agent.handoff import Handoff
from lpm.agent.images import ImageLoader
from lpm.agent.server import AgentServer
from lpm.api.agent.v1 import agent_pb2, agent_pb2_grpc
from lpm.storage.posix import PosixBackend
from lpm.storage.store import CheckpointStore

CKPT = "20260101t000000z-abcdef12"


def archive(path: Path, pages: bytes) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in {"checkpoint/inventory.img": b"inv", "checkpoint/pages-1.img": pages}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


class NoKubelet:
    """The receiving side never talks to its kubelet."""

    def close(self) -> None:
        pass


@pytest.fixture
def target(tmp_path: Path, pki: Pki) -> Iterator[tuple[AgentServer, Handoff]]:
    cfg = config.parse(
        [
            "--listen", "127.0.0.1:0", "--node-name", "target", "--storage", str(tmp_path / "repo"),
            "--tls-cert", str(pki.agent_cert), "--tls-key", str(pki.agent_key), "--tls-client-ca", str(pki.ca),
        ]
    )  # fmt: skip
    (tmp_path / "repo").mkdir()
    handoff = Handoff(tmp_path / "handoff")
    deps = Deps(
        node_name="target",
        store=CheckpointStore(PosixBackend(tmp_path / "repo"), "target"),
        kubelet=NoKubelet(),  # type: ignore[arg-type]
        freezer=fz.Freezer(lambda uid, name: Path("/nonexistent"), tmp_path / "state"),
        images=ImageLoader(runtime="podman"),
        handoff=handoff,
        lazy_pages_problem="",  # as probed on a node that can (lpm.agent.kernel)
        criu_tls=pages.CriuTLS(tmp_path / "criu-tls", str(pki.agent_cert), str(pki.agent_key), str(pki.ca)),
    )
    server = AgentServer(cfg, deps)
    server.start()
    yield server, handoff
    server.stop(grace=0)


def peer(pki: Pki) -> transfer.PeerTLS:
    return transfer.PeerTLS(str(pki.agent_cert), str(pki.agent_key), str(pki.ca))


def test_a_pushed_archive_is_staged_verified_on_the_target(tmp_path: Path, pki: Pki, target) -> None:
    server, handoff = target
    pages = bytes(range(256)) * 20000  # 5 MB: several chunks
    path = archive(tmp_path / "a.tar", pages)
    push = transfer.Push(
        f"127.0.0.1:{server.port}", CKPT, "app", lambda: path.open("rb"), path.stat().st_size, peer(pki), timeout=30
    )
    push.start().wait(30)
    assert push.ok, push.message
    ready = json.loads((tmp_path / "handoff" / CKPT / "app" / "ready").read_text())
    assert (Path(ready["images"]) / "pages-1.img").read_bytes() == pages


def _lpm_runc_waits(handoff_root: Path, delay: float) -> tuple[threading.Thread, list[float]]:
    """Plays lpm-runc for container app: announces itself, and once the checkpoint is ready restores it in
    `delay` seconds: when it did goes into the list."""
    d = handoff_root / CKPT / "app"
    d.mkdir(parents=True)
    (d / "waiting").write_text(json.dumps({"container_id": "c1", "since": "2026-01-01T00:00:00Z"}))
    restored_at: list[float] = []

    def run() -> None:
        deadline = time.monotonic() + 30
        while not (d / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
        restored_at.append(time.monotonic())  # before the marker: the push may return the moment it appears
        (d / "restored").write_text("{}")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, restored_at


def test_a_push_to_a_waiting_container_returns_once_it_is_restored_so_the_durable_copy_comes_after(
    tmp_path: Path, pki: Pki, target
) -> None:
    server, _ = target
    path = archive(tmp_path / "a.tar", b"p" * 100_000)
    thread, restored_at = _lpm_runc_waits(tmp_path / "handoff", delay=0.5)
    push = transfer.Push(
        f"127.0.0.1:{server.port}", CKPT, "app", lambda: path.open("rb"), path.stat().st_size, peer(pki), timeout=30
    )
    assert push.start().wait(30).ok, push.message
    returned_at = time.monotonic()
    thread.join(5)
    assert restored_at and restored_at[0] <= returned_at, "the push returned before the restore ended"


def test_a_post_copy_push_returns_before_the_restore_which_needs_the_pages_after_it(
    tmp_path: Path, pki: Pki, target
) -> None:
    server, _ = target
    path = archive(tmp_path / "a.tar", b"metadata only")
    thread, restored_at = _lpm_runc_waits(tmp_path / "handoff", delay=3.0)
    push = transfer.Push(
        f"127.0.0.1:{server.port}", CKPT, "app", lambda: path.open("rb"), path.stat().st_size, peer(pki), timeout=30,
        lazy_pages_from="10.0.0.7:40123",
    )  # fmt: skip
    assert push.start().wait(30).ok, push.message
    assert not restored_at, "a post-copy push waited for a restore that needs the source's page server"
    thread.join(5)


def test_a_dump_read_as_an_archive_without_being_written_is_staged_whole_on_the_target(
    tmp_path: Path, pki: Pki, target
) -> None:
    server, _ = target
    dump = tmp_path / "dump"
    (dump / "checkpoint").mkdir(parents=True)
    pages = bytes(range(256)) * 8193  # several chunks, and not a multiple of the tar block size
    (dump / "checkpoint" / "pages-1.img").write_bytes(pages)
    (dump / "checkpoint" / "inventory.img").write_bytes(b"inv")
    (dump / "deleted.files").write_text('["/etc/old"]')
    (dump / "volumes.json").write_text("{}")
    names = ["checkpoint", "checkpoint/inventory.img", "checkpoint/pages-1.img", "deleted.files", "volumes.json"]
    layout = TarLayout.of([(n, dump / n) for n in names])
    sent = [
        agent_pb2.CheckpointChunk.FromString(transfer.encode(c))
        for c in transfer.chunks(layout.open, layout.size, CKPT, "app")
    ]
    assert [c.expected_size_bytes for c in sent][:2] == [
        layout.size,
        0,
    ], "the first chunk, and only the first, tells the target how large the archive is"
    push = transfer.Push(f"127.0.0.1:{server.port}", CKPT, "app", layout.open, layout.size, peer(pki), timeout=30)
    push.start().wait(30)
    assert push.ok, push.message
    ready = json.loads((tmp_path / "handoff" / CKPT / "app" / "ready").read_text())
    assert (Path(ready["images"]) / "pages-1.img").read_bytes() == pages
    assert ready["deleted_files"] == ["/etc/old"]


def test_a_stream_that_does_not_match_its_trailer_is_refused_and_nothing_is_staged(
    tmp_path: Path, pki: Pki, target
) -> None:
    server, _ = target
    path = archive(tmp_path / "a.tar", b"p" * 3000)
    good = list(transfer.chunks(lambda: path.open("rb"), path.stat().st_size, CKPT, "app"))
    first = good[0]
    assert isinstance(first, agent_pb2.CheckpointChunk)
    assert first.expected_size_bytes == path.stat().st_size, "the target is told the whole size up front"
    tampered = [*good[:-1], agent_pb2.CheckpointChunk(last=True, raw_size_bytes=7, raw_xxh3_128=bytes(16))]
    with peer(pki).channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.RpcError) as refused:
            transfer.receive_checkpoint(channel)(iter(tampered), timeout=30)
    assert refused.value.code() == grpc.StatusCode.DATA_LOSS
    assert not (tmp_path / "handoff" / CKPT / "app" / "ready").exists()


def test_a_peer_agent_may_hand_over_a_checkpoint_and_nothing_else(tmp_path: Path, pki: Pki, target) -> None:
    server, _ = target
    with peer(pki).channel(f"127.0.0.1:{server.port}") as channel:
        stub = agent_pb2_grpc.CheckpointServiceStub(channel)
        for call, req in (
            (stub.GetCapabilities, agent_pb2.GetCapabilitiesRequest()),
            (stub.Thaw, agent_pb2.ThawRequest(checkpoint_id=CKPT)),
            (stub.AbortRestore, agent_pb2.AbortRestoreRequest(checkpoint_id=CKPT)),
        ):
            with pytest.raises(grpc.RpcError) as denied:
                call(req, timeout=10)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The controller's own client certificate still may.
    creds = grpc.ssl_channel_credentials(pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes())
    with grpc.secure_channel(f"localhost:{server.port}", creds) as channel:
        caps = agent_pb2_grpc.CheckpointServiceStub(channel).GetCapabilities(agent_pb2.GetCapabilitiesRequest())
        assert caps.node_name == "target" and caps.live_restore_supported


def test_a_post_copy_checkpoint_is_staged_with_where_its_pages_are_and_crius_tls_files(
    tmp_path: Path, pki: Pki, target
) -> None:
    server, handoff = target
    address = f"127.0.0.1:{server.port}"
    path = archive(tmp_path / "a.tar", b"metadata only")
    push = transfer.Push(
        address, CKPT, "app", lambda: path.open("rb"), path.stat().st_size, peer(pki), timeout=30,
        lazy_pages_from="10.0.0.7:40123",
    )  # fmt: skip
    assert push.start().wait(30).ok, push.message
    ready = json.loads((tmp_path / "handoff" / CKPT / "app" / "ready").read_text())
    lazy = ready["lazy_pages"]
    assert (lazy["address"], lazy["port"]) == ("10.0.0.7", 40123)
    # CRIU reads the agent's own certificate, key and CA from a root-only copy.
    tls = tmp_path / "criu-tls"
    assert lazy["tls"] == {"cacert": str(tls / "ca.crt"), "cert": str(tls / "tls.crt"), "key": str(tls / "tls.key")}
    assert (tls / "tls.key").read_bytes() == pki.agent_key.read_bytes()
    assert (tls / "ca.crt").read_bytes() == pki.ca.read_bytes()
    assert stat.S_IMODE(tls.stat().st_mode) == 0o700
    assert {stat.S_IMODE((tls / n).stat().st_mode) for n in ("ca.crt", "tls.crt", "tls.key")} == {0o600}
    # Pushed again (a source agent that restarted mid-stream re-dumps): a page stream cannot be resumed.
    (tmp_path / "handoff" / CKPT / "app" / "restored").write_text("{}")
    again = transfer.Push(
        address, CKPT, "app", lambda: path.open("rb"), path.stat().st_size, peer(pki), timeout=30,
        lazy_pages_from="10.0.0.7:40123",
    )  # fmt: skip
    assert not again.start().wait(30).ok and "cannot be resumed" in again.message, again.message


def test_a_node_that_cannot_post_copy_refuses_a_post_copy_push(tmp_path: Path, pki: Pki, target) -> None:
    server, _ = target
    server.deps.lazy_pages_problem = "fs.pipe-max-size is 1048576"
    path = archive(tmp_path / "a.tar", b"metadata only")
    push = transfer.Push(
        f"127.0.0.1:{server.port}", CKPT, "app", lambda: path.open("rb"), path.stat().st_size, peer(pki),
        timeout=30, lazy_pages_from="10.0.0.7:40123",
    )  # fmt: skip
    assert not push.start().wait(30).ok and "fs.pipe-max-size" in push.message, push.message
    assert not (tmp_path / "handoff" / CKPT / "app" / "ready").exists()
