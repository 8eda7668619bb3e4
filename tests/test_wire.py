"""The hand-written ModelChunk data encoding (fedtier/transport/wire.py) is standard protobuf."""
from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError

from fedtier.proto import fedtier_pb2 as pb
from fedtier.transport.wire import DataChunk, parse_chunk, serialize_chunk

# around every varint length boundary, and a real chunk
SIZES = [0, 1, 127, 128, 129, 16_383, 16_384, 1 << 20, (1 << 21) + 3]


@pytest.mark.parametrize("size", SIZES)
def test_data_chunks_are_what_protobuf_writes_and_reads(size: int) -> None:
    block = bytes(range(256)) * (size // 256) + bytes(size % 256)
    ours = DataChunk.encode(block)
    assert serialize_chunk(ours) == pb.ModelChunk(data=block).SerializeToString()
    assert pb.ModelChunk.FromString(serialize_chunk(ours)).data == block  # any parser reads ours
    theirs = parse_chunk(pb.ModelChunk(data=block).SerializeToString())  # we read protobuf's
    assert isinstance(theirs, DataChunk) and theirs.WhichOneof("part") == "data"
    assert bytes(theirs.data) == block and len(theirs.data) == size


def test_everything_but_a_lone_data_field_goes_to_protobuf() -> None:
    header = pb.ModelChunk(header=pb.TransferHeader(model_id="m", size=3))
    trailer = pb.ModelChunk(trailer=pb.TransferTrailer(sha256="ab"))
    for message in (header, trailer):
        parsed = parse_chunk(message.SerializeToString())
        assert isinstance(parsed, pb.ModelChunk) and parsed == message
    # a data field followed by a header: protobuf's oneof keeps the last one, and so do we
    mixed = pb.ModelChunk(data=b"abc").SerializeToString() + header.SerializeToString()
    parsed = parse_chunk(mixed)
    assert isinstance(parsed, pb.ModelChunk) and parsed.WhichOneof("part") == "header"
    # a length that does not match the message: not taken as data, and protobuf refuses it
    for broken in (b"\x12\x05abc", b"\x12\xff\xff", b"\x12"):
        with pytest.raises(DecodeError):
            parse_chunk(broken)
    with pytest.raises(ValueError):
        DataChunk.encode(b"x").WhichOneof("other")
