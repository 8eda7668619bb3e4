"""The check every update passes before any of it is folded in, run on bytes as they come.

An update is acceptable when its header is well formed, its tensors line up with the
round's reference model (names, dtypes, shapes) and every float value is finite. That
verdict needs every byte of the update once. The combiner's upload path already holds
each byte in memory on its way to disk (to hash it), so it feeds the same bytes to an
``UpdateCheck`` there and the aggregator skips its own reading pass: one read of each
update from disk instead of two, and a bad update is known the moment its upload ends.
A file that did not arrive that way is checked by feeding it through the same class
(``check_file``), so there is one definition of "acceptable".

Bytes arrive in chunks of any size, so a header or a single element may be split
between chunks; the check keeps the few bytes it needs until the rest arrives. A tensor
with NaN or inf is scanned to its end before it is refused, so the message counts the
whole tensor's bad values, however the bytes were cut.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedtier.helpers.base import Helper, IncompatibleModelError
from fedtier.helpers.format import (
    ModelFormatError,
    ModelHeader,
    TensorSpec,
    check_values,
    header_length,
    parse_header,
)

LENGTH_BYTES = 8  # the u64 that opens every model file (helpers/format.py)
FILE_BLOCK = 2 << 20  # reading a file through the check: one reused buffer that stays in cache


@dataclass
class _NonFinite:
    name: str
    first: int
    nan: int = 0
    inf: int = 0


class UpdateCheck:
    """Checks one update of ``size`` bytes against ``reference`` as its bytes are fed.

    ``feed`` never raises: the first problem is recorded and later bytes are ignored,
    so a receiver can finish (and verify) the transfer and report the rejection
    cleanly. ``verdict`` raises that problem (ModelFormatError, IncompatibleModelError)
    or returns the update's header once every byte was fed and found acceptable.
    """

    def __init__(self, helper: Helper, reference: ModelHeader, size: int) -> None:
        self.helper = helper
        self.reference = reference
        self.size = size
        self.header: ModelHeader | None = None
        self.error: Exception | None = None
        self._pending = bytearray()  # header bytes so far, or the start of a split element
        self._position = 0  # file offset of the next byte fed
        self._header_end: int | None = None  # file offset where the header ends, once its length is read
        self._tensors: list[TensorSpec] = []
        self._index = 0  # the tensor the next data byte belongs to
        self._non_finite: _NonFinite | None = None  # counting the bad values of the current tensor

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self.error is not None:
            return
        view = memoryview(data).cast("B")
        try:
            if self.header is None:
                view = self._feed_header(view)
            if len(view):
                self._feed_values(view)
        except (ModelFormatError, IncompatibleModelError) as exc:
            self.error = exc

    def verdict(self) -> ModelHeader:
        if self.error is not None:
            raise self.error
        if self.header is None and self._position == self.size:  # a file too short for its header
            header_length(bytes(self._pending[:LENGTH_BYTES]), self.size)
        if self.header is None or self._position != self.size:
            raise ModelFormatError(f"update ended after {self._position} of {self.size} bytes")
        return self.header

    # ---- header
    def _feed_header(self, view: memoryview) -> memoryview:
        """Collect the 8-byte length, then that many header bytes; returns what follows."""
        if self._header_end is None:
            view = self._collect(view, LENGTH_BYTES)
            if self._position < LENGTH_BYTES:
                return view
            self._header_end = LENGTH_BYTES + header_length(bytes(self._pending), self.size)
        view = self._collect(view, self._header_end)
        if self._position < self._header_end:
            return view
        header = parse_header(bytes(self._pending[LENGTH_BYTES:]), self._header_end - LENGTH_BYTES, self.size)
        self.helper.check_compatible(self.reference, header)
        self._pending.clear()
        self.header = header
        self._tensors = [spec for spec in header.tensors if spec.end > spec.begin]
        return view

    def _collect(self, view: memoryview, end: int) -> memoryview:
        """Keep bytes until the file offset ``end``; returns the rest of ``view``."""
        take = min(len(view), end - self._position)
        self._pending += view[:take]
        self._position += take
        return view[take:]

    # ---- values
    def _feed_values(self, view: memoryview) -> None:
        while len(view):
            if self._index >= len(self._tensors):
                raise ModelFormatError(f"more than the {self.size} bytes the header describes")
            spec = self._tensors[self._index]
            take = min(len(view), spec.end - self._position)
            self._check_region(spec, view[:take])
            self._position += take
            view = view[take:]
            if self._position == spec.end:
                self._index += 1
                if self._non_finite is not None:
                    bad = self._non_finite
                    raise self.helper.non_finite_error(bad.name, bad.nan, bad.inf, bad.first)

    def _check_region(self, spec: TensorSpec, region: memoryview) -> None:
        """Bytes [position, position + len(region)) of ``spec``'s data."""
        itemsize = spec.dtype.itemsize
        first = (self._position - spec.begin) // itemsize  # element index of the region's start
        if self._pending:  # finish the element the last chunk split
            need = itemsize - len(self._pending)
            self._pending += region[:need]
            region = region[need:]
            if len(self._pending) < itemsize:
                return
            self._check_values(spec, np.frombuffer(bytes(self._pending), dtype=spec.dtype), first)
            self._pending.clear()
            first += 1
        whole = len(region) - len(region) % itemsize
        if whole:
            self._check_values(spec, np.frombuffer(region[:whole], dtype=spec.dtype), first)
        self._pending += region[whole:]

    def _check_values(self, spec: TensorSpec, values: np.ndarray, offset: int) -> None:
        check_values(spec, values)
        if self._non_finite is None:
            try:
                self.helper.check_finite(spec.name, values, offset)
                return
            except IncompatibleModelError:  # count the rest of the tensor, then refuse it
                first = int(np.flatnonzero(~np.isfinite(values))[0])
                self._non_finite = _NonFinite(spec.name, offset + first)
        bad = int(np.count_nonzero(~np.isfinite(values)))
        nan = int(np.count_nonzero(np.isnan(values)))
        self._non_finite.nan += nan
        self._non_finite.inf += bad - nan


def check_file(helper: Helper, reference: ModelHeader, path: str | os.PathLike[str]) -> ModelHeader:
    """The same check for an update already on disk; raises or returns its header."""
    with open(Path(path), "rb") as f:
        check = UpdateCheck(helper, reference, os.fstat(f.fileno()).st_size)
        buffer = bytearray(FILE_BLOCK)
        view = memoryview(buffer)
        while got := f.readinto(buffer):
            check.feed(view[:got])
            if check.error is not None:
                break
    return check.verdict()


__all__ = ["UpdateCheck", "check_file"]
