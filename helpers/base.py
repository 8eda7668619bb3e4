"""The Helper interface: one per ML framework.

A helper is the only code that knows a framework's object model. Everything that
crosses a process boundary is the neutral ``Weights`` dict serialized by
``format.py``, so combiners can aggregate models of any framework with numpy
alone (fedtier/aggregators/arithmetic.py). The checks here that decide whether two
models line up never touch the framework, and concrete helpers import their framework
lazily: a combiner can check a PyTorch project's updates without torch installed.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from .format import (
    ModelFormatError,
    ModelHeader,
    Weights,
    dtype_code,
    dumps,
    iter_slices,
    loads,
    read_header,
    read_model,
    write_model,
)

__all__ = ["Helper", "IncompatibleModelError"]


class IncompatibleModelError(ValueError):
    """An update cannot be combined with the reference model (structure or values)."""


def _is_float(dtype: np.dtype) -> bool:
    # bfloat16 (ml_dtypes) has kind 'V'; it is the only non-native float we accept.
    return dtype.kind == "f" or dtype.name == "bfloat16"


class Helper(ABC):
    """Converts one framework's models to and from the neutral ``Weights`` form.

    Subclasses implement ``to_weights``/``from_weights`` and must round-trip exactly:
    same names, order, dtypes, shapes and bits. Everything else is shared.
    """

    name: ClassVar[str]
    #: When True, tensors are matched by position and names are only labels. Set by
    #: frameworks (Keras) whose weight names depend on process-global auto-naming, so the
    #: same architecture built in two processes may carry different names.
    positional_names: ClassVar[bool] = False

    # ----------------------------------------------------------- framework conversion

    @abstractmethod
    def to_weights(self, model: Any) -> Weights:
        """Framework object (or its native weights) -> owned neutral dict, in model order."""

    @abstractmethod
    def from_weights(self, weights: Weights) -> Any:
        """Neutral dict -> framework-native weights that share no memory with ``weights``."""

    def _weights_for_writing(self, model: Any) -> Weights:
        """Weights only read once by the serializer; helpers may skip defensive copies."""
        return self.to_weights(model)

    # ----------------------------------------------------------- persistence

    def save(self, model: Any, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None) -> None:
        write_model(path, self._weights_for_writing(model), metadata)

    def load(self, path: str | os.PathLike[str]) -> Any:
        return self.from_weights(read_model(path))

    def to_bytes(self, model: Any, metadata: Mapping[str, str] | None = None) -> bytes:
        return dumps(self._weights_for_writing(model), metadata)

    def from_bytes(self, data: bytes | bytearray | memoryview) -> Any:
        return self.from_weights(loads(data))

    def validate_file(self, path: str | os.PathLike[str], require_finite: bool = True) -> ModelHeader:
        """Reject a seed/model before it enters a federation, with a message for the uploader.

        Checks the structure, that values are finite (a NaN seed silently poisons every
        round), and that this helper can convert it to its framework. All failures are
        ModelFormatError. Conversion loads the whole model once; it is skipped when the
        framework is not installed in this process.
        """
        header = read_header(path)
        if not header.tensors:
            raise ModelFormatError("model contains no tensors")
        if require_finite:
            for spec, offset, values in iter_slices(path, header):
                try:
                    self.check_finite(spec.name, values, offset)
                except IncompatibleModelError as exc:
                    raise ModelFormatError(str(exc)) from None
        try:
            self.from_weights(read_model(path, header))
        except ModelFormatError:
            raise
        except ImportError:
            # The framework is not installed here (a reducer need not have torch). Every
            # dtype the format accepts maps to every shipped framework, so the checks
            # above are what conversion would have verified; don't blame the file.
            pass
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ModelFormatError(f"model cannot be converted by the {self.name!r} helper: {exc}") from exc
        return header

    # ----------------------------------------------------------- aggregation arithmetic

    def check_compatible(self, reference: ModelHeader, candidate: ModelHeader) -> None:
        """Refuse to average tensors that do not line up, naming the first difference."""
        ref, cand = reference.tensors, candidate.tensors
        for i, (r, c) in enumerate(zip(ref, cand)):
            if r.name != c.name and not self.positional_names:
                raise IncompatibleModelError(
                    f"tensor #{i}: reference has {r.name!r} but update has {c.name!r}"
                )
            label = f"tensor #{i} {r.name!r}" if self.positional_names else f"tensor {r.name!r}"
            if r.dtype != c.dtype:
                raise IncompatibleModelError(
                    f"{label}: update dtype {dtype_code(c.dtype)} does not match reference {dtype_code(r.dtype)}"
                )
            if r.shape != c.shape:
                raise IncompatibleModelError(
                    f"{label}: update shape {list(c.shape)} does not match reference {list(r.shape)}"
                )
        if len(ref) != len(cand):
            if len(ref) > len(cand):
                detail = f"first missing: {ref[len(cand)].name!r}"
            else:
                detail = f"first extra: {cand[len(ref)].name!r}"
            raise IncompatibleModelError(
                f"update has {len(cand)} tensors but reference has {len(ref)}; {detail}"
            )

    def check_finite(self, name: str, values: np.ndarray, offset: int = 0) -> None:
        """Reject NaN/inf so one diverged client cannot poison the aggregate.

        ``offset`` is the slice's element offset within the tensor, so the message can
        point at the absolute element. Integer and bool tensors are always finite.
        """
        if not _is_float(values.dtype):
            return
        finite = np.isfinite(values)
        if finite.all():
            return
        bad = ~finite
        nan = int(np.count_nonzero(np.isnan(values)))
        inf = int(np.count_nonzero(bad)) - nan
        first = int(np.flatnonzero(bad.reshape(-1))[0]) + offset
        raise self.non_finite_error(name, nan, inf, first)

    @staticmethod
    def non_finite_error(name: str, nan: int, inf: int, first: int) -> IncompatibleModelError:
        """One wording for a diverged tensor, whether it was checked whole or in pieces."""
        return IncompatibleModelError(
            f"tensor {name!r} contains {nan} NaN and {inf} inf values (first at element {first})"
        )
