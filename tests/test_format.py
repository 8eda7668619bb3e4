"""fedtier.helpers.format: the safetensors-layout model format."""
from __future__ import annotations

import json
import os
import struct
import tracemalloc

import ml_dtypes
import numpy as np
import pytest

from fedtier.helpers.format import (
    MAX_HEADER_BYTES,
    ModelFormatError,
    ModelHeader,
    dumps,
    header_signature,
    iter_slices,
    loads,
    read_header,
    read_model,
    write_model,
)

BF16 = np.dtype(ml_dtypes.bfloat16)


def sample_weights() -> dict[str, np.ndarray]:
    """One tensor of every dtype, in deliberately unsorted order, with edge shapes."""
    rng = np.random.default_rng(0)
    w = {
        "z.last_first": rng.standard_normal((3, 5)).astype(np.float64),
        "conv.weight": rng.standard_normal((4, 3, 2, 2)).astype(np.float32),
        "a.half": rng.standard_normal(7).astype(np.float16),
        "bf": rng.standard_normal((2, 3)).astype(np.float32).astype(BF16),
        "i64": rng.integers(-(2**62), 2**62, size=5, dtype=np.int64),
        "i32": rng.integers(-(2**31), 2**31 - 1, size=(2, 2), dtype=np.int32),
        "i16": rng.integers(-(2**15), 2**15 - 1, size=3, dtype=np.int16),
        "i8": rng.integers(-128, 127, size=9, dtype=np.int8),
        "u8": rng.integers(0, 255, size=(3, 1), dtype=np.uint8),
        "u16": rng.integers(0, 2**16 - 1, size=2, dtype=np.uint16),
        "u32": rng.integers(0, 2**32 - 1, size=2, dtype=np.uint32),
        "u64": rng.integers(0, 2**63, size=2, dtype=np.uint64),
        "mask": rng.integers(0, 2, size=6).astype(bool),
        "scalar": np.array(3.5, dtype=np.float32),
        "num_batches_tracked": np.array(17, dtype=np.int64),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "empty_bf": np.zeros((2, 0), dtype=BF16),
    }
    # NaN payload and signed zero must survive bit-for-bit.
    w["conv.weight"].reshape(-1)[:2] = [np.float32("nan"), np.float32(-0.0)]
    return w


def assert_bitwise_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for name in a:
        x, y = a[name], b[name]
        assert x.dtype == y.dtype, name
        assert x.shape == y.shape, name
        assert x.reshape(-1).view(np.uint8).tobytes() == y.reshape(-1).view(np.uint8).tobytes(), name


def raw_file(header: dict, data: bytes = b"", pad: bool = True, length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-(len(text) + 8) % 8)
    return struct.pack("<Q", len(text) if length is None else length) + text + data


# ----------------------------------------------------------------------------- round trip


def test_bytes_round_trip_is_exact_and_ordered():
    w = sample_weights()
    out = loads(dumps(w))
    assert_bitwise_equal(w, out)
    for arr in out.values():
        assert arr.flags.writeable and arr.flags.owndata and arr.flags.c_contiguous


def test_file_round_trip_with_metadata(tmp_path):
    w = sample_weights()
    path = tmp_path / "m.safetensors"
    write_model(path, w, {"round": "3", "ünï": "côde"})
    assert_bitwise_equal(w, read_model(path))
    header = read_header(path)
    assert header.metadata == {"round": "3", "ünï": "côde"}
    assert header.names == tuple(w)
    assert header.total_size == path.stat().st_size
    assert header.data_start % 8 == 0
    # Absolute, contiguous offsets whose sizes match the arrays.
    position = header.data_start
    for spec in header.tensors:
        assert spec.begin == position and spec.nbytes == w[spec.name].nbytes
        assert spec.size == w[spec.name].size
        position = spec.end
    assert header["bf"].dtype == BF16 and header["bf"].dtype_code == "BF16"
    assert header_signature(header)[0] == ("z.last_first", "F64", (3, 5))
    with pytest.raises(KeyError):
        header["nope"]


def test_zero_size_tensors_keep_their_place_in_order():
    w = {
        "e0": np.zeros(0, np.float32),
        "a": np.ones(2, np.float32),
        "e1": np.zeros((0,), np.int8),
        "e2": np.zeros((3, 0), np.float64),
        "b": np.ones(1, np.int64),
        "e3": np.zeros(0, np.uint8),
    }
    assert list(loads(dumps(w))) == list(w)


def test_big_endian_input_is_stored_little_endian():
    w = {"x": np.arange(4, dtype=">f4"), "i": np.arange(3, dtype=">i8")}
    data = dumps(w)
    assert data == dumps({"x": np.arange(4, dtype="<f4"), "i": np.arange(3, dtype="<i8")})
    out = loads(data)
    np.testing.assert_array_equal(out["x"], np.arange(4))
    assert out["x"].dtype == np.dtype("<f4")


def test_non_contiguous_input_is_written_in_c_order():
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    w = {"t": base.T, "s": base[:, ::2]}
    out = loads(dumps(w))
    np.testing.assert_array_equal(out["t"], base.T)
    np.testing.assert_array_equal(out["s"], base[:, ::2])


def test_empty_model_round_trips():
    assert loads(dumps({})) == {}
    assert loads(dumps({}, {"k": "v"})) == {}


@pytest.mark.parametrize(
    "weights, exc, message",
    [
        ({"c": np.zeros(2, np.complex64)}, ModelFormatError, "tensor 'c': dtype complex64"),
        ({"o": np.array([object()], dtype=object)}, ModelFormatError, "tensor 'o'"),
        ({"s": np.array(["x"])}, ModelFormatError, "tensor 's'"),
        ({"l": [1.0, 2.0]}, TypeError, "expected a numpy array, got list"),
        ({"__metadata__": np.zeros(1)}, ModelFormatError, "reserved"),
        ({"": np.zeros(1)}, ModelFormatError, "non-empty"),
        ({1: np.zeros(1)}, TypeError, "names must be str"),
        ({"bad\udc80": np.zeros(1)}, ModelFormatError, "valid Unicode"),
    ],
)
def test_unserializable_input_is_rejected(weights, exc, message):
    with pytest.raises(exc, match=message):
        dumps(weights)


def test_metadata_must_be_str_to_str():
    with pytest.raises(TypeError, match="str to str"):
        dumps({"a": np.zeros(1)}, {"round": 3})


def test_write_is_atomic_and_failure_leaves_old_file(tmp_path):
    path = tmp_path / "model.safetensors"
    write_model(path, {"a": np.ones(3, np.float32)})
    first = path.read_bytes()
    with pytest.raises(ModelFormatError):
        write_model(path, {"a": np.ones(3, np.float32), "bad": np.zeros(1, np.complex128)})
    assert path.read_bytes() == first
    write_model(path, {"a": np.full(3, 2, np.float32)})
    np.testing.assert_array_equal(read_model(path)["a"], [2, 2, 2])
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]  # no temp files left behind
    assert (path.stat().st_mode & 0o777) == 0o644


# ----------------------------------------------------------------------------- malformed input

GOOD = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
DATA16 = bytes(16)

MALFORMED = {
    "empty file": (b"", "too short"),
    "short length": (b"\x01\x00", "too short"),
    "truncated data": (raw_file(GOOD, DATA16)[:-3], "truncated"),
    "header longer than file": (raw_file(GOOD, DATA16, length=10_000), "larger than the"),
    "header over limit": (struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}", "exceeds"),
    "bad json": (struct.pack("<Q", 8) + b"{nope:1}", "not valid JSON"),
    "not an object": (raw_file([1, 2]), "must be a JSON object"),  # type: ignore[arg-type]
    "not utf-8": (struct.pack("<Q", 8) + b"{\"\xff\xfe\":1}", "UTF-8"),
    "unknown dtype": (raw_file({"w": {**GOOD["w"], "dtype": "F128"}}, DATA16), "unknown dtype 'F128'"),
    "dtype not a string": (raw_file({"w": {**GOOD["w"], "dtype": ["F32"]}}, DATA16), "unknown dtype"),
    "negative dim": (raw_file({"w": {**GOOD["w"], "shape": [-2, -2]}}, DATA16), "non-negative ints"),
    "bool dim": (raw_file({"w": {**GOOD["w"], "shape": [True, 4]}}, DATA16), "non-negative ints"),
    "float dim": (raw_file({"w": {**GOOD["w"], "shape": [2.0, 2]}}, DATA16), "non-negative ints"),
    "huge dim": (raw_file({"w": {**GOOD["w"], "shape": [2**70, 0]}}, b""), "non-negative ints"),
    "huge empty shape": (
        raw_file({"w": {"dtype": "F64", "shape": [0, 2**61, 2**61], "data_offsets": [0, 0]}}, b""),
        "too large to represent",
    ),
    "shape/offset mismatch": (
        raw_file({"fc.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 12]}}, bytes(12)),
        r"tensor 'fc.weight': data_offsets \[0, 12\] do not match shape \[4, 4\] of F32 \(64 bytes\)",
    ),
    "reversed offsets": (raw_file({"w": {**GOOD["w"], "data_offsets": [16, 0]}}, DATA16), "begin <= end"),
    "missing key": (raw_file({"w": {"dtype": "F32", "shape": [4]}}, DATA16), "missing keys"),
    "extra key": (raw_file({"w": {**GOOD["w"], "extra": 1}}, DATA16), "unexpected keys"),
    "entry not object": (raw_file({"w": [1]}, DATA16), "must be an object"),
    "overlap": (
        raw_file(
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            bytes(12),
        ),
        "tensor 'b'.*overlaps",
    ),
    "gap": (
        raw_file(
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]},
            },
            bytes(20),
        ),
        "tensor 'b'.*leaves a gap",
    ),
    "not from zero": (raw_file({"w": {**GOOD["w"], "data_offsets": [4, 20]}}, bytes(20)), "gap"),
    "trailing garbage": (raw_file(GOOD, DATA16 + b"junk"), "trailing bytes"),
    "duplicate name": (
        struct.pack("<Q", 0) + b"",  # replaced below: json.dumps cannot emit duplicates
        "duplicate key 'w'",
    ),
    "metadata not str": (raw_file({"__metadata__": {"a": 1}, **GOOD}, DATA16), "__metadata__"),
    "bool bytes": (raw_file({"m": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}, b"\x01\x07"), "BOOL"),
}
_dup = b'{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
MALFORMED["duplicate name"] = (struct.pack("<Q", len(_dup)) + _dup + b"\x00", MALFORMED["duplicate name"][1])


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_input_raises_model_format_error(case, tmp_path):
    data, message = MALFORMED[case]
    with pytest.raises(ModelFormatError, match=message):
        loads(data)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(ModelFormatError, match=message):
        read_model(path)
    if case != "bool bytes":  # value checks need the data, which read_header never reads
        with pytest.raises(ModelFormatError, match=message):
            read_header(path)


def test_read_header_does_not_read_tensor_data(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    write_model(path, {"w": np.ones(1 << 16, np.float32)})
    reads: list[int] = []
    real_open = open

    class Spy:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            reads.append(n)
            return self.f.read(n)

        def __getattr__(self, attr):
            return getattr(self.f, attr)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr("builtins.open", lambda *a, **k: Spy(real_open(*a, **k)))
    header = read_header(path)
    assert sum(reads) == header.data_start < 1024


def test_fuzzed_bytes_only_ever_raise_model_format_error(tmp_path):
    rng = np.random.default_rng(1234)
    valid = dumps(
        {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 0], bool), "c": np.zeros(0, np.int8)},
        {"k": "v"},
    )
    header_end = 8 + struct.unpack("<Q", valid[:8])[0]
    path = tmp_path / "fuzz.safetensors"
    failures = 0
    for trial in range(400):
        data = bytearray(valid)
        mode = trial % 4
        if mode == 0:
            data = data[: rng.integers(0, len(data))]
        elif mode == 1:  # flip bits inside the header, where parsing happens
            for _ in range(rng.integers(1, 4)):
                data[rng.integers(0, header_end)] ^= 1 << int(rng.integers(0, 8))
        elif mode == 2:  # random byte values anywhere
            for _ in range(rng.integers(1, 6)):
                data[rng.integers(0, len(data))] = int(rng.integers(0, 256))
        else:
            data += bytes(rng.integers(0, 256, size=int(rng.integers(1, 9)), dtype=np.uint8))
        path.write_bytes(bytes(data))
        for parse in (lambda: loads(bytes(data)), lambda: read_model(path), lambda: list(iter_slices(path))):
            try:
                parse()
            except ModelFormatError:
                failures += 1
    assert failures > 400  # the fuzzer really produced broken files


# ----------------------------------------------------------------------------- streaming


def test_iter_slices_reassembles_every_tensor(tmp_path):
    w = sample_weights()
    w["long"] = np.arange(1001, dtype=np.float64)
    path = tmp_path / "m.safetensors"
    write_model(path, w)
    max_bytes = 50  # not a multiple of 8: the slice size rounds down to whole elements
    pieces: dict[str, list[np.ndarray]] = {}
    for spec, offset, flat in iter_slices(path, max_bytes=max_bytes):
        assert flat.ndim == 1 and flat.dtype == spec.dtype
        assert flat.nbytes <= max_bytes
        assert offset == sum(p.size for p in pieces.get(spec.name, []))
        pieces.setdefault(spec.name, []).append(flat)
    assert list(pieces) == list(w)
    rebuilt = {n: np.concatenate(p).reshape(w[n].shape) for n, p in pieces.items()}
    assert_bitwise_equal(w, rebuilt)
    assert len(pieces["long"]) == -(-1001 * 8 // 48)
    assert len(pieces["empty"]) == 1 and pieces["empty"][0].size == 0


def test_iter_slices_reuse_gives_the_same_values_through_one_buffer(tmp_path):
    """reuse=True: every slice is a view of one buffer (nothing new per slice), with the
    values the fresh-array mode gives, for every dtype and the empty tensor."""
    w = sample_weights()
    w["long"] = np.arange(1001, dtype=np.float64)
    path = tmp_path / "m.safetensors"
    write_model(path, w)
    fresh = [(spec.name, offset, flat.copy()) for spec, offset, flat in iter_slices(path, max_bytes=48)]
    first = None
    reused = []
    for spec, offset, flat in iter_slices(path, max_bytes=48, reuse=True):
        assert flat.dtype == spec.dtype and flat.nbytes <= 48
        if flat.size:
            first = flat if first is None else first
            assert np.shares_memory(first, flat)  # the same bytes, overwritten slice after slice
        reused.append((spec.name, offset, flat.copy()))
    assert [(n, o) for n, o, _ in reused] == [(n, o) for n, o, _ in fresh]
    for (_, _, a), (_, _, b) in zip(reused, fresh):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_write_model_durable_false_skips_fsync_only(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    w = sample_weights()
    write_model(tmp_path / "a", w)
    assert len(calls) >= 2  # the file and its directory
    calls.clear()
    write_model(tmp_path / "b", w, durable=False)
    assert calls == []
    assert (tmp_path / "b").read_bytes() == (tmp_path / "a").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_iter_slices_rejects_impossible_max_bytes_and_changed_files(tmp_path):
    path = tmp_path / "m.safetensors"
    write_model(path, {"a": np.ones(4, np.float64)})
    with pytest.raises(ValueError, match="smaller than one"):
        list(iter_slices(path, max_bytes=4))
    header = read_header(path)
    write_model(path, {"a": np.ones(5, np.float64)})
    with pytest.raises(ModelFormatError, match="changed on disk"):
        list(iter_slices(path, header))


def test_iter_slices_memory_is_bounded(tmp_path):
    # A ~200 MB single-tensor file, made sparse so the test does not pay for writing it.
    n = 50_000_000
    header = {"big": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}
    path = tmp_path / "big.safetensors"
    head = raw_file(header)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(len(head) + 4 * n)
    max_bytes = 8 << 20
    seen = 0
    tracemalloc.start()
    try:
        for spec, offset, flat in iter_slices(path, max_bytes=max_bytes):
            assert offset == seen
            seen += flat.size
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == n
    assert max_bytes <= peak < 3 * max_bytes  # lower bound proves the slices were traced


# ----------------------------------------------------------------------------- interop

def _safetensors():
    return pytest.importorskip("safetensors.numpy", reason="safetensors is not installed (optional)")


def test_files_open_with_the_safetensors_library(tmp_path):
    st = _safetensors()
    w = {k: v for k, v in sample_weights().items() if v.dtype != BF16}
    path = tmp_path / "ours.safetensors"
    write_model(path, w, {"format": "np"})
    theirs = st.load_file(str(path))
    assert set(theirs) == set(w)
    for name, arr in w.items():
        assert theirs[name].dtype == arr.dtype and theirs[name].shape == arr.shape
        assert theirs[name].tobytes() == arr.tobytes()


def test_safetensors_library_files_open_here(tmp_path):
    st = _safetensors()
    w = {k: v for k, v in sample_weights().items() if v.dtype != BF16}
    path = tmp_path / "theirs.safetensors"
    st.save_file(w, str(path), metadata={"who": "safetensors"})
    header = read_header(path)
    assert header.metadata == {"who": "safetensors"}
    out = read_model(path)
    assert set(out) == set(w)
    assert_bitwise_equal({k: w[k] for k in out}, out)


def test_bf16_interop_with_safetensors_torch(tmp_path):
    pytest.importorskip("safetensors.torch", reason="safetensors is not installed (optional)")
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    t = torch.randn(3, 4).to(torch.bfloat16)
    save_file({"t": t, "n": torch.tensor(5)}, str(tmp_path / "a.safetensors"))
    out = read_model(tmp_path / "a.safetensors")
    assert out["t"].dtype == BF16
    assert out["t"].view(np.int16).tobytes() == t.view(torch.int16).numpy().tobytes()
    write_model(tmp_path / "b.safetensors", out)
    back = load_file(str(tmp_path / "b.safetensors"))
    assert back["t"].dtype == torch.bfloat16 and torch.equal(back["t"], t)
    assert back["n"].dtype == torch.int64 and int(back["n"]) == 5


def test_header_is_a_plain_dataclass():
    h = ModelHeader(tensors=(), metadata={}, data_start=8, total_size=8)
    assert h.names == () and h.data_size == 0
