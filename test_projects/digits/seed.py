"""Write the initial (seed) model that the first training round starts from.

    python seed.py OUT_PATH [--seed N]

The seed is deterministic (torch.manual_seed(N), N = 0 unless --seed N) so every
run of an experiment starts from the same weights; another N, other weights.
"""
from __future__ import annotations

import torch

from fedtier.seed_args import DEFAULT_SEED, parse_seed_args
from model import build_model, save_model


def make_seed(path: str, seed: int = DEFAULT_SEED) -> None:
    """Build the model from ``seed`` and save it at ``path`` via the helper."""
    torch.manual_seed(seed)
    save_model(build_model(), path)


if __name__ == "__main__":
    args = parse_seed_args(description=__doc__)
    make_seed(args.out_path, args.seed)
