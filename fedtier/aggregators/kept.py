"""The shared machinery of the strategies that need every update at once (median, trimmed
mean, Krum, Multi-Krum): keep each update on disk, then read them all back slice by slice.

A coordinate-wise median cannot be folded one update at a time as a mean can: the value
of one coordinate depends on every update's value of it. Holding n updates in memory
would make a combiner's memory grow with its clients (100 updates of a 400 MB model are
40 GB), so ``add`` checks an update exactly as FedAvg does and keeps its file (a hard
link, Strategy.keep), and ``finish`` reads the same element range of every kept file into
one work buffer of ``n x slice`` float64 values, computes that range of the result, and
moves on. ``slice`` is chosen so the buffer stays under ``BUFFER_BYTES`` whatever n is:
peak memory is the output model (kept in memory, as FedAvg's running mean is) plus that
buffer plus one raw slice.

Every value is computed in float64 and stored back in the tensor's dtype once: floats
round once; integer and bool tensors round half to even (arithmetic.finalize), so the
median of bools is a majority vote whose ties fall to False. int64 values beyond 2**53
are not exact (as in FedAvg).

These strategies are unweighted by nature (a median does not weigh its inputs by
examples); ``finish`` still returns the total weight of every update taken, so the tier
above weighs this aggregate by the examples behind it as it would a FedAvg result.
"""
from __future__ import annotations

import os
import shutil
import uuid
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from fedtier.aggregators.arithmetic import finalize
from fedtier.aggregators.base import CheckedStrategy, RoundContext, Update, check_weight
from fedtier.helpers.format import ModelFormatError, ModelHeader, TensorSpec, write_model

#: the n x slice float64 work buffer's bound, whatever the number of updates n
BUFFER_BYTES = 64 << 20
#: kept files held open during ``finish``; the others are opened for each read, so a round
#: with thousands of updates does not run out of file descriptors
MAX_OPEN_FILES = 128
WORK = np.dtype(np.float64)


@dataclass(frozen=True)
class Kept:
    """One update kept for ``finish``: its own link, its checked header, its weight and
    sender. ``begins`` maps tensor names to file offsets when its layout differs from the
    reference's (a header with metadata); None, the usual case, means the same
    offsets, so no per-update table is held and no header is searched per read."""

    path: Path
    header: ModelHeader
    weight: float
    sender: str
    begins: dict[str, int] | None = None


def slice_elements(count: int, buffer_bytes: int | None = None) -> int:
    """Elements per slice so that ``count`` rows of float64 fit in the buffer bound."""
    return max(1, (BUFFER_BYTES if buffer_bytes is None else buffer_bytes) // (WORK.itemsize * max(1, count)))


class SliceReader:
    """Reads the same element range of a tensor from many kept files into one reused
    ``rows x slice`` float64 buffer. Built for one ``finish`` and closed after it."""

    def __init__(self, kept: Sequence[Kept], rows: int) -> None:
        self.kept = list(kept)
        # no longer than the largest tensor: a small model needs no 64 MiB buffer
        longest = max((spec.size for k in self.kept[:1] for spec in k.header.tensors), default=1)
        self.slice = min(slice_elements(rows), max(1, longest))
        self.work = np.empty(rows * self.slice, dtype=WORK)
        largest = max((spec.dtype.itemsize for k in self.kept for spec in k.header.tensors), default=1)
        self.raw = np.empty(self.slice * largest, dtype=np.uint8)
        self._fds: list[int | None] = []
        try:
            for i, k in enumerate(self.kept):
                self._fds.append(self._open(k) if i < MAX_OPEN_FILES else None)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _open(kept: Kept) -> int:
        fd = os.open(kept.path, os.O_RDONLY)
        if os.fstat(fd).st_size != kept.header.total_size:
            os.close(fd)
            raise ModelFormatError(f"kept update from {kept.sender or kept.path.name} changed on disk")
        return fd

    def close(self) -> None:
        for fd in self._fds:
            if fd is not None:
                os.close(fd)
        self._fds = []

    def __enter__(self) -> "SliceReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def slices(self, reference: ModelHeader) -> Iterator[tuple[TensorSpec, int, int]]:
        """(tensor, first element, count) over the reference's tensors; a zero-size tensor
        once with count 0."""
        for spec in reference.tensors:
            total = spec.size
            if total == 0:
                yield spec, 0, 0
            for start in range(0, total, self.slice):
                yield spec, start, min(self.slice, total - start)

    def read(self, spec: TensorSpec, start: int, count: int, which: Sequence[int]) -> np.ndarray:
        """Elements [start, start + count) of the reference's tensor ``spec`` in the kept
        updates ``which``, as rows of the work buffer (overwritten by the next read). Contiguous: numpy copies
        a strided array before it partitions it (np.median), a copy the size of the buffer."""
        rows = self.work[:len(which) * count].reshape(len(which), count)
        itemsize = spec.dtype.itemsize
        raw = self.raw[:count * itemsize]
        for row, index in enumerate(which):
            kept = self.kept[index]
            offset = (spec.begin if kept.begins is None else kept.begins[spec.name]) + start * itemsize
            fd = self._fds[index]
            if fd is None:
                fd = self._open(kept)
                try:
                    _pread_into(fd, raw, offset, kept)
                finally:
                    os.close(fd)
            else:
                _pread_into(fd, raw, offset, kept)
            rows[row] = raw.view(spec.dtype)
        return rows


def _pread_into(fd: int, buffer: np.ndarray, offset: int, kept: Kept) -> None:
    view = memoryview(buffer)
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise ModelFormatError(f"kept update from {kept.sender or kept.path.name} ended early")
        done += got


class KeptUpdates(CheckedStrategy):
    """A strategy that keeps every update and computes its result in ``combine``."""

    def start(self, reference: Path, context: RoundContext | None = None) -> None:
        super().start(reference, context)
        self._kept: list[Kept] = []

    def add(self, update: Update) -> None:
        check_weight(update.weight)
        header = self._verdict(update)
        begins = None if header.tensors == self._reference.tensors else {t.name: t.begin for t in header.tensors}
        self._kept.append(Kept(self.keep(update), header, float(update.weight), update.sender, begins))
        self.total_weight += float(update.weight)
        self.num_updates += 1

    def finish(self, out: Path) -> float:
        if not self._kept:
            raise ValueError("no updates were aggregated")
        self.combine(out)
        return self.total_weight

    @abstractmethod
    def combine(self, out: Path) -> None:
        """Write the result of ``self._kept`` to ``out``."""

    # ---- for subclasses
    def reduce_slices(self, out: Path, which: Sequence[int], reduce: Callable[[np.ndarray], np.ndarray]) -> None:
        """Read the kept updates ``which`` slice by slice, reduce each slice's rows to one row
        with ``reduce`` (given rows x count float64 values it may overwrite) and write the result to ``out``; memory: the output plus the buffer."""
        result = {spec.name: np.empty(spec.size, dtype=spec.dtype) for spec in self._reference.tensors}
        with SliceReader(self._kept, len(which)) as reader:
            for spec, start, count in reader.slices(self._reference):
                if count:
                    values = reduce(reader.read(spec, start, count, which))
                    result[spec.name][start:start + count] = finalize(values, spec.dtype)
        write_model(out, {spec.name: result[spec.name].reshape(spec.shape) for spec in self._reference.tensors},
                    durable=False)


def link_or_copy(source: Path, out: Path) -> None:
    """``out`` becomes a file with ``source``'s bytes: a hard link where possible (no copy
    of a model-sized file), else a streamed copy; atomic either way."""
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, out)


__all__ = ["BUFFER_BYTES", "Kept", "KeptUpdates", "MAX_OPEN_FILES", "SliceReader", "link_or_copy",
           "slice_elements"]
