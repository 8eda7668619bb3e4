"""Write the initial (seed) model that the first training round starts from.

    python seed.py OUT_PATH

Deterministic (keras.utils.set_random_seed(0), explicit layer names): every run
writes the same bytes, so the committed copy in ``seeds/`` can be checked against a
fresh one.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is first imported

import keras  # noqa: E402

from model import build_model, save_model  # noqa: E402

SEED = 0


def make_seed(path: str) -> None:
    """Build the model from a fixed seed and save it at ``path`` via the helper."""
    keras.utils.set_random_seed(SEED)
    save_model(build_model(), path)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python seed.py OUT_PATH")
    make_seed(sys.argv[1])
