"""The model: a small MLP for 8x8 digit images, plus load/save through the helper.

Weights are exchanged as a PyTorch ``state_dict`` serialised by the ``pytorch``
helper named in ``fedn.yaml``. Keeping load/save here means every entry point (and
seed.py) agrees on the format the combiner will aggregate.
"""
from __future__ import annotations

import torch
from torch import nn

from fedtier.helpers import get_helper

#: Must match ``helper:`` in fedn.yaml: the combiner aggregates with the same helper.
HELPER_NAME = "pytorch"

NUM_FEATURES = 64  # 8x8 pixels, flattened
NUM_CLASSES = 10
HIDDEN = 64


def build_model() -> nn.Module:
    """Return a fresh, untrained model.

    Initialisation draws from torch's global RNG, so ``torch.manual_seed(s)`` before
    the call makes it deterministic (seed.py relies on this). No dropout or batch
    norm: the model has no train/eval-mode differences and no running statistics,
    so its whole state is the parameters that FedAvg averages.
    """
    return nn.Sequential(
        nn.Linear(NUM_FEATURES, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, NUM_CLASSES),
    )


def load_model(path: str) -> nn.Module:
    """Build the architecture and fill it with the weights stored at ``path``."""
    model = build_model()
    model.load_state_dict(get_helper(HELPER_NAME).load(path))
    return model


def save_model(model: nn.Module, path: str) -> None:
    """Write the model's weights at ``path`` in the helper's format."""
    get_helper(HELPER_NAME).save(model.state_dict(), path)
