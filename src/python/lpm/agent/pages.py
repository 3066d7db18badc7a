"""Post-copy: CRIU's page-server protocol relayed between two nodes over the agents' mutual TLS.

CRIU's page server and its `criu lazy-pages` client speak plain TCP. Neither end is exposed: on the source,
`runc checkpoint --lazy-pages` (through lpm-runc) serves pages on the node's loopback, and the source's agent
connects to it at once (the page server takes a single connection, so nothing else on the node can); on the
target, the agent listens on the node's loopback for the one connection of the `criu lazy-pages` that lpm-runc
starts, and accepts it only from a root-owned socket. Between the two, the bytes go as they are through the
agents' StreamPages call (the source's agent is the client, as for ReceiveCheckpoint). The agents run in the
node's network namespace (hostNetwork), so their loopback is the node's.

The stream ends when the target's lazy-pages daemon closes its connection: every page arrived (CRIU's
`runc checkpoint` on the source then exits 0), or it gave up.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc

from lpm.agent.transfer import PeerTLS
from lpm.api.agent.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)

LOOPBACK: Final = "127.0.0.1"
_READ: Final = 1 << 20
_PROC_NET_TCP: Final = Path("/proc/net/tcp")


class PageRelayError(Exception):
    """The page stream could not be set up."""


def free_port() -> int:
    """A port on the loopback that nothing listens on now (CRIU's page server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def socket_owner(local_port: int, remote_port: int, proc_net_tcp: Path = _PROC_NET_TCP) -> int | None:
    """The uid owning the loopback TCP socket 127.0.0.1:local_port -> 127.0.0.1:remote_port, from the kernel's
    table; None when it is not there."""
    want_local = f"0100007F:{local_port:04X}"
    want_remote = f"0100007F:{remote_port:04X}"
    for line in proc_net_tcp.read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 7 and fields[1] == want_local and fields[2] == want_remote:
            return int(fields[7])
    return None


@dataclass
class _Listener:
    sock: socket.socket
    port: int


class PageRelay:
    """The target's side: one loopback listener per (checkpoint, container) staged for post-copy."""

    def __init__(self, proc_net_tcp: Path = _PROC_NET_TCP, accept_timeout: float = 60.0) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[tuple[str, str], _Listener] = {}
        self._proc_net_tcp = proc_net_tcp
        self.accept_timeout = accept_timeout

    def listen(self, checkpoint_id: str, container: str) -> int:
        """The port `criu lazy-pages` connects to (written into lpm-runc's `ready`). Idempotent."""
        with self._lock:
            found = self._listeners.get((checkpoint_id, container))
            if found is not None:
                return found.port
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            sock.listen(1)
            port = int(sock.getsockname()[1])
            self._listeners[(checkpoint_id, container)] = _Listener(sock, port)
            return port

    def close(self, checkpoint_id: str, container: str | None = None) -> None:
        """A rollback (or a staging that failed): nothing of this checkpoint connects any more."""
        with self._lock:
            for key in [k for k in self._listeners if k[0] == checkpoint_id and container in (None, k[1])]:
                self._listeners.pop(key).sock.close()

    def _accept(self, checkpoint_id: str, container: str) -> socket.socket:
        with self._lock:
            listener = self._listeners.pop((checkpoint_id, container), None)
        if listener is None:
            raise PageRelayError(f"checkpoint {checkpoint_id}/{container} was not staged for post-copy on this node")
        try:
            listener.sock.settimeout(self.accept_timeout)
            try:
                conn, (_, peer_port) = listener.sock.accept()
            except TimeoutError:
                raise PageRelayError(
                    f"criu lazy-pages did not connect within {self.accept_timeout:.0f}s (did lpm-runc start the "
                    "restore?)"
                ) from None
            owner = socket_owner(peer_port, listener.port, self._proc_net_tcp)
            if owner != 0:
                conn.close()
                raise PageRelayError(
                    f"the connection to the page relay of {checkpoint_id}/{container} came from a socket owned by "
                    f"uid {owner}, not root's criu lazy-pages; refused (process memory)"
                )
            conn.settimeout(None)
            return conn
        finally:
            listener.sock.close()

    def serve(
        self, checkpoint_id: str, container: str, incoming: Iterator[bytes], moved: Callable[[int], None] | None = None
    ) -> Iterator[bytes]:
        """Relay between the lazy-pages daemon's connection and the source's stream: yields what the daemon
        sends (for the source's page server); `incoming` is what the page server sent."""
        conn = self._accept(checkpoint_id, container)

        def downstream() -> None:
            try:
                for data in incoming:
                    conn.sendall(data)
                    if moved is not None:
                        moved(len(data))
            except (OSError, grpc.RpcError) as exc:
                log.info("post-copy %s/%s: the source's stream ended: %s", checkpoint_id, container, exc)
            finally:
                with suppress(OSError):
                    conn.shutdown(socket.SHUT_WR)

        pump = threading.Thread(target=downstream, name=f"pages-{container}", daemon=True)
        pump.start()
        try:
            while data := conn.recv(_READ):
                yield data
        finally:
            _close(conn)  # the pump ends with the source's stream (the call's end)


def _close(conn: socket.socket) -> None:
    """shutdown first: it wakes a thread blocked in recv on it, which close alone does not."""
    with suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()


@dataclass
class Relayed:
    ok: bool
    message: str
    page_bytes: int
    seconds: float


def connect_page_server(port: int, timeout: float = 5.0) -> socket.socket:
    """The source's page server, on the node's loopback: connected as soon as it listens (it takes one
    connection: this one)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = socket.create_connection((LOOPBACK, port), timeout=timeout)
            conn.settimeout(None)
            return conn
        except ConnectionRefusedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def relay_source(
    conn: socket.socket,
    address: str,
    tls: PeerTLS,
    checkpoint_id: str,
    container: str,
    timeout: float,
    moved: Callable[[int], None] | None = None,
) -> Relayed:
    """The source's side: the page server's connection `conn` to the target agent's StreamPages, until the
    target's lazy-pages daemon closed its end. Closes `conn`."""
    started, sent = time.monotonic(), 0

    def upstream() -> Iterator[agent_pb2.PageData]:
        nonlocal sent
        yield agent_pb2.PageData(checkpoint_id=checkpoint_id, container_name=container)
        with suppress(OSError):
            while data := conn.recv(_READ):
                sent += len(data)
                if moved is not None:
                    moved(len(data))
                yield agent_pb2.PageData(data=data)

    try:
        with tls.channel(address) as channel:
            stub = agent_pb2_grpc.CheckpointServiceStub(channel)
            for reply in stub.StreamPages(upstream(), timeout=timeout):
                conn.sendall(reply.data)
        ok, message = True, f"every page went to the target ({sent} bytes)"
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else str(exc)
        ok, message = False, f"page stream to {address} failed ({code.name}): {details}"
    except OSError as exc:
        ok, message = False, f"page stream to {address} failed: {exc}"
    finally:
        _close(conn)
    seconds = time.monotonic() - started
    log.log(
        logging.INFO if ok else logging.WARNING,
        "post-copy %s/%s: %s in %.2fs",
        checkpoint_id,
        container,
        message,
        seconds,
    )
    return Relayed(ok, message, sent, seconds)
