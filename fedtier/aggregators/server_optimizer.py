"""What the server optimisers share: FedAvg's mean, then a step on the pseudo-gradient.

Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), treat a round's change of
the global model as a gradient: with ``x`` the round's model and ``mean`` FedAvg's
weighted mean of the updates, the pseudo-gradient is ``delta = mean - x`` (the way the
clients moved), and the server takes an optimiser step along it, with state kept across
the rounds of a session (a momentum; Adam's first and second moments). FedAvg itself is
the step ``x + delta``. The algorithms are one module each (fedavgm.py, fedadam.py,
fedyogi.py, fedadagrad.py); this is the machinery around their step.

The mean is FedAvg's own streaming fold (this class is a FedAvg): one model-sized
buffer whatever the number of updates. Each moment is another model-sized array, of
float32 (float64 for float64 tensors), kept by the instance between rounds and written
with ``save_state`` in the model format, so the reducer stores it with the model it
produced (reducer/strategy_state.py) and a restarted reducer continues from it.

Only float tensors take the step. Integer and bool tensors (BatchNorm's
``num_batches_tracked``, masks) are counters or flags, not weights: they take FedAvg's
plain mean and have no moments.

Reducer tier only: a combiner's model is one part of the round, and the step must be
taken once, on the global model. At the combiners it would be applied to each part
and then again by the reducer, and its state would follow one combiner's clients.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fedtier.aggregators.base import REDUCER, RoundContext, StrategyError, Update
from fedtier.aggregators.fedavg import SLICE_BYTES, FedAvg
from fedtier.helpers.base import Helper
from fedtier.helpers.format import (ModelFormatError, ModelHeader, TensorSpec, iter_slices, read_header, read_model,
                                    write_model)

#: what a state file says it is (its metadata ``format``)
STATE_FORMAT = "fedtier-strategy-state/1"
_FLOAT_CODES = frozenset({"F16", "BF16", "F32", "F64"})


def is_float(spec: TensorSpec) -> bool:
    """A tensor the optimiser steps (a weight); the others take the plain mean."""
    return spec.dtype_code in _FLOAT_CODES


def state_dtype(spec: TensorSpec) -> np.dtype:
    """The moments' precision: float32, float64 for float64 tensors (half precision
    moments would lose the small squared pseudo-gradients Adam divides by)."""
    return np.dtype(np.float64) if spec.dtype_code == "F64" else np.dtype(np.float32)


class ServerOptimizer(FedAvg):
    """FedAvg's weighted mean, then ``step`` on each slice of the float tensors."""

    tiers = (REDUCER,)
    stateful = True
    #: the names of the state arrays, one model-sized array each
    moments: ClassVar[tuple[str, ...]] = ()

    def __init__(self, helper: Helper, **params: Any) -> None:
        super().__init__(helper, **params)
        self.steps = 0  # server steps taken in this session
        self._state: dict[str, dict[str, np.ndarray]] = {}  # moment -> tensor name -> flat array

    # ---- the algorithm
    def initial(self, moment: str) -> float:
        """A moment's value before the first step."""
        return 0.0

    def step(self, x: np.ndarray, delta: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
        """The new values of a slice: ``x`` the round's model, ``delta`` the pseudo-gradient
        (both in the moments' dtype; ``delta`` may be overwritten), ``state`` the slices of
        the moments, updated in place."""
        raise NotImplementedError

    # ---- the round
    def start(self, reference: Path, context: RoundContext | None = None) -> None:
        super().start(reference, context)
        self._reference_path = Path(reference)
        if self._state:
            self._check_state(self._reference)

    def aggregate_one(self, update: Update, out: Path) -> float | None:
        """No shortcut: the step moves the model even when one combiner sent it."""
        return None

    def finish(self, out: Path) -> float:
        if self._mean is None:
            raise ValueError("no updates were aggregated")
        header = self._reference
        if not self._state:
            self._state = {moment: {spec.name: np.full(spec.size, self.initial(moment), dtype=state_dtype(spec))
                                    for spec in header.tensors if is_float(spec)}
                           for moment in self.moments}
        for spec, offset, values in iter_slices(self._reference_path, header, SLICE_BYTES, reuse=True):
            if not is_float(spec):
                continue  # counters and flags: FedAvg's mean as it is
            end = offset + values.size
            mean = self._mean[spec.name][offset:end]
            dtype = state_dtype(spec)
            x = values.astype(dtype, copy=False)
            delta = mean.astype(dtype)  # a copy: the new values are written back into ``mean``
            delta -= x
            state = {moment: arrays[spec.name][offset:end] for moment, arrays in self._state.items()}
            mean[...] = self.step(x, delta, state)
        self.steps += 1
        write_model(out, {t.name: self._mean[t.name].reshape(t.shape) for t in header.tensors}, durable=False)
        return self.total_weight

    # ---- state across rounds
    def save_state(self, path: Path) -> bool:
        """The moments as a model file (tensor ``<moment>/<name>``), the step count and the
        strategy in its metadata; False before the first step."""
        if not self.steps:
            return False
        specs = {spec.name: spec for spec in self._reference.tensors}
        tensors = {f"{moment}/{name}": flat.reshape(specs[name].shape)
                   for moment, arrays in self._state.items() for name, flat in arrays.items()}
        write_model(path, tensors, metadata={"format": STATE_FORMAT, "strategy": self.name,
                                             "steps": str(self.steps)}, durable=False)
        return True

    def load_state(self, path: Path) -> None:
        """Continue from a state ``save_state`` wrote. It must be this strategy's and hold
        every moment for the same tensors; ``start`` then checks it against the model."""
        try:
            header = read_header(path)
            meta = header.metadata
            if meta.get("format") != STATE_FORMAT or meta.get("strategy") != self.name:
                raise StrategyError(f"{path.name} is not a state of strategy {self.name!r} (it says format "
                                    f"{meta.get('format')!r}, strategy {meta.get('strategy')!r})")
            steps = meta.get("steps", "")
            if not steps.isdigit() or int(steps) < 1:
                raise StrategyError(f"the state of {self.name!r} has no step count (steps {steps!r})")
            weights = read_model(path, header)
        except ModelFormatError as exc:
            raise StrategyError(f"the stored state of {self.name!r} cannot be read: {exc}") from None
        state: dict[str, dict[str, np.ndarray]] = {moment: {} for moment in self.moments}
        for key, array in weights.items():
            moment, _, name = key.partition("/")
            if moment not in state or not name:
                raise StrategyError(f"the state of {self.name!r} holds {key!r}, not one of its moments "
                                    f"({', '.join(self.moments)}) of a tensor")
            if array.dtype not in (np.float32, np.float64) or not np.isfinite(array).all():
                raise StrategyError(f"the state of {self.name!r}: {key!r} is not finite float32/float64 values")
            state[moment][name] = array.reshape(-1)
        names = {moment: set(arrays) for moment, arrays in state.items()}
        if len({frozenset(n) for n in names.values()}) != 1:
            raise StrategyError(f"the state of {self.name!r} does not hold every moment for the same tensors")
        self._state, self.steps = state, int(steps)

    def _check_state(self, header: ModelHeader) -> None:
        """The state is for this model: one array of each moment per float tensor, of its
        size and precision; a StrategyError naming the first difference otherwise."""
        expected = {spec.name: (spec.size, state_dtype(spec)) for spec in header.tensors if is_float(spec)}
        for moment, arrays in self._state.items():
            got = {name: (array.size, array.dtype) for name, array in arrays.items()}
            if got != expected:
                differ = sorted(set(got) ^ set(expected)) or sorted(n for n in got if got[n] != expected[n])
                raise StrategyError(f"the state of {self.name!r} does not match the model: tensor "
                                    f"{differ[0]!r} (moment {moment!r}) differs in name, size or dtype")


__all__ = ["STATE_FORMAT", "ServerOptimizer", "is_float", "state_dtype"]
