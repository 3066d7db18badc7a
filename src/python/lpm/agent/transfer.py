"""Node to node: the source's agent streams a container's checkpoint archive to the target's agent.

The live engine's critical path. The archive goes over the agents' own mutual TLS (each agent's certificate is
both its serving and its client certificate, one CA signs them all), a runtime dump's while CRIU still writes
it (lpm.agent.dump.DumpStream: the source is frozen meanwhile, so that time is downtime); once it arrived, the
same bytes are compressed into the shared store, which stays the durable copy. The target stages it for
lpm-runc as it arrives (in memory when it fits: lpm.agent.scratch) and writes the container's `ready` marker
only once the stream's size and checksum match what the source counted; a push that fails leaves the target to
fetch the archive from the store (StageRestore).

The end-to-end checksum is XXH3-128 (agent.proto's StreamChecksum says why a non-cryptographic one is enough
inside mutual TLS): on this project's two-core test machine SHA-256 on both ends took 0.2 s of a 256 MiB push's
0.63 s (tests/bench/agent/bench_push.py); XXH3 hashes 256 MiB in 5 ms. A target still checks the SHA-256 an older
source sends.

The chunks between the first and the last carry only data, and the source puts them on the wire itself (`encode`:
the field's tag, its length, the bytes): protobuf's Python encoder (upb, protobuf 5.29) spends 1.4 ms per MiB
sizing and copying such a message, 0.37 s of a 256 MiB push's sending thread, against 0.03 s for the same bytes
framed by hand. The bytes are exactly what protobuf would send (tests/unit/agent/test_transfer.py), so either end
may be an older agent. The target's server hands such a message over as a view of its data (`decode`, installed
by `add_to_server`), where protobuf's parser and its `data` field would copy every MiB twice more on the
receiving side, the push's slower end.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol

import grpc
import xxhash

from lpm.api.agent.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)

CHUNK = 1 << 20
PEER_NAME = "lpm-agent"  # the agents' certificate name (deploy/certs/generate.sh); a peer agent's client CN
_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["CheckpointService"]
_RECEIVE_CHECKPOINT = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['ReceiveCheckpoint'].name}"
_DATA_TAG = bytes([agent_pb2.CheckpointChunk.DATA_FIELD_NUMBER << 3 | 2])  # field 3, length-delimited

Chunk = agent_pb2.CheckpointChunk | bytes
"""One message of a ReceiveCheckpoint stream as `chunks` makes it: bytes stand for a message with only `data` set."""
Received = agent_pb2.CheckpointChunk | memoryview
"""One as the target's server hands it over (`decode`): a view stands for a message with only `data` set."""


class TransferError(Exception):
    """The stream did not arrive whole."""


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


@dataclass(frozen=True)
class PeerTLS:
    """This agent's certificate, used as a client certificate towards its peers; None fields: plaintext."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None

    def channel(self, address: str) -> grpc.Channel:
        options = [("grpc.max_send_message_length", 4 * CHUNK)]
        if not (self.cert and self.key and self.ca):
            return grpc.insecure_channel(address, options=options)
        creds = grpc.ssl_channel_credentials(
            root_certificates=Path(self.ca).read_bytes(),
            private_key=Path(self.key).read_bytes(),
            certificate_chain=Path(self.cert).read_bytes(),
        )
        return grpc.secure_channel(address, creds, options=[*options, ("grpc.ssl_target_name_override", PEER_NAME)])


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode(chunk: Chunk) -> bytes:
    """A chunk as protobuf puts it on the wire; a data-only one framed here, without protobuf's slow encoder."""
    if isinstance(chunk, agent_pb2.CheckpointChunk):
        return chunk.SerializeToString()
    return b"".join((_DATA_TAG, _varint(len(chunk)), chunk)) if chunk else b""


def _read_varint(raw: bytes, at: int) -> tuple[int, int] | None:
    n = shift = 0
    for i in range(at, min(len(raw), at + 10)):
        n |= (raw[i] & 0x7F) << shift
        if raw[i] < 0x80:
            return n, i + 1
        shift += 7
    return None


def decode(raw: bytes) -> Received:
    """A ReceiveCheckpoint message as the target's server takes it off the wire: a data-only chunk (the whole
    message is one `data` field) as a view of its data, without a copy; any other message parsed by protobuf."""
    if raw[:1] == _DATA_TAG and (field := _read_varint(raw, 1)) is not None and sum(field) == len(raw):
        return memoryview(raw)[field[1] :]
    return agent_pb2.CheckpointChunk.FromString(raw)


class _Call(NamedTuple):  # grpc.HandlerCallDetails
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


def add_to_server(servicer: agent_pb2_grpc.CheckpointServiceServicer, server: grpc.Server) -> None:
    """The generated registration of CheckpointService, but ReceiveCheckpoint's requests go through `decode`."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}

    class Generated:  # takes what the generated code would add to a server
        def add_generic_rpc_handlers(self, generic: Iterable[grpc.GenericRpcHandler]) -> None:
            for handler in generic:
                for method in _SERVICE.methods:
                    if found := handler.service(_Call(f"/{_SERVICE.full_name}/{method.name}", ())):
                        handlers[method.name] = found

        def add_registered_method_handlers(self, _: str, methods: dict[str, grpc.RpcMethodHandler]) -> None:
            handlers.update(methods)

    agent_pb2_grpc.add_CheckpointServiceServicer_to_server(servicer, Generated())
    handlers["ReceiveCheckpoint"] = handlers["ReceiveCheckpoint"]._replace(request_deserializer=decode)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE.full_name, handlers),))


def receive_checkpoint(channel: grpc.Channel) -> grpc.StreamUnaryMultiCallable:
    """The target agent's ReceiveCheckpoint, fed with `chunks` (the generated stub would encode every chunk with
    protobuf)."""
    return channel.stream_unary(
        _RECEIVE_CHECKPOINT,
        request_serializer=encode,
        response_deserializer=agent_pb2.StageRestoreResponse.FromString,
    )


def chunks(
    source: Callable[[], BinaryIO],
    expected_size: int,
    checkpoint_id: str,
    container: str,
    sent: Callable[[int], None] | None = None,
    lazy_pages_from: str = "",
    chunk_size: int = CHUNK,
) -> Iterator[Chunk]:
    """The archive as a stream: ids, the expected size and the checksum's kind on the first chunk, size and
    checksum on the last, only data between them; `sent` hears of each chunk as gRPC takes it.
    `lazy_pages_from`: post-copy, the page server with the memory."""
    digest, size = xxhash.xxh3_128(), 0
    first = True
    with source() as f:
        while data := f.read(chunk_size):
            digest.update(data)
            size += len(data)
            if sent is not None:
                sent(len(data))
            if first:
                yield agent_pb2.CheckpointChunk(
                    checkpoint_id=checkpoint_id,
                    container_name=container,
                    data=data,
                    expected_size_bytes=expected_size,
                    lazy_pages_from=lazy_pages_from,
                    checksum=agent_pb2.STREAM_CHECKSUM_XXH3_128,
                )
                first = False
            else:
                yield data
    tail = agent_pb2.CheckpointChunk(last=True, raw_size_bytes=size, raw_xxh3_128=digest.digest())
    if first:
        tail.checkpoint_id, tail.container_name = checkpoint_id, container
        tail.checksum = agent_pb2.STREAM_CHECKSUM_XXH3_128
    yield tail


def received(first: agent_pb2.CheckpointChunk, rest: Iterator[Received]) -> Iterator[bytes | memoryview]:
    """The data of a ReceiveCheckpoint stream; raises TransferError at its end unless it arrived whole."""
    digest: _Digest
    match first.checksum:
        case agent_pb2.STREAM_CHECKSUM_XXH3_128:
            name, digest, sent_by = "XXH3-128", xxhash.xxh3_128(), lambda m: m.raw_xxh3_128.hex()
        case agent_pb2.STREAM_CHECKSUM_SHA256:
            name, digest, sent_by = "sha256", hashlib.sha256(), lambda m: m.raw_sha256
        case other:
            raise TransferError(f"the source checks the stream with a checksum this agent does not know ({other})")
    size = 0
    msg: Received | None = first
    while msg is not None:
        data = msg if isinstance(msg, memoryview) else msg.data
        if data:
            digest.update(data)
            size += len(data)
            yield data
        if isinstance(msg, agent_pb2.CheckpointChunk) and msg.last:
            sent = sent_by(msg)
            if size != msg.raw_size_bytes or digest.hexdigest() != sent:
                raise TransferError(
                    f"received {size} bytes with {name} {digest.hexdigest()}, the source sent {msg.raw_size_bytes} "
                    f"with {name} {sent}"
                )
            return
        msg = next(rest, None)
    raise TransferError("the stream ended before its last chunk")


@dataclass
class Push:
    """One archive pushed on a thread, which the caller waits for with its own deadline."""

    address: str
    checkpoint_id: str
    container: str
    source: Callable[[], BinaryIO]  # opens the archive (CheckpointResult.open)
    size: int
    tls: PeerTLS
    timeout: float
    sent: Callable[[int], None] | None = None
    lazy_pages_from: str = ""
    ok: bool = False
    message: str = ""
    seconds: float = 0.0
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> Push:
        self._thread = threading.Thread(target=self._run, name=f"push-{self.container}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        try:
            with self.tls.channel(self.address) as channel:
                reply = receive_checkpoint(channel)(
                    chunks(self.source, self.size, self.checkpoint_id, self.container, self.sent, self.lazy_pages_from),
                    timeout=self.timeout,
                )
            self.ok = True
            self.message = f"staged on the target's agent ({reply.image_bytes} bytes of CRIU images)"
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = exc.details() if hasattr(exc, "details") else str(exc)
            self.message = f"push to {self.address} failed ({code.name}): {details}"
        except OSError as exc:
            self.message = f"push to {self.address} failed: {exc}"
        self.seconds = time.monotonic() - started
        log.log(
            logging.INFO if self.ok else logging.WARNING,
            "checkpoint %s/%s: %s in %.2fs",
            self.checkpoint_id,
            self.container,
            self.message,
            self.seconds,
        )

    def wait(self, timeout: float) -> Push:
        if self._thread is not None:
            self._thread.join(max(0.0, timeout))
            if self._thread.is_alive():
                self.message = f"push to {self.address} still running after {timeout:.0f}s"
        return self
