"""fedtier.datatools.datasets: IDX files read exactly, malformed ones rejected with the file named."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from fedtier.datatools.datasets import (
    IdxFormatError,
    load_mnist,
    load_mnist_labels,
    mnist_files,
    read_idx,
    write_idx,
)

SHARED_MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"


def _idx_bytes(type_code: int, dims: tuple[int, ...], data: bytes) -> bytes:
    return struct.pack(f">HBB{len(dims)}I", 0, type_code, len(dims), *dims) + data


def _write(path: Path, payload: bytes, compress: bool) -> Path:
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


@pytest.mark.parametrize("compress", [True, False])
def test_read_hand_written_ubyte_file(tmp_path: Path, compress: bool) -> None:
    payload = _idx_bytes(0x08, (2, 3), bytes([0, 1, 2, 250, 254, 255]))
    arr = read_idx(_write(tmp_path / "a.idx", payload, compress))  # no .gz: detected from content
    assert arr.dtype == np.uint8 and arr.shape == (2, 3)
    np.testing.assert_array_equal(arr, [[0, 1, 2], [250, 254, 255]])


def test_read_big_endian_types(tmp_path: Path) -> None:
    ints = _idx_bytes(0x0C, (3,), struct.pack(">3i", -1, 2, 70000))
    np.testing.assert_array_equal(read_idx(_write(tmp_path / "i.idx", ints, False)), [-1, 2, 70000])
    floats = _idx_bytes(0x0D, (2,), struct.pack(">2f", 1.5, -0.25))
    out = read_idx(_write(tmp_path / "f.idx", floats, True))
    assert out.dtype == np.float32 and out.dtype.byteorder in ("=", "<", "|")
    np.testing.assert_array_equal(out, [1.5, -0.25])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_write_read_round_trip(tmp_path: Path, dtype: type) -> None:
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    for name in ("x.idx", "x.idx.gz"):
        write_idx(tmp_path / name, arr)
        back = read_idx(tmp_path / name)
        assert back.dtype == np.dtype(dtype) and back.shape == arr.shape
        np.testing.assert_array_equal(back, arr)
        back[0, 0, 0] = 1  # owned and writeable
    assert (tmp_path / "x.idx.gz").read_bytes()[:2] == b"\x1f\x8b"


@pytest.mark.parametrize("payload,match", [
    (b"\x00\x00", "too short for an IDX header"),
    (b"\x01\x00\x08\x01" + b"\x00" * 8, "magic number 0x01000801"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "unknown IDX element type 0x07"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x01", "declares 3 dimensions but the file ends after 8 bytes"),
    (_idx_bytes(0x08, (2, 0), b""), "dimension of size 0"),
    (_idx_bytes(0x08, (2, 3), bytes(5)), "truncated: shape \\[2, 3\\] of uint8 needs 6 data bytes, found 5"),
    (_idx_bytes(0x08, (2, 3), bytes(7)), "trailing bytes"),
    (_idx_bytes(0x0C, (2,), bytes(4)), "needs 8 data bytes, found 4"),
])
@pytest.mark.parametrize("compress", [True, False])
def test_malformed_files_are_rejected_naming_the_file(tmp_path: Path, payload: bytes, match: str,
                                                      compress: bool) -> None:
    path = _write(tmp_path / "bad-file.idx", payload, compress)
    with pytest.raises(IdxFormatError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_gzip_is_rejected_naming_the_file(tmp_path: Path) -> None:
    good = gzip.compress(_idx_bytes(0x08, (100,), bytes(range(100))))
    path = tmp_path / "cut.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(IdxFormatError, match=f"{path}: corrupt or truncated gzip"):
        read_idx(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.idx"):
        read_idx(tmp_path / "nope.idx")


def test_write_idx_rejects_what_idx_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no IDX element type"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="non-zero dimensions"):
        write_idx(tmp_path / "x", np.zeros((0, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------- load_mnist
def _fake_mnist(directory: Path, split: str = "train", n: int = 12, gz: bool = True,
                images: np.ndarray | None = None, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8) if images is None else images
    labels = (np.arange(n) % 10).astype(np.uint8) if labels is None else labels
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if gz else ""
    write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("split", ["train", "test"])
def test_load_mnist_reads_both_splits_gzip_or_plain(tmp_path: Path, split: str, gz: bool) -> None:
    images, labels = _fake_mnist(tmp_path, split, gz=gz)
    got_images, got_labels = load_mnist(tmp_path, split)
    assert got_images.dtype == np.uint8 and got_images.shape == (12, 28, 28)
    assert got_labels.dtype == np.uint8 and got_labels.shape == (12,)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_array_equal(load_mnist_labels(tmp_path, split), labels)


def test_load_mnist_says_which_file_is_missing(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, "train")
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte.gz"):
        load_mnist(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz"):
        load_mnist(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        load_mnist_labels(tmp_path, "test")  # needs only the labels file
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    _fake_mnist(tmp_path, "test")
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    assert load_mnist_labels(tmp_path, "test").shape == (12,)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist(tmp_path / "absent", "train")
    with pytest.raises(ValueError, match="split must be one of train, test"):
        mnist_files(tmp_path, "validation")


def test_load_mnist_rejects_wrong_shapes_and_labels(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, images=np.zeros((12, 28, 27), dtype=np.uint8))
    with pytest.raises(IdxFormatError, match=r"train-images-idx3-ubyte.gz: expected uint8 images .* \[12, 28, 27\]"):
        load_mnist(tmp_path)
    _fake_mnist(tmp_path, images=np.zeros((12, 28, 28), dtype=np.float32))
    with pytest.raises(IdxFormatError, match="expected uint8 images"):
        load_mnist(tmp_path)
    _fake_mnist(tmp_path, labels=np.zeros(11, dtype=np.uint8))
    with pytest.raises(IdxFormatError, match="11 labels but train-images-idx3-ubyte.gz holds 12 images"):
        load_mnist(tmp_path)
    _fake_mnist(tmp_path, labels=np.full(12, 10, dtype=np.uint8))
    with pytest.raises(IdxFormatError, match="label 10 out of range 0..9"):
        load_mnist(tmp_path)
    _fake_mnist(tmp_path, labels=np.zeros((12, 1), dtype=np.uint8))
    with pytest.raises(IdxFormatError, match=r"train-labels-idx1-ubyte.gz: expected uint8 labels of shape \[N\]"):
        load_mnist_labels(tmp_path)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"MNIST reference data not found at {SHARED_MNIST}")
def test_real_mnist() -> None:
    train_x, train_y = load_mnist(SHARED_MNIST, "train")
    test_x, test_y = load_mnist(SHARED_MNIST, "test")
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    # Published facts about MNIST: the first training labels and the class counts.
    np.testing.assert_array_equal(train_y[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    np.testing.assert_array_equal(np.bincount(train_y),
                                  [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
    np.testing.assert_array_equal(np.bincount(test_y), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    assert train_x.max() == 255 and train_x.min() == 0
