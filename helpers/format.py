"""The one place model weights are turned into bytes and back.

Model files arrive from the network (clients upload updates, operators upload
seeds), so the format must be parseable without executing anything: no pickle.
We use the safetensors layout so that files written here open with the
``safetensors`` library and vice versa, but implement it with numpy alone so the
combiner does not need that library (or torch) installed:

    8 bytes   little-endian u64 N
    N bytes   UTF-8 JSON {name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}
              padded with spaces so the data section starts 8-byte aligned
    rest      raw little-endian C-order tensor bytes; offsets relative to this section

Every reader validates the whole header before touching tensor data, and the
data section must be covered exactly: a truncated upload, a gap, an overlap or
trailing bytes are all errors, because any of them means the file is not what
its sender meant to send.
"""
from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from fedtier import limits as _limits
from fedtier.limits import Limits

__all__ = [
    "Weights",
    "ModelFormatError",
    "TensorSpec",
    "ModelHeader",
    "write_model",
    "dumps",
    "loads",
    "read_header",
    "read_model",
    "iter_slices",
    "header_signature",
    "header_length",
    "parse_header",
    "check_values",
    "dtype_code",
    "numpy_dtype",
    "SUPPORTED_DTYPES",
    "MAX_HEADER_BYTES",
    "MAX_TENSORS",
]

Weights = dict[str, np.ndarray]

# The default caps on a header's bytes and tensors (fedtier/limits.py: the process's own
# come from FEDTIER_MAX_MODEL_HEADER_BYTES and FEDTIER_MAX_MODEL_TENSORS). The byte cap
# stops a hostile length field from making us allocate gigabytes before we can reject
# the file; the tensor cap stops a header of many tiny entries (zero-size tensors cost
# no data bytes) from costing seconds of parsing per read.
MAX_HEADER_BYTES = Limits().model_header_bytes
MAX_TENSORS = Limits().model_tensors
# numpy's own dimension limit differs between versions; 32 is portable and no
# model tensor comes close.
MAX_NDIM = 32
# Dimensions beyond this cannot index real memory; rejecting them early avoids
# numpy overflow errors leaking out as something other than ModelFormatError.
_MAX_DIM = 1 << 62
_MAX_ARRAY_BYTES = int(np.iinfo(np.intp).max)

_HEADER_LEN = struct.Struct("<Q")
_METADATA_KEY = "__metadata__"
_TENSOR_KEYS = frozenset({"dtype", "shape", "data_offsets"})

# safetensors code -> numpy dtype (little-endian). BF16 is resolved lazily because
# it needs ml_dtypes, which must not be a hard import of this module.
_NUMPY_CODES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_LITTLE_HOST = np.little_endian
_CODES_BY_KIND = {(dt.kind, dt.itemsize): code for code, dt in _NUMPY_CODES.items()}
SUPPORTED_DTYPES: tuple[str, ...] = tuple(_NUMPY_CODES) + ("BF16",)


class ModelFormatError(ValueError):
    """The bytes are not a well-formed model file; the message says what is wrong."""


def _bfloat16() -> np.dtype:
    try:
        import ml_dtypes
    except ImportError as exc:  # pragma: no cover - ml_dtypes ships with the project
        raise ModelFormatError(
            "BF16 tensors need the 'ml_dtypes' package (pip install ml_dtypes)"
        ) from exc
    return np.dtype(ml_dtypes.bfloat16)


def _is_bfloat16(dtype: np.dtype) -> bool:
    # Checked by name first so that plain float models never import ml_dtypes.
    return dtype.name == "bfloat16" and dtype == _bfloat16()


def numpy_dtype(code: str) -> np.dtype:
    """Map a safetensors dtype code to numpy, raising ModelFormatError for unknown codes."""
    if code == "BF16":
        return _bfloat16()
    try:
        return _NUMPY_CODES[code]
    except (KeyError, TypeError):
        raise ModelFormatError(
            f"unknown dtype {code!r}; supported: {', '.join(SUPPORTED_DTYPES)}"
        ) from None


def dtype_code(dtype: np.dtype | type) -> str:
    """Map a numpy dtype to its safetensors code, raising ModelFormatError if unsupported."""
    dtype = np.dtype(dtype)
    if dtype.kind in "fiub":
        code = _CODES_BY_KIND.get((dtype.kind, dtype.itemsize))
        if code is not None:
            return code
    elif _is_bfloat16(dtype):
        return "BF16"
    raise ModelFormatError(
        f"dtype {dtype} cannot be serialized; supported: {', '.join(SUPPORTED_DTYPES)}"
    )


@dataclass(frozen=True)
class TensorSpec:
    """Where one tensor lives in a file; begin/end are absolute file offsets."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def dtype_code(self) -> str:
        return dtype_code(self.dtype)


@dataclass(frozen=True)
class ModelHeader:
    """A validated header: tensors in file (offset) order, metadata, and layout."""

    tensors: tuple[TensorSpec, ...]
    metadata: dict[str, str]
    data_start: int
    total_size: int

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    @property
    def data_size(self) -> int:
        return self.total_size - self.data_start

    def __getitem__(self, name: str) -> TensorSpec:
        for spec in self.tensors:
            if spec.name == name:
                return spec
        raise KeyError(name)


def header_signature(header: ModelHeader) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype code, shape) per tensor: what two models must share to be averaged."""
    return [(t.name, t.dtype_code, t.shape) for t in header.tensors]


# --------------------------------------------------------------------------- writing


def _as_little_endian(name: str, value: Any) -> np.ndarray:
    if not isinstance(value, (np.ndarray, np.generic)):
        raise TypeError(
            f"tensor {name!r}: expected a numpy array, got {type(value).__name__}"
        )
    arr = np.asarray(value)
    try:
        code = dtype_code(arr.dtype)
    except ModelFormatError as exc:
        raise ModelFormatError(f"tensor {name!r}: {exc}") from None
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not _LITTLE_HOST):
        arr = arr.astype(numpy_dtype(code))
    # Not np.ascontiguousarray: it turns 0-d arrays into shape (1,).
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"tensor names must be str, got {type(name).__name__} {name!r}")
    if not name:
        raise ModelFormatError("tensor names must be non-empty")
    if name == _METADATA_KEY:
        raise ModelFormatError(f"{_METADATA_KEY!r} is reserved and cannot name a tensor")
    return name


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping of str to str, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata must map str to str; got {key!r}: {value!r}")
    return dict(metadata)


def _prepare(
    weights: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None
) -> tuple[bytes, list[np.ndarray]]:
    """Validate everything and build the header before any byte is written."""
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a mapping of name to array, got {type(weights).__name__}")
    header: dict[str, Any] = {}
    meta = _check_metadata(metadata)
    if meta is not None:
        header[_METADATA_KEY] = meta
    arrays: list[np.ndarray] = []
    offset = 0
    for name, value in weights.items():
        arr = _as_little_endian(_check_name(name), value)
        header[name] = {
            "dtype": dtype_code(arr.dtype),
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
        arrays.append(arr)
    try:
        raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates in a name or metadata
        raise ModelFormatError(f"names and metadata must be valid Unicode: {exc}") from None
    raw += b" " * (-(len(raw) + _HEADER_LEN.size) % 8)
    return _HEADER_LEN.pack(len(raw)) + raw, arrays


def _raw_bytes(arr: np.ndarray) -> np.ndarray:
    # reshape(-1) first: a 0-d array cannot be viewed as a different item size.
    return arr.reshape(-1).view(np.uint8)


def dumps(weights: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialize weights in memory; for large models prefer write_model, which streams."""
    head, arrays = _prepare(weights, metadata)
    return b"".join([head, *(_raw_bytes(a) for a in arrays)])


def write_model(
    path: str | os.PathLike[str],
    weights: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
    durable: bool = True,
) -> None:
    """Write atomically so a reader (or a crash) never sees a half-written model.

    ``durable=False`` skips the fsyncs, for scratch files that need not survive a crash
    (an aggregate that is sent on and committed elsewhere): a gigabyte fsync takes
    seconds. The rename is atomic either way.
    """
    head, arrays = _prepare(weights, metadata)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            for arr in arrays:
                f.write(_raw_bytes(arr))
            if durable:
                f.flush()
                os.fsync(f.fileno())
        # mkstemp creates 0600; models are shared with other local services.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    # Makes the rename itself durable; not possible on every platform/filesystem.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- parsing


def header_length(prefix: bytes, total_size: int) -> int:
    """The JSON header's length from the first 8 bytes, refused before anything is allocated
    for it if it cannot fit the file (``total_size`` bytes) or the format's limit."""
    if total_size < _HEADER_LEN.size or len(prefix) < _HEADER_LEN.size:
        raise ModelFormatError(
            f"file is {total_size} bytes, too short for the 8-byte header length"
        )
    (n,) = _HEADER_LEN.unpack(prefix[: _HEADER_LEN.size])
    bounds = _limits.current()
    if n > bounds.model_header_bytes:
        raise ModelFormatError(f"header length {n} exceeds {bounds.describe('model_header_bytes')}")
    if _HEADER_LEN.size + n > total_size:
        raise ModelFormatError(
            f"header length {n} is larger than the {total_size - _HEADER_LEN.size} bytes "
            "that follow it (truncated file?)"
        )
    return n


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ModelFormatError(f"header contains duplicate key {key!r}")
        out[key] = value
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_tensor(name: str, entry: Any, data_start: int) -> TensorSpec:
    where = f"tensor {name!r}"
    if not name:
        raise ModelFormatError("header contains a tensor with an empty name")
    if not isinstance(entry, dict):
        raise ModelFormatError(f"{where}: entry must be an object, got {type(entry).__name__}")
    if set(entry) != _TENSOR_KEYS:
        missing = sorted(_TENSOR_KEYS - set(entry))
        extra = sorted(set(entry) - _TENSOR_KEYS)
        raise ModelFormatError(f"{where}: missing keys {missing}, unexpected keys {extra}")
    try:
        dtype = numpy_dtype(entry["dtype"])
    except ModelFormatError as exc:
        raise ModelFormatError(f"{where}: {exc}") from None
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and 0 <= d < _MAX_DIM for d in shape):
        raise ModelFormatError(
            f"{where}: shape must be a list of non-negative ints below 2**62, got {shape!r}"
        )
    if len(shape) > MAX_NDIM:
        raise ModelFormatError(f"{where}: {len(shape)} dimensions exceed the limit of {MAX_NDIM}")
    # numpy refuses shapes whose non-zero dimensions overflow its index type even when
    # another dimension is 0, so an empty tensor can still have an impossible shape.
    if math.prod(max(d, 1) for d in shape) * dtype.itemsize > _MAX_ARRAY_BYTES:
        raise ModelFormatError(f"{where}: shape {shape} is too large to represent")
    offsets = entry["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise ModelFormatError(
            f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}"
        )
    expected = math.prod(shape) * dtype.itemsize
    if offsets[1] - offsets[0] != expected:
        raise ModelFormatError(
            f"{where}: data_offsets {offsets} do not match shape {shape} of "
            f"{entry['dtype']} ({expected} bytes)"
        )
    return TensorSpec(name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def parse_header(raw: bytes, n: int, total_size: int) -> ModelHeader:
    """Validate the ``n`` header bytes of a ``total_size``-byte file: every tensor's entry,
    and that the tensors cover the data section exactly. Shared by the file, buffer and
    streaming (fedtier.aggregators.update_check) readers so all refuse the same files."""
    bounds = _limits.current()
    # Counted in C before the JSON is parsed: parsing a header of many tiny entries costs
    # far more than refusing it. Every tensor entry has one "data_offsets" key, and a quote
    # inside a JSON string is escaped, so only a file built to be refused counts more.
    listed = raw.count(b'"data_offsets"')
    if listed > bounds.model_tensors:
        raise ModelFormatError(f"header lists {listed} tensors, over {bounds.describe('model_tensors')}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelFormatError(f"header is not valid UTF-8: {exc}") from None
    if not text.startswith("{"):
        raise ModelFormatError("header must be a JSON object starting with '{'")
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except ModelFormatError:
        raise
    except ValueError as exc:  # JSONDecodeError, or an integer with too many digits
        raise ModelFormatError(f"header is not valid JSON: {exc}") from None
    except RecursionError:
        raise ModelFormatError("header JSON is nested too deeply") from None
    if not isinstance(obj, dict):
        raise ModelFormatError(f"header must be a JSON object, got {type(obj).__name__}")
    metadata = obj.pop(_METADATA_KEY, None)
    if len(obj) > bounds.model_tensors:  # before any entry is parsed: the refusal costs nothing more
        raise ModelFormatError(f"header lists {len(obj)} tensors, over {bounds.describe('model_tensors')}")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelFormatError("__metadata__ must be an object mapping str to str")
    data_start = _HEADER_LEN.size + n
    specs = [_parse_tensor(name, entry, data_start) for name, entry in obj.items()]
    # Stable sort keeps the writer's order among zero-size tensors sharing an offset.
    specs.sort(key=lambda s: (s.begin, s.end))
    position = data_start
    for spec in specs:
        if spec.begin != position:
            kind = "overlaps the previous tensor" if spec.begin < position else "leaves a gap"
            raise ModelFormatError(
                f"tensor {spec.name!r}: data_offsets [{spec.begin - data_start}, "
                f"{spec.end - data_start}] {kind} (expected begin {position - data_start})"
            )
        position = spec.end
    if position != total_size:
        data_size = total_size - data_start
        covered = position - data_start
        problem = "trailing bytes after the last tensor" if data_size > covered else "file is truncated"
        raise ModelFormatError(
            f"tensors cover {covered} data bytes but the file has {data_size}: {problem}"
        )
    return ModelHeader(tuple(specs), metadata, data_start, total_size)


def _parse_buffer(data: bytes | bytearray | memoryview) -> tuple[ModelHeader, memoryview]:
    view = memoryview(data).cast("B")
    n = header_length(bytes(view[: _HEADER_LEN.size]), len(view))
    header = parse_header(bytes(view[_HEADER_LEN.size : _HEADER_LEN.size + n]), n, len(view))
    return header, view


def _read_header_from(f: BinaryIO, total_size: int) -> ModelHeader:
    n = header_length(f.read(_HEADER_LEN.size), total_size)
    raw = f.read(n)
    if len(raw) != n:
        raise ModelFormatError("file shrank while reading its header")
    return parse_header(raw, n, total_size)


def read_header(path: str | os.PathLike[str]) -> ModelHeader:
    """Validate a file's structure cheaply, without reading any tensor data."""
    with open(path, "rb") as f:
        return _read_header_from(f, os.fstat(f.fileno()).st_size)


def check_values(spec: TensorSpec, arr: np.ndarray) -> np.ndarray:
    """Refuse values the dtype cannot hold (a bool byte other than 0/1); returns ``arr``."""
    # A bool byte other than 0/1 is not a bool; numpy would carry it silently.
    if arr.dtype.kind == "b" and arr.size and arr.view(np.uint8).max() > 1:
        raise ModelFormatError(f"tensor {spec.name!r}: BOOL data contains bytes other than 0 and 1")
    return arr


def loads(data: bytes | bytearray | memoryview) -> Weights:
    """Parse a model held in memory; arrays are owned, writeable copies."""
    header, view = _parse_buffer(data)
    weights: Weights = {}
    for spec in header.tensors:
        arr = np.frombuffer(view[spec.begin : spec.end], dtype=spec.dtype).reshape(spec.shape).copy()
        weights[spec.name] = check_values(spec, arr)
    return weights


def _read_into(f: BinaryIO, spec: TensorSpec, out: np.ndarray) -> None:
    flat = _raw_bytes(out)
    got = f.readinto(flat) if flat.size else 0
    if got != flat.size:
        raise ModelFormatError(f"tensor {spec.name!r}: file ended early (truncated while reading?)")


def read_model(path: str | os.PathLike[str], header: ModelHeader | None = None) -> Weights:
    """Load a whole model; arrays are owned, writeable copies in file order. Pass the
    ``header`` from an earlier ``read_header`` to skip parsing it again (a header can be
    most of a file's cost); the file size is still checked against it."""
    weights: Weights = {}
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if header is None:
            header = _read_header_from(f, size)
        elif size != header.total_size:
            raise ModelFormatError(
                f"file is {size} bytes but its header describes {header.total_size} (changed on disk?)"
            )
        f.seek(header.data_start)
        for spec in header.tensors:
            arr = np.empty(spec.shape, dtype=spec.dtype)
            _read_into(f, spec, arr)
            weights[spec.name] = check_values(spec, arr)
    return weights


def iter_slices(
    path: str | os.PathLike[str],
    header: ModelHeader | None = None,
    max_bytes: int = 8 << 20,
    reuse: bool = False,
) -> Iterator[tuple[TensorSpec, int, np.ndarray]]:
    """Stream tensors as flat pieces so aggregation memory does not scale with model size.

    Yields ``(spec, element_offset, flat)`` where ``flat`` is a fresh 1-D array of at most
    ``max_bytes`` bytes holding elements ``[element_offset, element_offset + flat.size)`` of
    the C-order flattened tensor. Every tensor is yielded at least once, so a zero-size
    tensor appears as a single empty slice. Pass the ``header`` from an earlier
    ``read_header`` to skip re-parsing; the file size is still checked against it.

    ``reuse=True`` yields views of one ``max_bytes`` buffer that the next slice
    overwrites, for callers that are done with a slice before asking for the next (a
    streaming fold). A buffer that stays in the CPU cache makes the fold that follows
    each read cheap; fresh arrays would each be new memory to fault in and write.
    """
    if header is None:
        header = read_header(path)
    buffer = np.empty(max_bytes, dtype=np.uint8) if reuse else None
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size != header.total_size:
            raise ModelFormatError(
                f"file is {size} bytes but its header describes {header.total_size} (changed on disk?)"
            )
        for spec in header.tensors:
            itemsize = spec.dtype.itemsize
            per_slice = max_bytes // itemsize
            if per_slice < 1:
                raise ValueError(f"max_bytes={max_bytes} is smaller than one {spec.dtype} element")
            total = spec.size
            f.seek(spec.begin)
            start = 0
            while True:
                count = min(per_slice, total - start)
                if buffer is None:
                    flat = np.empty(count, dtype=spec.dtype)
                else:
                    flat = buffer[:count * itemsize].view(spec.dtype)
                _read_into(f, spec, flat)
                yield spec, start, check_values(spec, flat)
                start += count
                if start >= total:
                    break
