"""Helper for Keras 3 running on the torch backend (the project ships no TensorFlow).

Keras weights are positional: ``model.set_weights`` takes a list in ``model.weights``
order. Names are taken from variable paths for readability, but Keras derives them
from process-global auto-naming ("sequential_1/dense_3/kernel" if other models were
built first), so this helper matches tensors by position (``positional_names``).

keras itself is imported only to convert a Model; lists of arrays and the
aggregation arithmetic work without it, so combiners need not install keras.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import Helper
from .format import ModelFormatError, Weights, dtype_code
from .proximal import add_proximal_term  # FedProx's term: works with model.fit on the torch backend
from .pytorch_helper import _tensor_to_numpy

__all__ = ["KerasHelper", "add_proximal_term"]

BACKEND = "torch"

# Must happen before anything imports keras: the backend is fixed at first import.
os.environ.setdefault("KERAS_BACKEND", BACKEND)


def _check_backend(keras: Any) -> None:
    backend = keras.backend.backend()
    if backend != BACKEND:
        raise RuntimeError(
            f"keras is running on the {backend!r} backend but fedtier needs {BACKEND!r}: set "
            f"KERAS_BACKEND={BACKEND} before keras is first imported"
        )


def _keras() -> Any:
    try:
        import keras
    except ImportError as exc:
        raise ImportError("the 'keras' helper needs keras 3: pip install 'fedtier[keras]'") from exc
    _check_backend(keras)
    return keras


def _unique_names(paths: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        name = path or "weight"
        if name in seen:
            seen[name] += 1
            candidate = f"{name}#{seen[name]}"
            while candidate in seen:
                seen[name] += 1
                candidate = f"{name}#{seen[name]}"
            name = candidate
        seen[name] = 0
        names.append(name)
    return names


def _variable_to_numpy(name: str, variable: Any) -> np.ndarray:
    # On the torch backend a variable's value is a torch tensor: reuse the pytorch
    # helper's bit-exact copy (keras' own convert_to_numpy detours bf16 via float32).
    value = variable.value
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return _tensor_to_numpy(torch, name, value, copy=True)
    return np.array(variable.numpy(), copy=True)


class KerasHelper(Helper):
    """Native form: ``list[np.ndarray]`` for ``model.set_weights``."""

    name = "keras"
    positional_names = True

    def __init__(self) -> None:
        # If the application already imported keras with another backend, say so now
        # rather than on the first save after a training round.
        if "keras" in sys.modules:
            _check_backend(sys.modules["keras"])

    def to_weights(self, model: Any) -> Weights:
        if isinstance(model, (list, tuple)):
            arrays = [self._owned(str(i), a) for i, a in enumerate(model)]
            names = [str(i) for i in range(len(arrays))]
        elif hasattr(model, "weights") and hasattr(model, "set_weights"):
            keras = _keras()
            if not isinstance(model, keras.layers.Layer):
                raise TypeError(f"expected a keras Model or Layer, got {type(model).__name__}")
            variables = list(model.weights)
            if not variables:
                raise ValueError("the keras model has no weights yet; build it (or call it once) first")
            names = _unique_names([getattr(v, "path", None) or v.name for v in variables])
            arrays = [_variable_to_numpy(name, v) for name, v in zip(names, variables)]
        else:
            raise TypeError(
                f"the keras helper takes a keras Model or a list of arrays, got {type(model).__name__}"
            )
        weights: Weights = {}
        for name, arr in zip(names, arrays):
            try:
                dtype_code(arr.dtype)
            except ModelFormatError as exc:
                raise ModelFormatError(f"weight {name!r}: {exc}") from None
            weights[name] = arr
        return weights

    @staticmethod
    def _owned(name: str, value: Any) -> np.ndarray:
        if not isinstance(value, (np.ndarray, np.generic)):
            raise TypeError(f"weight {name!r}: expected a numpy array, got {type(value).__name__}")
        return np.array(value, copy=True, order="C")

    def from_weights(self, weights: Weights) -> list[np.ndarray]:
        return [np.array(v, copy=True) for v in weights.values()]
