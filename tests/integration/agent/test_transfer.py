"""Node to node: one real agent server pushes a checkpoint archive to another over mutual TLS with the agents'
own certificate (CN lpm-agent), and the receiver stages it for lpm-runc only once it arrived whole."""

from __future__ import annotations

import io
import json
import socket
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
    assert [c.expected_size_bytes for c in transfer.chunks(layout.open, layout.size, CKPT, "app")][:2] == [
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
    assert good[0].expected_size_bytes == path.stat().st_size, "the target is told the whole size up front"
    tampered = [*good[:-1], agent_pb2.CheckpointChunk(last=True, raw_size_bytes=7, raw_sha256="0" * 64)]
    with peer(pki).channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.RpcError) as refused:
            agent_pb2_grpc.CheckpointServiceStub(channel).ReceiveCheckpoint(iter(tampered), timeout=30)
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


def _page_server() -> tuple[socket.socket, int]:
    """Stands in for CRIU's page server on the source's loopback: one connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    return listener, listener.getsockname()[1]


def test_post_copy_pages_are_relayed_both_ways_between_the_page_server_and_the_lazy_pages_daemon(
    tmp_path: Path, pki: Pki, target
) -> None:
    server, handoff = target
    address = f"127.0.0.1:{server.port}"
    path = archive(tmp_path / "a.tar", b"metadata only")
    push = transfer.Push(
        address, CKPT, "app", lambda: path.open("rb"), path.stat().st_size, peer(pki), timeout=30, lazy_pages=True
    )
    assert push.start().wait(30).ok, push.message
    ready = json.loads((tmp_path / "handoff" / CKPT / "app" / "ready").read_text())
    assert ready["lazy_pages"]["address"] == "127.0.0.1"
    staged = Path(ready["images"])
    assert staged.is_dir()

    listener, port = _page_server()
    page_server: dict[str, bytes] = {}

    def serve_pages() -> None:
        conn, _ = listener.accept()
        with conn:
            page_server["request"] = conn.recv(64)
            conn.sendall(b"P" * (3 << 20))  # 3 MiB of "pages": several relay chunks
            page_server["close"] = conn.recv(64)

    served = threading.Thread(target=serve_pages)
    served.start()
    relayed: list[pages.Relayed] = []
    source = threading.Thread(
        target=lambda: relayed.append(
            pages.relay_source(pages.connect_page_server(port), address, peer(pki), CKPT, "app", timeout=30)
        )
    )
    source.start()
    # The target's `criu lazy-pages`: connects to the relay lpm-runc was told about, asks, reads, says goodbye.
    with socket.create_connection(("127.0.0.1", ready["lazy_pages"]["port"]), timeout=10) as daemon:
        daemon.sendall(b"GET")
        got = b""
        while len(got) < 3 << 20:
            got += daemon.recv(1 << 20)
        daemon.sendall(b"BYE")
        time.sleep(0.2)  # let BYE through before the daemon's end closes the stream
    source.join(30)
    served.join(30)
    listener.close()
    assert got == b"P" * (3 << 20)
    assert page_server == {"request": b"GET", "close": b"BYE"}
    assert relayed and relayed[0].ok, relayed
    assert relayed[0].page_bytes == 3 << 20
    # The daemon is done with the images once its connection ended: they are process memory, removed.
    deadline = time.monotonic() + 5
    while staged.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not staged.exists()


def test_the_page_relay_refuses_a_connection_from_a_socket_root_does_not_own(tmp_path: Path) -> None:
    table = tmp_path / "tcp"
    relay = pages.PageRelay(proc_net_tcp=table, accept_timeout=5)
    port = relay.listen(CKPT, "app")
    with socket.create_connection(("127.0.0.1", port)) as intruder:
        local = intruder.getsockname()[1]
        table.write_text(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
            f"   0: 0100007F:{local:04X} 0100007F:{port:04X} 01 00000000:00000000 00:00000000 00000000  1000 0 1\n"
        )
        with pytest.raises(pages.PageRelayError, match="uid 1000"):
            next(relay.serve(CKPT, "app", iter(())))
    with pytest.raises(pages.PageRelayError, match="not staged for post-copy"):
        next(relay.serve(CKPT, "app", iter(())))  # the one connection was spent: nothing else gets in
