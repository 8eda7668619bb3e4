"""Read IDX files (the MNIST / Fashion-MNIST distribution format) into numpy arrays.

The MNIST-style test projects and benchmarks read the original, unmodified IDX files
from a directory the user points them at (nothing is downloaded at run time). The
files arrive from outside the project, so every header field is checked before any
data is trusted, and every error names the file it is about: a truncated download or
a mislabelled file should fail loudly at load time, not as a shape error mid-round.

IDX layout (big-endian), see http://yann.lecun.com/exdb/mnist/:

    2 bytes   zero
    1 byte    element type: 0x08 u8, 0x09 i8, 0x0B i16, 0x0C i32, 0x0D f32, 0x0E f64
    1 byte    number of dimensions D (>= 1)
    4*D bytes each dimension as an unsigned 32-bit integer
    rest      the elements, C order, exactly prod(dims) of them

Files may be gzip-compressed (detected from the content, not the name).
"""
from __future__ import annotations

import gzip
import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "IdxFormatError", "read_idx", "write_idx", "load_mnist", "load_mnist_labels", "mnist_files", "MNIST_FILES",
]

log = logging.getLogger(__name__)

#: IDX element-type byte -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_DTYPE_CODES = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}

_GZIP_MAGIC = b"\x1f\x8b"

#: Expected file names per split (the names of the original distribution, also used
#: by Fashion-MNIST). Each may be present gzip-compressed (``.gz``) or plain.
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_IMAGE_SHAPE = (28, 28)
MNIST_NUM_CLASSES = 10


class IdxFormatError(ValueError):
    """An IDX file is missing, malformed or not what the caller expected; names the file."""


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"IDX file {path} not found") from None
    except OSError as exc:
        raise IdxFormatError(f"{path}: cannot be read: {exc}") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        # A truncated or corrupted download: gzip reports it as one of these.
        raise IdxFormatError(f"{path}: corrupt or truncated gzip data: {exc}") from None


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (gzip or plain) into a native-byte-order numpy array.

    Raises ``FileNotFoundError`` if ``path`` does not exist and ``IdxFormatError``
    naming ``path`` if the file cannot be read, is corrupt gzip, the magic number
    or element type is wrong, a dimension is zero, or the data section is shorter or
    longer than the header promises (a truncated file or a concatenation mistake).
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise IdxFormatError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    zero, type_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0:
        raise IdxFormatError(
            f"{path}: not an IDX file (magic number 0x{raw[:4].hex()} does not start with two zero bytes)"
        )
    if type_code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise IdxFormatError(f"{path}: unknown IDX element type 0x{type_code:02X} (known: {known})")
    if ndim == 0:
        raise IdxFormatError(f"{path}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise IdxFormatError(f"{path}: header declares {ndim} dimensions but the file ends after {len(raw)} bytes")
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    if 0 in dims:
        raise IdxFormatError(f"{path}: dimension of size 0 in shape {list(dims)}")
    dtype = IDX_DTYPES[type_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header_len
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise IdxFormatError(
            f"{path}: {what}: shape {list(dims)} of {dtype.name} needs {expected} data bytes, found {actual}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(dims)
    # Native byte order and an owned, writeable array: callers may normalise in place.
    return data.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike[str], array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file; gzip-compressed when ``compress`` (default: name ends in .gz).

    Used to build fixtures and small subsets; the inverse of ``read_idx``.
    """
    array = np.asarray(array)
    code = _DTYPE_CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"dtype {array.dtype} has no IDX element type (use u8, i8, i16, i32, f32 or f64)")
    if not 1 <= array.ndim <= 255 or 0 in array.shape:
        raise ValueError(f"IDX needs 1..255 non-zero dimensions, got shape {array.shape}")
    body = struct.pack(f">HBB{array.ndim}I", 0, code, array.ndim, *array.shape)
    body += np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    path = Path(path)
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(gzip.compress(body, mtime=0) if compress else body)


def mnist_files(directory: str | os.PathLike[str], split: str) -> tuple[Path, Path]:
    """Locate the (images, labels) files of ``split`` in ``directory``, gzip preferred.

    Raises ``FileNotFoundError`` naming the missing file and the names it looked for.
    """
    if split not in MNIST_FILES:
        raise ValueError(f"split must be one of {', '.join(MNIST_FILES)}, got {split!r}")
    images, labels = MNIST_FILES[split]
    return _locate(directory, split, images), _locate(directory, split, labels)


def _locate(directory: str | os.PathLike[str], split: str, stem: str) -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"MNIST directory {directory} does not exist (or is not a directory)")
    candidates = [directory / f"{stem}.gz", directory / stem]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"MNIST {split} file missing in {directory}: expected {candidates[0].name} (or {candidates[1].name})"
        )
    return path


def load_mnist(directory: str | os.PathLike[str], split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load an MNIST-format split: ``(images uint8 [N, 28, 28], labels uint8 [N])``.

    Works for any dataset distributed under MNIST's file names and shapes (MNIST,
    Fashion-MNIST). Besides the IDX checks, it verifies what the projects rely on:
    28x28 uint8 images, uint8 labels in 0..9, and one label per image.
    """
    images_path, labels_path = mnist_files(directory, split)
    images = read_idx(images_path)
    labels = _checked_labels(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != MNIST_IMAGE_SHAPE:
        raise IdxFormatError(
            f"{images_path}: expected uint8 images of shape [N, 28, 28], got {images.dtype} {list(images.shape)}"
        )
    if len(labels) != len(images):
        raise IdxFormatError(
            f"{labels_path}: {len(labels)} labels but {images_path.name} holds {len(images)} images"
        )
    log.debug("loaded %s %s: %d images from %s", directory, split, len(images), images_path)
    return images, labels


def load_mnist_labels(directory: str | os.PathLike[str], split: str = "train") -> np.ndarray:
    """Only the labels of a split (uint8 [N]), without decompressing the images.

    For callers that need the label distribution only, such as the sandbox printing
    each client's label histogram.
    """
    if split not in MNIST_FILES:
        raise ValueError(f"split must be one of {', '.join(MNIST_FILES)}, got {split!r}")
    return _checked_labels(_locate(directory, split, MNIST_FILES[split][1]))


def _checked_labels(path: Path) -> np.ndarray:
    labels = read_idx(path)
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise IdxFormatError(f"{path}: expected uint8 labels of shape [N], got {labels.dtype} {list(labels.shape)}")
    if labels.max() >= MNIST_NUM_CLASSES:
        raise IdxFormatError(f"{path}: label {int(labels.max())} out of range 0..{MNIST_NUM_CLASSES - 1}")
    return labels
