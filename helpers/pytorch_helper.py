"""Helper for PyTorch: state_dicts of CPU tensors <-> neutral weights.

torch is imported on first conversion, not at import time, so a combiner that only
needs the aggregation arithmetic can use this helper without torch installed.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import Helper
from .format import ModelFormatError, Weights, dtype_code
from .proximal import add_proximal_term, global_snapshot, proximal_term  # FedProx's term for training code

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["PytorchHelper", "add_proximal_term", "global_snapshot", "proximal_term"]


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            "the 'pytorch' helper needs torch to convert models: pip install 'fedtier[torch]'"
        ) from exc
    return torch


def _tensor_to_numpy(torch: Any, name: str, tensor: Any, copy: bool) -> np.ndarray:
    if not isinstance(tensor, torch.Tensor):
        if isinstance(tensor, np.ndarray):
            return np.array(tensor, copy=True) if copy else tensor
        raise TypeError(f"tensor {name!r}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.layout != torch.strided or tensor.is_quantized:
        raise ModelFormatError(f"tensor {name!r}: sparse or quantized tensors cannot be serialized")
    if tensor.is_meta:
        raise ModelFormatError(f"tensor {name!r}: is on the meta device and has no data")
    t = tensor.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        import ml_dtypes  # numpy has no bfloat16; reinterpret the bits, never convert

        arr = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    else:
        try:
            arr = t.numpy()
        except TypeError as exc:  # complex32, float8, ... have no numpy equivalent
            raise ModelFormatError(f"tensor {name!r}: dtype {t.dtype} cannot be serialized") from exc
    try:
        dtype_code(arr.dtype)
    except ModelFormatError as exc:
        raise ModelFormatError(f"tensor {name!r}: {exc}") from None
    # A CPU tensor's numpy() aliases the live parameter; copy unless only the serializer reads it.
    return arr.copy() if copy else arr


class PytorchHelper(Helper):
    """Native form: ``OrderedDict[str, torch.Tensor]`` (a state_dict) of CPU tensors."""

    name = "pytorch"

    def _export(self, model: Any, copy: bool) -> Weights:
        torch = _torch()
        if isinstance(model, torch.nn.Module):
            state = model.state_dict()
        elif isinstance(model, Mapping):
            state = model
        else:
            raise TypeError(
                f"the pytorch helper takes an nn.Module or a state_dict, got {type(model).__name__}"
            )
        weights: Weights = {}
        for name, tensor in state.items():
            if not isinstance(name, str):
                raise TypeError(f"state_dict keys must be str, got {type(name).__name__} {name!r}")
            weights[name] = _tensor_to_numpy(torch, name, tensor, copy)
        return weights

    def to_weights(self, model: Any) -> Weights:
        return self._export(model, copy=True)

    def _weights_for_writing(self, model: Any) -> Weights:
        return self._export(model, copy=False)

    def from_weights(self, weights: Weights) -> "OrderedDict[str, torch.Tensor]":
        torch = _torch()
        state: OrderedDict[str, Any] = OrderedDict()
        for name, value in weights.items():
            arr = np.asarray(value)
            is_bf16 = arr.dtype.name == "bfloat16"
            dtype_code(arr.dtype)  # unsupported dtypes fail here with a clear message
            # A private, native-endian, C-contiguous copy: the tensor owns its memory, so
            # neither side can change the other and read-only input buffers are fine.
            native = arr.view(np.int16) if is_bf16 else arr
            native = np.array(native, dtype=native.dtype.newbyteorder("="), copy=True, order="C")
            tensor = torch.from_numpy(native)
            state[name] = tensor.view(torch.bfloat16) if is_bf16 else tensor
        return state
