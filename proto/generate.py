"""Regenerate the committed gRPC stubs from ``fedtier.proto``.

The .proto lives in ``proto/`` but is imported as ``fedtier.proto``; protoc's
virtual path mapping (``-Ifedtier/proto=<dir>``) makes the generated code import
``from fedtier.proto import fedtier_pb2`` so the stubs work from an installed package.
``generate(out_dir)`` is also what tests/test_proto.py calls to check that the
committed stubs are current.
"""
from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILE = "fedtier.proto"
GENERATED = ("fedtier_pb2.py", "fedtier_pb2.pyi", "fedtier_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc into ``out_dir`` (created if needed) and return the generated files."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    import grpc_tools

    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / "_staging"
    args = [
        "grpc_tools.protoc",
        f"-I{include}",
        f"-Ifedtier/proto={PROTO_DIR}",
        f"--python_out={staging}",
        f"--pyi_out={staging}",
        f"--grpc_python_out={staging}",
        f"fedtier/proto/{PROTO_FILE}",
    ]
    staging.mkdir(parents=True, exist_ok=True)
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    produced = []
    for name in GENERATED:
        target = out_dir / name
        (staging / "fedtier" / "proto" / name).replace(target)
        produced.append(target)
    return produced


if __name__ == "__main__":
    for path in generate(PROTO_DIR):
        print(f"wrote {path}", file=sys.stderr)
