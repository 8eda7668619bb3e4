"""FedProx's proximal term for a client's training code, in one line.

FedProx (fedtier/aggregators/fedprox.py) has each client minimise its loss plus
``mu/2 * ||w - w_global||^2``, ``w_global`` being the model the round sent. The round's
``mu`` reaches the project as ``ctx.settings["mu"]`` (absent, or 0, means plain FedAvg).
Two forms, same mathematics:

* a gradient hook, the one line a project adds after loading the round's model, and
  which works with any training loop, ``keras.Model.fit`` on the torch backend included::

      add_proximal_term(model, ctx.settings.get("mu", 0.0))

  Each backward pass then adds ``mu * (w - w_global)``, the term's gradient, to every
  trainable weight's gradient. The loss it reports stays the data loss.

* the term itself, for a loop that wants it in its loss (and in the loss it reports)::

      start = global_snapshot(model)                       # once, before training
      loss = loss + proximal_term(model, start, mu)        # every step

torch is imported on first use, not at import time (the helpers never import a framework
until asked).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["ProximalHook", "add_proximal_term", "global_snapshot", "proximal_term", "trainable_tensors"]


def _check_mu(mu: float) -> float:
    mu = float(mu)
    if not mu >= 0 or mu == float("inf"):
        raise ValueError(f"mu must be a finite number >= 0, got {mu!r}")
    return mu


def trainable_tensors(model: Any) -> list["torch.Tensor"]:
    """The tensors training changes: an ``nn.Module``'s parameters that require grad, a Keras 3
    model's trainable variables (on the torch backend each holds a torch parameter), or a
    sequence of tensors as given."""
    import torch

    if isinstance(model, torch.nn.Module):
        return [p for p in model.parameters() if p.requires_grad]
    variables = getattr(model, "trainable_variables", None)
    if variables is not None:  # keras, without importing it
        tensors = [getattr(v, "value", v) for v in variables]
        if not all(isinstance(t, torch.Tensor) for t in tensors):
            raise TypeError("the proximal term needs keras on the torch backend (KERAS_BACKEND=torch)")
        return tensors
    tensors = list(model)
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError(f"expected an nn.Module, a keras Model or tensors, got {type(model).__name__}")
    return tensors


def global_snapshot(model: Any) -> list["torch.Tensor"]:
    """A copy of the model's trainable weights as they are now (the round's global model),
    detached: what the proximal term measures the distance from."""
    return [t.detach().clone() for t in trainable_tensors(model)]


def proximal_term(model: Any, global_params: Sequence["torch.Tensor"], mu: float) -> "torch.Tensor":
    """``mu/2 * sum ||w - w_global||^2`` over the trainable weights, differentiable in ``w``."""
    import torch

    mu = _check_mu(mu)
    tensors = trainable_tensors(model)
    if len(tensors) != len(global_params):
        raise ValueError(f"the model has {len(tensors)} trainable tensors, global_params {len(global_params)}")
    if not tensors:
        return torch.zeros(())
    total = sum(((w - g.to(w.device, w.dtype)) ** 2).sum() for w, g in zip(tensors, global_params))
    return 0.5 * mu * total


class ProximalHook:
    """The hooks ``add_proximal_term`` registered; ``remove()`` takes them off."""

    def __init__(self, mu: float, global_params: list["torch.Tensor"], handles: list[Any]) -> None:
        self.mu, self.global_params, self._handles = mu, global_params, handles

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def add_proximal_term(model: Any, mu: float) -> ProximalHook:
    """From now on every backward pass adds ``mu * (w - w_global)`` to each trainable
    weight's gradient, ``w_global`` being the weights at this call: training then
    minimises loss + ``mu/2 * ||w - w_global||^2``. Call it once, right after loading the
    round's model; ``mu`` 0 registers nothing (FedAvg). A loop that backpropagates several
    losses per optimiser step gets the term once per backward pass."""
    mu = _check_mu(mu)
    tensors = trainable_tensors(model)
    start = [t.detach().clone() for t in tensors]
    if mu == 0:
        return ProximalHook(mu, start, [])

    def hook_for(weight: "torch.Tensor", anchor: "torch.Tensor") -> Any:
        return lambda grad: grad + mu * (weight.detach() - anchor)

    return ProximalHook(mu, start, [w.register_hook(hook_for(w, g)) for w, g in zip(tensors, start)])
