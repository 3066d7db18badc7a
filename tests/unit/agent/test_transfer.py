"""The push's framing and end-to-end checksum (lpm.agent.transfer): what the target accepts, on its own.

The real gRPC stream between two agents over mutual TLS is tests/integration/agent/test_transfer.py; here the
messages go from `chunks` through their wire encoding (`encode`, then protobuf's parser, which `decode` on the
target's server leaves to its own tests below) to `received` directly, so any damage can be made to them on
the way.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from concurrent import futures
from typing import Any, cast

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from lpm.agent import transfer
from lpm.api.agent.v1 import agent_pb2, agent_pb2_grpc

CKPT = "20260101t000000z-abcdef12"


def pushed(data: bytes, chunk_size: int) -> list[agent_pb2.CheckpointChunk]:
    sent = transfer.chunks(lambda: io.BytesIO(data), len(data), CKPT, "app", chunk_size=chunk_size)
    return [agent_pb2.CheckpointChunk.FromString(transfer.encode(c)) for c in sent]


# Lengths around the varint's byte boundaries (1, 2, 3 and 4 bytes of length), and a whole chunk.
_EDGES = [0, 1, 127, 128, 16383, 16384, transfer.CHUNK - 1, transfer.CHUNK, (1 << 21) - 1, 1 << 21]


@given(
    data=st.binary(max_size=3000)
    | st.sampled_from(_EDGES).map(lambda n: bytes(range(256)) * (n // 256) + b"x" * (n % 256))
)
def test_a_data_chunk_goes_on_the_wire_exactly_as_protobuf_would_send_it(data: bytes) -> None:
    """The source frames data-only chunks itself; a target (of any version) must parse them as protobuf's own."""
    message = agent_pb2.CheckpointChunk(data=data)
    assert transfer.encode(data) == message.SerializeToString()
    assert agent_pb2.CheckpointChunk.FromString(transfer.encode(data)) == message


@given(data=st.binary(max_size=3000), chunk_size=st.integers(1, 700))
def test_the_target_s_server_takes_data_chunks_as_views_and_parses_the_rest(data: bytes, chunk_size: int) -> None:
    sent = list(transfer.chunks(lambda: io.BytesIO(data), len(data), CKPT, "app", chunk_size=chunk_size))
    taken = [transfer.decode(transfer.encode(c)) for c in sent]
    for chunk, got in zip(sent, taken, strict=True):
        if isinstance(chunk, bytes):
            assert isinstance(got, memoryview) and got == chunk
        else:
            assert got == chunk
    first = taken[0]
    assert isinstance(first, agent_pb2.CheckpointChunk)
    assert b"".join(transfer.received(first, iter(taken[1:]))) == data


@pytest.mark.parametrize(
    "message",
    [
        agent_pb2.CheckpointChunk(data=b"abc", last=True),
        agent_pb2.CheckpointChunk(data=b"abc", checkpoint_id=CKPT),
        agent_pb2.CheckpointChunk(raw_xxh3_128=b"\x1a" * 16),
        agent_pb2.CheckpointChunk(),
    ],
)
def test_a_message_with_more_than_data_is_parsed_whole(message: agent_pb2.CheckpointChunk) -> None:
    got = transfer.decode(message.SerializeToString())
    assert isinstance(got, agent_pb2.CheckpointChunk) and got == message


def test_a_data_field_longer_or_shorter_than_the_message_is_not_taken_as_a_view() -> None:
    wire = transfer.encode(b"x" * 300)
    with pytest.raises(DecodeError):
        transfer.decode(wire[:-1])  # the field says 300 bytes, 299 follow
    got = transfer.decode(wire + transfer.encode(agent_pb2.CheckpointChunk(last=True)))
    assert isinstance(got, agent_pb2.CheckpointChunk) and got.last and got.data == b"x" * 300


@given(data=st.binary(min_size=1, max_size=3000), chunk_size=st.integers(1, 700))
def test_only_the_first_and_the_last_chunk_are_messages(data: bytes, chunk_size: int) -> None:
    sent = list(transfer.chunks(lambda: io.BytesIO(data), len(data), CKPT, "app", chunk_size=chunk_size))
    first, *middle, last = sent
    assert isinstance(first, agent_pb2.CheckpointChunk) and isinstance(last, agent_pb2.CheckpointChunk)
    assert all(isinstance(c, bytes) for c in middle) and b"".join([first.data, *middle]) == data
    assert transfer.encode(first) == first.SerializeToString()


def receive(messages: list[agent_pb2.CheckpointChunk]) -> bytes:
    rest: Iterator[agent_pb2.CheckpointChunk] = iter(messages[1:])
    return b"".join(transfer.received(messages[0], rest))


@given(data=st.binary(max_size=5000), chunk_size=st.integers(1, 700))
def test_any_archive_arrives_as_it_was_sent(data: bytes, chunk_size: int) -> None:
    messages = pushed(data, chunk_size)
    assert messages[0].checkpoint_id == CKPT and messages[0].checksum == agent_pb2.STREAM_CHECKSUM_XXH3_128
    assert receive(messages) == data


@st.composite
def damaged(draw: st.DrawFn) -> list[agent_pb2.CheckpointChunk]:
    """A push of at least two data chunks with one kind of damage that keeps the total size: a byte changed, two
    different chunks swapped, or one chunk's data replaced by another's."""
    chunk_size = draw(st.integers(1, 64))
    data = draw(st.binary(min_size=2 * chunk_size, max_size=40 * chunk_size))
    messages = pushed(data, chunk_size)
    full = [i for i, m in enumerate(messages) if len(m.data) == chunk_size]
    i, j = draw(st.lists(st.sampled_from(full), min_size=2, max_size=2, unique=True))
    match draw(st.sampled_from(["flip", "swap", "replace"])):
        case "flip":
            at = draw(st.integers(0, chunk_size - 1))
            bit = 1 << draw(st.integers(0, 7))
            d = bytearray(messages[i].data)
            d[at] ^= bit
            messages[i].data = bytes(d)
        case "swap":
            if messages[i].data == messages[j].data:
                d = bytearray(messages[i].data)
                d[0] ^= 0xFF
                messages[i].data = bytes(d)  # different chunks, or the swap would change nothing
            else:
                messages[i].data, messages[j].data = messages[j].data, messages[i].data
        case "replace":
            if messages[i].data == messages[j].data:
                d = bytearray(messages[j].data)
                d[-1] ^= 0x01
                messages[j].data = bytes(d)
            messages[i].data = messages[j].data
    return messages


@given(messages=damaged())
def test_a_damaged_stream_of_the_right_size_is_refused_at_its_end(messages: list[agent_pb2.CheckpointChunk]) -> None:
    with pytest.raises(transfer.TransferError, match="XXH3-128"):
        receive(messages)


def test_a_cut_stream_is_refused() -> None:
    messages = pushed(b"x" * 100, 10)
    with pytest.raises(transfer.TransferError, match="before its last chunk"):
        receive(messages[:-1])
    with pytest.raises(transfer.TransferError, match="received 90 bytes"):
        receive([*messages[:3], *messages[4:]])


def test_an_empty_archive_is_one_chunk_that_names_everything() -> None:
    (only,) = pushed(b"", 10)
    assert only.last and only.checkpoint_id == CKPT and only.checksum == agent_pb2.STREAM_CHECKSUM_XXH3_128
    assert receive([only]) == b""


def test_an_older_source_s_sha256_stream_is_still_checked_and_accepted() -> None:
    """During a rolling upgrade a source agent from before XXH3-128 sends SHA-256 (the field's default)."""
    data = b"older agent" * 50
    first = agent_pb2.CheckpointChunk(checkpoint_id=CKPT, container_name="app", data=data[:300])
    middle = agent_pb2.CheckpointChunk(data=data[300:])
    digest = hashlib.sha256(data).hexdigest()
    good = agent_pb2.CheckpointChunk(last=True, raw_size_bytes=len(data), raw_sha256=digest)
    assert receive([first, middle, good]) == data
    bad = agent_pb2.CheckpointChunk(last=True, raw_size_bytes=len(data), raw_sha256=hashlib.sha256(b"x").hexdigest())
    with pytest.raises(transfer.TransferError, match="sha256"):
        receive([first, middle, bad])


def test_a_checksum_this_agent_does_not_know_is_refused_before_anything_is_staged() -> None:
    first = agent_pb2.CheckpointChunk(checkpoint_id=CKPT, container_name="app", data=b"abc", checksum=cast(Any, 7))
    with pytest.raises(transfer.TransferError, match="does not know"):
        next(transfer.received(first, iter([])))


class _Recording(agent_pb2_grpc.CheckpointServiceServicer):
    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.data = b""

    def ReceiveCheckpoint(self, request_iterator: Iterator[transfer.Received], context: object) -> Any:
        taken = list(request_iterator)
        self.kinds = [type(m).__name__ for m in taken]
        first = taken[0]
        assert isinstance(first, agent_pb2.CheckpointChunk)
        self.data = b"".join(transfer.received(first, iter(taken[1:])))
        return agent_pb2.StageRestoreResponse(image_bytes=len(self.data))

    def GetCapabilities(self, request: agent_pb2.GetCapabilitiesRequest, context: object) -> Any:
        return agent_pb2.Capabilities(node_name="recording")


def test_a_server_set_up_by_add_to_server_hands_data_chunks_over_as_views_and_answers_the_rest() -> None:
    """Over a real (local, plaintext) gRPC connection: what the agent's server does with a push."""
    servicer = _Recording()  # type: ignore[abstract]  # the one call it takes
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    transfer.add_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        data = bytes(range(256)) * 40
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            sent = transfer.chunks(lambda: io.BytesIO(data), len(data), CKPT, "app", chunk_size=4096)
            reply = transfer.receive_checkpoint(channel)(sent, timeout=10)
            stub = agent_pb2_grpc.CheckpointServiceStub(channel)
            caps = stub.GetCapabilities(agent_pb2.GetCapabilitiesRequest(), timeout=10)  # the other methods: as before
            with pytest.raises(grpc.RpcError) as unimplemented:  # and the base's answer where there is no override
                stub.Thaw(agent_pb2.ThawRequest(checkpoint_id=CKPT), timeout=10)
    finally:
        server.stop(None)
    assert reply.image_bytes == len(data) and servicer.data == data
    assert servicer.kinds == ["CheckpointChunk", "memoryview", "memoryview", "CheckpointChunk"]  # 4096 + 4096 + 2048
    assert caps.node_name == "recording"
    assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED and "Method not implemented" in str(
        unimplemented.value.details()
    )
