"""Write the initial (seed) model that the first training round starts from.

    python seed.py OUT_PATH [--seed N]

Deterministic (keras.utils.set_random_seed(N), N = 0 unless --seed N, explicit
layer names): every run writes the same bytes, so the committed copy in ``seeds/`` can
be checked against a fresh one; another N, other weights.
"""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is first imported

import keras  # noqa: E402

from fedtier.seed_args import DEFAULT_SEED, parse_seed_args  # noqa: E402
from model import build_model, save_model  # noqa: E402


def make_seed(path: str, seed: int = DEFAULT_SEED) -> None:
    """Build the model from ``seed`` and save it at ``path`` via the helper."""
    keras.utils.set_random_seed(seed)
    save_model(build_model(), path)


if __name__ == "__main__":
    args = parse_seed_args(description=__doc__)
    make_seed(args.out_path, args.seed)
