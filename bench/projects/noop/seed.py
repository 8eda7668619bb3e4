"""Write the benchmark's seed model: float32 tensors with PARAMS values in all.

    python seed.py OUT_PATH [PARAMS]

PARAMS defaults to $FEDTIER_BENCH_PARAMS or 1,000,000. The values are deterministic
(seeded) so every run moves the same bytes.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from fedtier.helpers.format import write_model

TENSORS = 8  # a few tensors, like a small network's layers


def make_weights(params: int, tensors: int = TENSORS) -> dict[str, np.ndarray]:
    if params < 1:
        raise ValueError(f"params must be positive, got {params}")
    rng = np.random.default_rng(0)
    tensors = max(1, min(tensors, params))
    sizes = [params // tensors] * tensors
    sizes[-1] += params - sum(sizes)
    return {f"layer{i}.weight": rng.standard_normal(n, dtype=np.float32) for i, n in enumerate(sizes)}


def make_seed(path: str, params: int) -> None:
    write_model(path, make_weights(params))


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python seed.py OUT_PATH [PARAMS]")
    count = int(sys.argv[2]) if len(sys.argv) == 3 else int(os.environ.get("FEDTIER_BENCH_PARAMS", "1000000"))
    make_seed(sys.argv[1], count)
