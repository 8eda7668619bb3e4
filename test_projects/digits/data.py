"""Data for the digits project: scikit-learn's bundled 8x8 handwritten digits.

The dataset (1797 images) ships with scikit-learn, so nothing is downloaded and
every simulated client can derive its share from the same source:

    all digits --(20%, stratified)--> global test set   (load_test_set)
               \\-(80%)-------------> federated pool --IID--> client partitions
                                                   each --80/20--> train / val

* The global test set is never given to any client; it measures the *global*
  model (evaluate_model_file) the same way in every run.
* Each client's validation split is held out from its own training, as it would
  be on a real client that only sees its own data.

A real project would instead read the client's private data from
``ctx.data_path``; for this bundled dataset that path is unused.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from fedtier.partition import partition_indices

TEST_FRACTION = 0.2  # share of all digits held out as the global test set
VAL_FRACTION = 0.2  # share of each client's partition held out for validation
SPLIT_SEED = 1234  # fixed: the global split must be identical for every client/run

Arrays = tuple[np.ndarray, np.ndarray]


@lru_cache(maxsize=1)
def _global_split() -> tuple[Arrays, Arrays]:
    """Load once per process and split into (pool, test); cached because every task calls it."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # pixel values are 0..16 -> [0, 1]
    y = digits.target.astype(np.int64)
    x_pool, x_test, y_pool, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    for arr in (x_pool, x_test, y_pool, y_test):
        arr.setflags(write=False)  # shared through the cache: guard against in-place edits
    return (x_pool, y_pool), (x_test, y_test)


def load_test_set() -> Arrays:
    """The global held-out test set ``(x, y)``; no client trains or validates on it."""
    return _global_split()[1]


def train_labels(data_path: str | None = None, config: Mapping[str, Any] | None = None) -> np.ndarray:
    """Labels of the federated pool, the array the clients partition (``labels:`` in fedn.yaml).

    ``fedtier sandbox`` calls it to show each client's label histogram before a run.
    Both arguments are unused: the data is bundled and the pool never changes.
    """
    return _global_split()[0][1].copy()


def load_partition(
    index: int, num_partitions: int, seed: int = 0, scheme: str = "iid", **params: object
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Client ``index``'s share of the pool as ``(x_train, y_train, x_val, y_val)``.

    ``seed``/``scheme``/``params`` go to ``fedtier.partition.partition_indices`` so
    all clients of one experiment must use the same values to get disjoint shares.
    The train/val split of the share is seeded by ``(seed, index)`` so it is stable
    across rounds: a client never trains on samples it validated on earlier.
    """
    if not 0 <= index < num_partitions:
        raise ValueError(f"partition index {index} out of range for {num_partitions} partitions")
    (x_pool, y_pool), _ = _global_split()
    part = partition_indices(y_pool, num_partitions, scheme=scheme, seed=seed, **params)[index]
    if len(part) < 2:
        raise ValueError(
            f"partition {index} has {len(part)} sample(s); need >= 2 to split train/val "
            f"(too many partitions for {len(y_pool)} pool samples?)"
        )
    part = np.random.default_rng([seed, index]).permutation(part)
    n_val = min(max(1, round(len(part) * VAL_FRACTION)), len(part) - 1)
    val, train = part[:n_val], part[n_val:]
    return x_pool[train], y_pool[train], x_pool[val], y_pool[val]
