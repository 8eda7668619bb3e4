"""Model transfer throughput: ModelTransfer's chunked streams vs raw gRPC on loopback.

    .venv/bin/python bench/transfer.py [--sizes-mib 64,512] [--repeats 5] [--json out.json]

"ours" is the real path: a combiner process serves ModelTransfer, and this process
uploads with ``CombinerClient.upload_model`` (file_chunks: read, XXH3-128 checksum, data
chunks encoded by fedtier/transport/wire.py) and downloads with ``CombinerClient.download_model``
(receive_to_file: checksum, write, rename; no fsync, the reducer's copy is scratch). The baseline, measured in the same run and interleaved
with it, is a minimal raw gRPC server in its own process (generic handlers, no
serialization, i.e. identity) streaming the same number of bytes in chunks of the same
size, with no hashing and no file I/O. Throughput is MiB/s of model bytes (median over
the repeats); the figure to quote is ours / raw, the median of the ratios of transfers
run back to back (1.0 means the framework costs nothing).

The components (sha256, xxh3, file write + fsync, protobuf's chunk handling and fedtier's) are also timed
in this process, so the gap between ours and raw can be read against them.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from concurrent import futures
from pathlib import Path
from typing import Any, Iterator

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import MiB  # noqa: E402

from fedtier.helpers.format import write_model  # noqa: E402
from fedtier.proto import fedtier_pb2 as pb  # noqa: E402
from fedtier.reducer.combiner_client import CombinerClient  # noqa: E402
from fedtier.transport.streams import CHUNK_SIZE, new_checksum, xxh3_file  # noqa: E402
from fedtier.transport.wire import DataChunk, parse_chunk, serialize_chunk  # noqa: E402

RAW_SERVICE = "rawbench.Raw"
RAW_OPTIONS = [("grpc.max_send_message_length", 64 * MiB), ("grpc.max_receive_message_length", 64 * MiB)]


# ---------------------------------------------------------------- the raw baseline
def serve_raw(port: int) -> None:
    """A gRPC server that only moves bytes: Upload counts them, Download sends zeros.

    ``None`` (de)serializers mean gRPC hands the raw message bytes through untouched.
    """

    def upload(chunks: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        total = 0
        for chunk in chunks:
            total += len(chunk)
        return total.to_bytes(8, "little")

    def download(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        size, chunk_size = int.from_bytes(request[:8], "little"), int.from_bytes(request[8:16], "little")
        block = bytes(chunk_size)
        full, rest = divmod(size, chunk_size)
        for _ in range(full):
            yield block
        if rest:
            yield block[:rest]

    handler = grpc.method_handlers_generic_handler(RAW_SERVICE, {
        "Upload": grpc.stream_unary_rpc_method_handler(upload, request_deserializer=None, response_serializer=None),
        "Download": grpc.unary_stream_rpc_method_handler(download, request_deserializer=None,
                                                         response_serializer=None),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=(handler,), options=RAW_OPTIONS)
    if not server.add_insecure_port(f"127.0.0.1:{port}"):
        raise SystemExit(f"raw server could not bind port {port}")
    server.start()
    server.wait_for_termination()


class RawClient:
    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address, options=RAW_OPTIONS)
        self._upload = self.channel.stream_unary(f"/{RAW_SERVICE}/Upload", request_serializer=None,
                                                 response_deserializer=None)
        self._download = self.channel.unary_stream(f"/{RAW_SERVICE}/Download", request_serializer=None,
                                                   response_deserializer=None)

    def upload(self, size: int, chunk_size: int) -> int:
        block = bytes(chunk_size)

        def chunks() -> Iterator[bytes]:
            full, rest = divmod(size, chunk_size)
            for _ in range(full):
                yield block
            if rest:
                yield block[:rest]

        return int.from_bytes(self._upload(chunks(), timeout=600), "little")

    def download(self, size: int, chunk_size: int) -> int:
        total = 0
        for chunk in self._download(size.to_bytes(8, "little") + chunk_size.to_bytes(8, "little"), timeout=600):
            total += len(chunk)
        return total

    def close(self) -> None:
        self.channel.close()


# ---------------------------------------------------------------- components, in this process
def raw_round_floor(raw: RawClient, size: int, clients: int, chunk_size: int = CHUNK_SIZE,
                    push: bool = True) -> float:
    """Seconds raw gRPC takes to move one round's bytes, one stream after another: the global
    model to a combiner (``push=False`` when the round did not send it: the combiner held
    it already), to and back from each client, and the combiner model back."""
    t = time.perf_counter()
    if push:
        raw.upload(size, chunk_size)            # reducer -> combiner: the global model
    for _ in range(clients):
        raw.download(size, chunk_size)          # combiner -> each client
        raw.upload(size, chunk_size)            # each client -> combiner
    raw.download(size, chunk_size)              # combiner -> reducer: the combiner model
    return time.perf_counter() - t


def components(data: bytes, chunk_size: int, scratch: Path) -> dict[str, float]:
    """MiB/s of the work ModelTransfer adds to the raw stream, each timed alone."""
    mib = len(data) / MiB
    out: dict[str, float] = {}
    t = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    out["sha256_mib_s"] = mib / (time.perf_counter() - t)
    t = time.perf_counter()
    checksum = new_checksum()
    checksum.update(data)
    checksum.hexdigest()
    out["xxh3_mib_s"] = mib / (time.perf_counter() - t)

    view = memoryview(data)
    blocks = [bytes(view[i:i + chunk_size]) for i in range(0, len(data), chunk_size)]
    # Encoders are timed as a stream sends: each chunk dropped before the next is made.
    # (Keeping them all in a list measured page faults on fresh memory, ~1 GB/s, not encoding.)
    t = time.perf_counter()
    for b in blocks:
        pb.ModelChunk(data=b).SerializeToString()
    out["protobuf_encode_mib_s"] = mib / (time.perf_counter() - t)
    wire = [pb.ModelChunk(data=b).SerializeToString() for b in blocks]
    t = time.perf_counter()
    for w in wire:  # what receive_to_file does per chunk: parse, then read .data three times
        chunk = pb.ModelChunk.FromString(w)
        chunk.WhichOneof("part")
        len(chunk.data), chunk.data, chunk.data
    out["protobuf_decode_mib_s"] = mib / (time.perf_counter() - t)
    # what fedtier sends and receives since fedtier/transport/wire.py: the prefix written by
    # hand in front of the block read, and a view of the received bytes
    t = time.perf_counter()
    for b in blocks:
        serialize_chunk(DataChunk.encode(b))
    out["wire_encode_mib_s"] = mib / (time.perf_counter() - t)
    t = time.perf_counter()
    for w in wire:
        chunk = parse_chunk(w)
        chunk.WhichOneof("part")
        len(chunk.data), chunk.data, chunk.data
    out["wire_decode_mib_s"] = mib / (time.perf_counter() - t)

    path = scratch / "component-write"
    t = time.perf_counter()
    with open(path, "wb") as f:
        for b in blocks:
            f.write(b)
    out["write_mib_s"] = mib / (time.perf_counter() - t)
    path.unlink()
    t = time.perf_counter()
    with open(path, "wb") as f:
        for b in blocks:
            f.write(b)
        f.flush()
        os.fsync(f.fileno())
    out["write_fsync_mib_s"] = mib / (time.perf_counter() - t)
    t = time.perf_counter()
    with open(path, "rb") as f:
        while f.read(chunk_size):
            pass
    out["read_cached_mib_s"] = mib / (time.perf_counter() - t)
    path.unlink()
    return out


# ---------------------------------------------------------------- the run
def make_model(path: Path, size: int) -> tuple[int, str]:
    """A valid model file of about ``size`` bytes; returns its exact size and XXH3-128 checksum."""
    params = max(1, (size - 128) // 4)
    rng = np.random.default_rng(0)
    write_model(path, {"w": rng.standard_normal(params, dtype=np.float32)})
    return path.stat().st_size, xxh3_file(path)


def run(options: argparse.Namespace) -> dict[str, Any]:
    work = Path(options.work_dir or tempfile.mkdtemp(prefix="fedtier-bench-transfer-"))
    work.mkdir(parents=True, exist_ok=True)
    chunk_size = int(options.chunk_kib * 1024) if options.chunk_kib else CHUNK_SIZE
    result: dict[str, Any] = {"benchmark": "transfer", "machine": common.machine(), "chunk_bytes": chunk_size,
                              "repeats": options.repeats, "sizes": []}
    try:
        with common.Processes(work / "logs") as procs:
            combiner_port, raw_port = common.free_port(), common.free_port()
            combiner_dir = work / "combiner"
            combiner = procs.fedtier("combiner", "combiner", "--name", "bench", "--host", "127.0.0.1",
                                     "--port", str(combiner_port), "--work-dir", str(combiner_dir))
            raw = procs.start("raw", [sys.executable, str(Path(__file__).resolve()), "--serve-raw", str(raw_port)])
            common.wait_for_port(combiner_port, proc=combiner)
            common.wait_for_port(raw_port, proc=raw)
            ours = CombinerClient(f"127.0.0.1:{combiner_port}")
            rawc = RawClient(f"127.0.0.1:{raw_port}")
            try:
                rawc.upload(chunk_size, chunk_size)  # connect both channels before timing
                ours.status()
                for size_mib in options.sizes_mib:
                    result["sizes"].append(_one_size(ours, rawc, work, combiner_dir, size_mib, chunk_size,
                                                     options.repeats))
            finally:
                ours.close()
                rawc.close()
    finally:
        if not options.work_dir and not options.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["ok"] = all(s["checksums_ok"] for s in result["sizes"])
    return result


def _one_size(ours: CombinerClient, rawc: RawClient, work: Path, combiner_dir: Path, size_mib: float,
              chunk_size: int, repeats: int) -> dict[str, Any]:
    source = work / f"model-{size_mib:g}MiB"
    size, checksum = make_model(source, int(size_mib * MiB))
    times: dict[str, list[float]] = {"raw_upload": [], "ours_upload": [], "raw_download": [], "ours_download": []}
    checks: list[bool] = []
    for _ in range(repeats):  # interleaved, so both see the same background load
        t = time.perf_counter()
        assert rawc.upload(size, chunk_size) == size
        times["raw_upload"].append(time.perf_counter() - t)

        model_id = f"bench-{uuid.uuid4().hex[:12]}"
        t = time.perf_counter()
        reply = ours.upload_model(source, model_id, timeout=600)
        times["ours_upload"].append(time.perf_counter() - t)
        checks.append(reply.xxh3 == checksum and reply.size == size)  # as a client's update: no sha256

        t = time.perf_counter()
        assert rawc.download(size, chunk_size) == size
        times["raw_download"].append(time.perf_counter() - t)

        dest = work / "downloaded"
        t = time.perf_counter()
        received = ours.download_model(model_id, dest, timeout=600)
        times["ours_download"].append(time.perf_counter() - t)
        checks.append(received.xxh3 == checksum == xxh3_file(dest) and received.size == size)
        dest.unlink()
        (combiner_dir / "models" / model_id).unlink(missing_ok=True)  # keep the disk footprint to one model

    data = source.read_bytes()
    parts = components(data, chunk_size, work)
    del data
    source.unlink()
    entry: dict[str, Any] = {"size_bytes": size, "size_mib": size / MiB, "checksums_ok": all(checks),
                             "components": parts}
    for key, values in times.items():
        stats = common.summarize(values)
        entry[key] = {"seconds": stats, "mib_s": size / MiB / stats["median"], "samples_s": values}
    for direction in ("upload", "download"):
        # each ours/raw pair ran back to back: the median of the pair ratios resists load changes
        pairs = [raw / ours for raw, ours in zip(times[f"raw_{direction}"], times[f"ours_{direction}"])]
        entry[f"{direction}_ratio"] = common.summarize(pairs)["median"]
    return entry


def report(result: dict[str, Any]) -> None:
    rows = []
    for s in result["sizes"]:
        for direction in ("upload", "download"):
            rows.append([f"{s['size_mib']:.0f} MiB", direction, s[f"raw_{direction}"]["mib_s"],
                         s[f"ours_{direction}"]["mib_s"], s[f"{direction}_ratio"],
                         s[f"ours_{direction}"]["seconds"]["min"], s[f"ours_{direction}"]["seconds"]["max"],
                         "yes" if s["checksums_ok"] else "NO"])
    common.print_table(f"Model transfer: ModelTransfer vs raw gRPC loopback ({result['chunk_bytes'] // 1024} KiB "
                       f"chunks, {result['repeats']} interleaved repeats)",
                       ["model", "direction", "raw MiB/s", "ours MiB/s", "ours/raw", "ours min s", "ours max s",
                        "checksum ok"], rows)
    rows = [[f"{s['size_mib']:.0f} MiB", c["sha256_mib_s"], c.get("xxh3_mib_s", "-"), c["protobuf_encode_mib_s"],
             c["protobuf_decode_mib_s"], c["wire_encode_mib_s"], c["wire_decode_mib_s"], c["write_mib_s"],
             c["write_fsync_mib_s"], c["read_cached_mib_s"]]
            for s in result["sizes"] for c in [s["components"]]]
    common.print_table("Transfer components, each alone in one process (MiB/s)",
                       ["model", "sha256", "xxh3 (the transfer checksum)", "protobuf encode", "protobuf decode (+3x .data)",
                        "fedtier wire encode", "fedtier wire decode (+3x .data)", "write (no fsync)",
                        "write + fsync", "read (cached)"], rows)
    print("\n" + common.machine_line(result["machine"]))


def summary_rows(result: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for s in result["sizes"]:
        for d in ("upload", "download"):
            rows.append(["transfer", f"{d} {s['size_mib']:.0f} MiB", "raw gRPC MiB/s",
                         s[f"raw_{d}"]["mib_s"], s[f"ours_{d}"]["mib_s"], s[f"{d}_ratio"]])
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Figures are ratios against raw gRPC measured in the same run.")
    p.add_argument("--sizes-mib", type=lambda s: common.parse_list(s, float), default=[64.0, 512.0],
                   help="model sizes in MiB, comma separated (default 64,512)")
    p.add_argument("--repeats", type=int, default=5, help="transfers per size and direction (default 5)")
    p.add_argument("--chunk-kib", type=float, default=0,
                   help=f"chunk size in KiB (default: fedtier's CHUNK_SIZE, {CHUNK_SIZE // 1024} KiB)")
    common.add_output_options(p)
    p.add_argument("--serve-raw", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    if options.serve_raw:
        serve_raw(options.serve_raw)
        return 0
    return common.conclude(run(options), report, options.json)


if __name__ == "__main__":
    sys.exit(main())
