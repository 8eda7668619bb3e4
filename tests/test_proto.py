"""The committed stubs are what the .proto generates, and they load with the pinned runtime."""
from pathlib import Path

import pytest

from fedtier.proto.generate import GENERATED, PROTO_DIR, generate


def test_committed_stubs_match_regenerated(tmp_path: Path) -> None:
    generate(tmp_path)
    for name in GENERATED:
        fresh = (tmp_path / name).read_text()
        committed = (PROTO_DIR / name).read_text()
        assert fresh == committed, f"proto/{name} is stale: run `make proto` and commit the result"


def test_stubs_import_and_describe_services() -> None:
    from fedtier.proto import fedtier_pb2, fedtier_pb2_grpc

    services = fedtier_pb2.DESCRIPTOR.services_by_name
    assert set(services) == {"Combiner", "ModelTransfer", "Control"}
    assert "UploadModel" in services["ModelTransfer"].methods_by_name
    assert hasattr(fedtier_pb2_grpc, "ControlStub")
    chunk = fedtier_pb2.ModelChunk(data=b"x")
    assert chunk.WhichOneof("part") == "data"


def test_setup_pins_runtime_at_least_generated_version() -> None:
    """A protobuf older than the generator's would fail at import on a user's machine."""
    import re

    generated = (PROTO_DIR / "fedtier_pb2.py").read_text()
    major, minor, patch = (int(x) for x in re.search(
        r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", generated).groups())
    setup_text = (PROTO_DIR.parent / "setup.py").read_text()
    pinned = re.search(r'"protobuf>=(\d+)\.(\d+)\.(\d+)"', setup_text)
    assert pinned, "setup.py must pin protobuf with >="
    assert tuple(int(x) for x in pinned.groups()) >= (major, minor, patch)
