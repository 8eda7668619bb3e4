"""Federated averaging as a streaming weighted mean.

Each update is checked completely (shapes, dtypes, finite values: update_check.py)
before any of it is folded in, then added slice by slice from disk. Peak memory is the
running mean (one model copy) plus one slice, whatever the number of updates, and a
rejected update leaves the mean exactly as it was. On a combiner the check runs on the
upload as it arrives (``arrival_check``), so the fold is the only read of the file.

Reads go into one reused slice buffer and the fold computes in that buffer
(``scratch_update``); its cost against a plain in-memory numpy mean is measured by
bench/aggregation.py (docs/performance.md).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fedtier.aggregators.arithmetic import increment_average
from fedtier.aggregators.base import CheckedStrategy, RoundContext, Update, check_weight
from fedtier.helpers.format import iter_slices, write_model

SLICE_BYTES = 2 << 20  # one reused slice buffer: stays in the CPU cache between read and fold


class FedAvg(CheckedStrategy):
    name = "fedavg"
    summary = "the weighted mean of the updates, by examples (McMahan et al.)"

    def start(self, reference: Path, context: RoundContext | None = None) -> None:
        super().start(reference, context)
        self._mean: dict[str, np.ndarray] | None = None

    def add(self, update: Update) -> None:
        weight = update.weight
        check_weight(weight)
        header = self._verdict(update)  # pass 1 (unless checked as it arrived)
        if self._mean is None:
            self._mean = {t.name: np.zeros(int(np.prod(t.shape, dtype=np.int64)), dtype=t.dtype)
                          for t in self._reference.tensors if self.aggregated(t.name)}
        total = self.total_weight + float(weight)
        for spec, offset, values in iter_slices(update.path, header, SLICE_BYTES, reuse=True):  # pass 2: fold in
            if spec.name not in self._mean:
                continue  # not aggregated: the reference's values stand (fedper.py)
            target = self._mean[spec.name][offset:offset + values.size]
            increment_average(target, values, float(weight), total, scratch_update=True)
        self.total_weight = total
        self.num_updates += 1

    def aggregated(self, tensor: str) -> bool:
        """Whether ``tensor`` is averaged; one that is not keeps the reference's values."""
        return True

    def finish(self, out: Path) -> float:
        if self._mean is None:
            raise ValueError("no updates were aggregated")
        # A scratch file in both tiers: sent on by the combiner, committed to the store
        # (which makes its own copy durable) by the reducer; no fsync on the round's path.
        mean = self._mean
        kept = {t.name: np.empty(int(np.prod(t.shape, dtype=np.int64)), dtype=t.dtype)
                for t in self._reference.tensors if t.name not in mean}  # fedper.py: the round's own values
        if kept:
            for spec, offset, values in iter_slices(self._reference_path, self._reference, SLICE_BYTES, reuse=True):
                if spec.name in kept:
                    kept[spec.name][offset:offset + values.size] = values
        write_model(out, {t.name: (mean if t.name in mean else kept)[t.name].reshape(t.shape)
                          for t in self._reference.tensors}, durable=False)
        return self.total_weight
