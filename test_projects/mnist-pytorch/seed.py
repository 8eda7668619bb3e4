"""Write the initial (seed) model that the first training round starts from.

    python seed.py OUT_PATH

Deterministic (torch.manual_seed(0) on CPU): every run writes the same bytes, so
the committed copy in ``seeds/`` can be checked against a fresh one.
"""
from __future__ import annotations

import sys

import torch

from model import build_model, save_model

SEED = 0


def make_seed(path: str) -> None:
    """Build the model from a fixed seed and save it at ``path`` via the helper."""
    torch.manual_seed(SEED)
    save_model(build_model(), path)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python seed.py OUT_PATH")
    make_seed(sys.argv[1])
