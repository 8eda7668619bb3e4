"""Framework helpers: the neutral weights form, its file format, and aggregation arithmetic.

Importing this package never imports torch or keras; combiners run without them.
"""
from __future__ import annotations

import importlib

from .base import Helper, IncompatibleModelError
from .format import ModelFormatError, ModelHeader, TensorSpec, Weights

__all__ = [
    "get_helper",
    "known_helpers",
    "Helper",
    "IncompatibleModelError",
    "ModelFormatError",
    "ModelHeader",
    "TensorSpec",
    "Weights",
]

# name -> (module, class). Aliases point at the same entry.
_HELPERS: dict[str, tuple[str, str]] = {
    "numpy": ("numpy_helper", "NumpyHelper"),
    "pytorch": ("pytorch_helper", "PytorchHelper"),
    "torch": ("pytorch_helper", "PytorchHelper"),
    "keras": ("keras_helper", "KerasHelper"),
}


def known_helpers() -> list[str]:
    return sorted(_HELPERS)


def get_helper(name: str) -> Helper:
    """Resolve a helper from configuration; the module is imported only when asked for."""
    key = name.strip().lower() if isinstance(name, str) else name
    try:
        module_name, class_name = _HELPERS[key]
    except (KeyError, TypeError):
        raise ValueError(f"unknown helper {name!r}; known helpers: {', '.join(known_helpers())}") from None
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)()
