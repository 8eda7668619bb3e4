"""An update checked as its bytes arrive gets the verdict the file check gives, and FedAvg
then folds it without reading it for the check (fedtier/aggregators/update_check.py)."""
from __future__ import annotations

import random
import struct
from pathlib import Path

import numpy as np
import pytest

import fedtier.aggregators.base as fedavg_module
from fedtier.aggregators import FedAvg, Update
from fedtier.aggregators.update_check import UpdateCheck, check_file
from fedtier.helpers import get_helper
from fedtier.helpers.format import (
    ModelFormatError,
    ModelHeader,
    header_signature,
    iter_slices,
    read_header,
    read_model,
    write_model,
)

helper = get_helper("numpy")

# odd element counts put the later tensors at offsets that are not multiples of their
# item size, so elements straddle chunk boundaries in every chunking below
REFERENCE = {
    "half": np.linspace(-1, 1, 7).astype(np.float16),
    "weight": np.linspace(-2, 2, 3 * 41).astype(np.float32).reshape(3, 41),
    "double": np.linspace(0, 1, 5).astype(np.float64),
    "mask": np.array([True, False, True]),
    "steps": np.array(7, dtype=np.int64),
    "empty": np.zeros((0, 4), np.float32),
}


def reference_check(reference: ModelHeader, path: Path) -> ModelHeader:
    """The file check FedAvg ran before this module existed, with slices that hold each
    tensor whole (its error counted NaN/inf per slice): the oracle."""
    header = read_header(path)
    helper.check_compatible(reference, header)
    for spec, offset, values in iter_slices(path, header, 1 << 20):
        helper.check_finite(spec.name, values, offset)
    return header


def outcome(run) -> tuple[str, str]:
    try:
        return "ok", repr(header_signature(run()))
    except (ModelFormatError, ValueError) as exc:
        return type(exc).__name__, str(exc)


def variants(tmp_path: Path) -> dict[str, bytes]:
    def saved(name: str, **changes: np.ndarray) -> bytes:
        path = tmp_path / name
        write_model(path, {**REFERENCE, **changes})
        return path.read_bytes()

    good = saved("good")
    weight = REFERENCE["weight"].copy()
    weight[2, 40] = np.nan  # the last element of its tensor
    last_nan = saved("last_nan", weight=weight)
    weight = REFERENCE["weight"].copy()
    weight[1, 3] = np.inf
    weight[2, 0] = np.nan
    mixed = saved("mixed", weight=weight)
    half = REFERENCE["half"].copy()
    half[3] = np.inf
    bad_mask = bytearray(good)
    mask_at = read_header(tmp_path / "good")["mask"].begin
    bad_mask[mask_at + 1] = 2
    return {
        "good": good,
        "last_nan": last_nan,
        "mixed": mixed,
        "half_inf": saved("half_inf", half=half),
        "double_nan": saved("double_nan", double=np.array([0, 1, np.nan, 3, 4], np.float64)),
        "wrong_shape": saved("wrong_shape", weight=np.zeros((41, 3), np.float32)),
        "wrong_dtype": saved("wrong_dtype", double=REFERENCE["double"].astype(np.float32)),
        "bool_byte": bytes(bad_mask),
        "truncated": good[:-3],
        "trailing": good + b"\0" * 4,
        "header_only": good[:20],
        "too_short": good[:5],
        "empty_file": b"",
        "huge_header": struct.pack("<Q", 1 << 40) + good[8:],
        "not_json": struct.pack("<Q", 8) + b"{not js}",
        # a zero header length once made the streamed check loop forever (a combiner thread spun)
        "zero_header": struct.pack("<Q", 0) + good[8:],
        "zero_length_only": struct.pack("<Q", 0),
    }


def chunkings(size: int) -> dict[str, list[int]]:
    rng = random.Random(size)
    randoms = []
    while sum(randoms) < size:
        randoms.append(rng.randint(1, 97))
    return {"whole": [size], "bytes": [1] * size, "sevens": [7] * (size // 7 + 1), "random": randoms}


def feed(data: bytes, sizes: list[int], reference: ModelHeader) -> UpdateCheck:
    check = UpdateCheck(helper, reference, len(data))
    position = 0
    for size in sizes:
        if position >= len(data):
            break
        check.feed(memoryview(data)[position:position + size])
        position += size
    return check


@pytest.mark.timeout(60)  # a header length of 0 once looped forever: fail, do not hang
def test_every_chunking_gets_the_file_checks_verdict(tmp_path: Path) -> None:
    write_model(tmp_path / "reference", REFERENCE)
    reference = read_header(tmp_path / "reference")
    verdicts = {}
    for name, data in variants(tmp_path).items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(data)
        expected = outcome(lambda path=path: reference_check(reference, path))
        assert outcome(lambda path=path: check_file(helper, reference, path)) == expected, name
        for chunking, sizes in chunkings(len(data)).items():
            assert outcome(feed(data, sizes, reference).verdict) == expected, (name, chunking)
        verdicts[name] = expected
    # the cases are what they claim: one accepted, every other one refused for its own reason
    assert verdicts["good"][0] == "ok"
    assert "1 NaN and 0 inf values (first at element 122)" in verdicts["last_nan"][1]
    assert "1 NaN and 1 inf values (first at element 44)" in verdicts["mixed"][1]
    assert "'half' contains 0 NaN and 1 inf values (first at element 3)" in verdicts["half_inf"][1]
    assert "BOOL data" in verdicts["bool_byte"][1]
    assert "shape" in verdicts["wrong_shape"][1] and "dtype" in verdicts["wrong_dtype"][1]
    assert all(verdict[0] != "ok" for name, verdict in verdicts.items() if name != "good")


def test_a_stream_cut_short_has_no_verdict_but_an_error(tmp_path: Path) -> None:
    write_model(tmp_path / "reference", REFERENCE)
    reference = read_header(tmp_path / "reference")
    data = (tmp_path / "reference").read_bytes()
    check = UpdateCheck(helper, reference, len(data))
    check.feed(data[:-8])
    with pytest.raises(ModelFormatError, match=f"ended after {len(data) - 8} of {len(data)} bytes"):
        check.verdict()
    check.feed(data[-8:])
    assert header_signature(check.verdict()) == header_signature(reference)


def updates(tmp_path: Path) -> tuple[Path, list[Path]]:
    rng = np.random.default_rng(4)
    shapes = {"a": (300, 7), "b": (13,)}
    paths = []
    for i in range(3):
        path = tmp_path / f"u{i}"
        write_model(path, {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()})
        paths.append(path)
    return paths[0], paths


def arrived(agg: FedAvg, path: Path, chunk: int = 1000) -> UpdateCheck:
    data = path.read_bytes()
    check = agg.arrival_check(len(data))
    for start in range(0, len(data), chunk):
        check.feed(data[start:start + chunk])
    return check


def test_fedavg_folds_an_update_checked_on_arrival_without_checking_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference, paths = updates(tmp_path)
    plain = FedAvg(helper)
    plain.start(reference)
    for i, path in enumerate(paths):
        plain.add(Update(path, 10.0 + i))
    plain.finish(tmp_path / "plain")

    file_checks = []
    monkeypatch.setattr(fedavg_module, "check_file", lambda *args: file_checks.append(args) or check_file(*args))
    agg = FedAvg(helper)
    agg.start(reference)
    for i, path in enumerate(paths):
        agg.add(Update(path, 10.0 + i, checked=arrived(agg, path)))
    agg.finish(tmp_path / "arrived")
    assert file_checks == []  # the fold was the only read of each update
    for name, values in read_model(tmp_path / "plain").items():
        np.testing.assert_array_equal(read_model(tmp_path / "arrived")[name], values)

    # a check made for another round's aggregator proves nothing here: the file is checked
    other = FedAvg(helper)
    other.start(reference)
    agg.add(Update(paths[0], 1.0, checked=arrived(other, paths[0])))
    assert len(file_checks) == 1


def test_a_rejection_found_on_arrival_is_raised_without_reading_the_file(tmp_path: Path) -> None:
    reference, paths = updates(tmp_path)
    model = read_model(paths[1])
    model["a"][299, 6] = np.nan
    bad = tmp_path / "bad"
    write_model(bad, model)
    agg = FedAvg(helper)
    agg.start(reference)
    agg.add(Update(paths[0], 5.0))
    checked = arrived(agg, bad)
    bad.unlink()  # nothing left to read: the verdict alone must reject it
    with pytest.raises(ValueError, match=r"'a' contains 1 NaN and 0 inf values \(first at element 2099\)"):
        agg.add(Update(bad, 5.0, checked=checked))
    assert agg.num_updates == 1 and agg.total_weight == 5.0
