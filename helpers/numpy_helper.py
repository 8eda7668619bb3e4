"""Helper for models that are already numpy arrays (scikit-learn coefficients, JAX
pytrees flattened by the user, tests). It is also the reference implementation of
the Helper contract, since the neutral form *is* its native form."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .base import Helper
from .format import Weights, dtype_code, loads, read_model

__all__ = ["NumpyHelper"]


def _owned(name: str, value: Any) -> np.ndarray:
    if not isinstance(value, (np.ndarray, np.generic)):
        raise TypeError(f"tensor {name!r}: expected a numpy array, got {type(value).__name__}")
    arr = np.array(value, copy=True, order="C")
    dtype_code(arr.dtype)  # reject object/complex/string arrays with a clear error now
    return arr


class NumpyHelper(Helper):
    """Native form: ``dict[str, np.ndarray]``; a list/tuple is named "0", "1", ..."""

    name = "numpy"

    def to_weights(self, model: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> Weights:
        if isinstance(model, Mapping):
            items = list(model.items())
        elif isinstance(model, (list, tuple)):
            items = [(str(i), v) for i, v in enumerate(model)]
        else:
            raise TypeError(
                f"the numpy helper takes a dict of arrays or a list of arrays, got {type(model).__name__}"
            )
        for key, _ in items:
            if not isinstance(key, str):
                raise TypeError(f"tensor names must be str, got {type(key).__name__} {key!r}")
        return {key: _owned(key, value) for key, value in items}

    def _weights_for_writing(self, model: Any) -> Weights:
        # The serializer only reads, so skip the defensive copy to_weights makes.
        if isinstance(model, (list, tuple)):
            return {str(i): v for i, v in enumerate(model)}
        if isinstance(model, Mapping):
            return dict(model)
        return self.to_weights(model)

    def from_weights(self, weights: Weights) -> dict[str, np.ndarray]:
        return {name: np.array(value, copy=True) for name, value in weights.items()}

    # Freshly parsed arrays are already owned by nobody else: no second copy.
    def load(self, path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
        return read_model(path)

    def from_bytes(self, data: bytes | bytearray | memoryview) -> dict[str, np.ndarray]:
        return loads(data)
