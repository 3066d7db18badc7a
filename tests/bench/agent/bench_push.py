"""Benchmark: the Live engine's node-to-node push of one container's checkpoint, against the floor.

    ./pants run tests/bench/agent/bench_push.py [-- --sizes 64 256 --rounds 5]

The push (lpm.agent.transfer): the source's agent reads a dumped checkpoint as a tar stream made from its files
(lpm.agent.dump.TarLayout), hashes it and streams it over gRPC with mutual TLS; the target's agent (here a
receiving server in its own process, with the agent's own ReceiveCheckpoint path: transfer.received into
Handoff.stage) hashes it again and lays the CRIU images out for lpm-runc, in memory. Measured: the push's wall
time, from the first byte read to the target's answer.

Floor, same run, same bytes: the archive sent over a plain TLS socket with the same certificates (Python's ssl,
1 MiB writes) by one process and written to memory by another; and `cat` of the page file into memory (what
the target's copy costs at least). Both processes share this machine, as the two local nodes do.

Prints every round, medians and push/floor ratios. It measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
from integration.agent.harness import make_pki

from lpm.agent import transfer
from lpm.agent.dump import TarLayout
from lpm.agent.handoff import Handoff
from lpm.agent.scratch import Scratch
from lpm.api.agent.v1 import agent_pb2, agent_pb2_grpc

MEMORY = Path("/dev/shm")


class Receiver(agent_pb2_grpc.CheckpointServiceServicer):
    """The agent's ReceiveCheckpoint without the rest of the agent, registered as the agent registers it."""

    def __init__(self, handoff: Handoff) -> None:
        self.handoff = handoff

    def ReceiveCheckpoint(
        self, request_iterator: Iterator[transfer.Received], context: grpc.ServicerContext
    ) -> agent_pb2.StageRestoreResponse:
        first = next(request_iterator)
        assert isinstance(first, agent_pb2.CheckpointChunk)
        staged = self.handoff.stage(
            first.checkpoint_id,
            first.container_name,
            transfer.received(first, request_iterator),
            size_bytes=first.expected_size_bytes,
        )
        return agent_pb2.StageRestoreResponse(image_bytes=staged.image_bytes)


def serve_grpc(pki_dir: Path, root: Path, port_file: Path) -> None:
    """The target's side: the agent's receiving path behind mutual TLS, staging in memory."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.max_receive_message_length", 8 << 20)]
    )
    receiver = Receiver(Handoff(root, scratch=Scratch(root, root)))  # type: ignore[abstract]  # the one call it takes
    transfer.add_to_server(receiver, server)
    creds = grpc.ssl_server_credentials(
        [((pki_dir / "tls.key").read_bytes(), (pki_dir / "tls.crt").read_bytes())],
        root_certificates=(pki_dir / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    port_file.write_text(str(port))
    server.wait_for_termination()


def serve_tls(pki_dir: Path, where: Path, port_file: Path) -> None:
    """The floor's target: accept TLS connections, write what each sends to a file in `where`."""
    out = where / "floor.out"
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki_dir / "ca.crt"))
    ctx.load_cert_chain(str(pki_dir / "tls.crt"), str(pki_dir / "tls.key"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port_file.write_text(str(listener.getsockname()[1]))
        while True:
            conn, _ = listener.accept()
            with ctx.wrap_socket(conn, server_side=True) as tls, open(out, "wb") as f:
                buf = bytearray(1 << 20)
                left = int.from_bytes(tls.recv(8), "big")
                while left and (n := tls.recv_into(buf, min(len(buf), left))):
                    f.write(memoryview(buf)[:n])
                    left -= n
                tls.sendall(b"k")


def start(mode: str, pki_dir: Path, where: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = where / f"{mode}.port"
    proc = subprocess.Popen([sys.executable, __file__, f"--serve-{mode}", str(pki_dir), str(where), str(port_file)])
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the {mode} receiver did not start")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


def checkpoint_dir(where: Path, mib: int) -> TarLayout:
    """A dumped checkpoint as the dump leaves it: CRIU's images (one large page file) and a small rootfs diff."""
    images = where / "checkpoint"
    images.mkdir()
    with open(images / "pages-1.img", "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    for name in ("inventory.img", "pagemap-1.img", "core-1.img", "mm-1.img"):
        (images / name).write_bytes(os.urandom(4096))
    (where / "rootfs-diff.tar").write_bytes(bytes(10240))
    files = [("checkpoint", images), *((f"checkpoint/{p.name}", p) for p in sorted(images.iterdir()))]
    return TarLayout.of([*files, ("rootfs-diff.tar", where / "rootfs-diff.tar")])


def push_round(layout: TarLayout, port: int, pki_dir: Path, i: int) -> float:
    tls = transfer.PeerTLS(str(pki_dir / "tls.crt"), str(pki_dir / "tls.key"), str(pki_dir / "ca.crt"))
    push = transfer.Push(f"127.0.0.1:{port}", f"20260101t000000z-{i:08x}", "app", layout.open, layout.size, tls, 120)
    started = time.monotonic()
    push.start().wait(120)
    took = time.monotonic() - started
    if not push.ok:
        raise SystemExit(push.message)
    return took


def tls_round(layout: TarLayout, port: int, pki_dir: Path) -> float:
    ctx = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
    ctx.load_cert_chain(str(pki_dir / "tls.crt"), str(pki_dir / "tls.key"))
    ctx.check_hostname = False
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw) as tls, layout.open() as f:
        tls.sendall(layout.size.to_bytes(8, "big"))
        while data := f.read(1 << 20):
            tls.sendall(data)
        tls.recv(1)
    return time.monotonic() - started


def cat_round(layout: TarLayout, where: Path) -> float:
    started = time.monotonic()
    subprocess.run(f"cat {where / 'checkpoint' / 'pages-1.img'} > {MEMORY / 'lpm-bench-cat'}", shell=True, check=True)
    took = time.monotonic() - started
    (MEMORY / "lpm-bench-cat").unlink()
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="MiB of pages in the checkpoint")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lpm-bench-push-", dir=MEMORY) as tmp:
        base = Path(tmp)
        pki = make_pki(base / "pki")
        pki_dir = base / "agent"
        pki_dir.mkdir()
        for src, name in ((pki.ca, "ca.crt"), (pki.agent_cert, "tls.crt"), (pki.agent_key, "tls.key")):
            (pki_dir / name).write_bytes(Path(src).read_bytes())
        staged = base / "staged"
        staged.mkdir()
        grpc_proc, grpc_port = start("grpc", pki_dir, staged)
        tls_proc, tls_port = start("tls", pki_dir, base)
        try:
            for mib in args.sizes:
                where = base / f"ckpt-{mib}"
                where.mkdir()
                layout = checkpoint_dir(where, mib)
                rows: dict[str, list[float]] = {"push": [], "tls floor": [], "cat": []}
                for i in range(args.rounds):
                    rows["push"].append(push_round(layout, grpc_port, pki_dir, mib * 1000 + i))
                    rows["tls floor"].append(tls_round(layout, tls_port, pki_dir))
                    rows["cat"].append(cat_round(layout, where))
                    for d in staged.glob("2026*"):
                        subprocess.run(["rm", "-rf", str(d)], check=True)
                    print(
                        f"{mib} MiB round {i}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in rows.items()), flush=True
                    )
                med = {k: statistics.median(v) for k, v in rows.items()}
                mb = layout.size / 1e6
                print(f"\n{mib} MiB ({mb:.0f} MB archive), medians of {args.rounds}:")
                for k, v in med.items():
                    print(f"  {k:10s} {v:.3f} s  {mb / v:7.0f} MB/s")
                floor, cat = med["push"] / med["tls floor"], med["push"] / med["cat"]
                print(f"  push/tls floor {floor:.2f}x, push/cat {cat:.2f}x\n")
                subprocess.run(["rm", "-rf", str(where)], check=True)
        finally:
            grpc_proc.kill()
            tls_proc.kill()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1].startswith("--serve-"):
        mode, pki_arg, where_arg, port_arg = sys.argv[1][len("--serve-") :], *sys.argv[2:]
        if mode == "grpc":
            serve_grpc(Path(pki_arg), Path(where_arg), Path(port_arg))
        else:
            serve_tls(Path(pki_arg), Path(where_arg), Path(port_arg))
    else:
        main()
