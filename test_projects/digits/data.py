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

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fedtier.datatools.partition import partition_indices

TEST_FRACTION = 0.2  # share of all digits held out as the global test set
VAL_FRACTION = 0.2  # share of each client's partition held out for validation
SPLIT_SEED = 1234  # fixed: the global split must be identical for every client/run

Arrays = tuple[np.ndarray, np.ndarray]


def _bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 digits as ``(pixels 0..16, labels)``, read from the CSV file scikit-learn ships.

    This is the file ``sklearn.datasets.load_digits`` reads. It is read directly because
    importing scikit-learn costs every client process about 2.5 s of CPU at start-up, more
    than training this model for several rounds; only the package's location is looked
    up (``find_spec`` does not import it).
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the digits project needs scikit-learn installed (its bundled dataset)")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise RuntimeError(f"scikit-learn's digits data is missing: {path}")
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    if table.shape != (1797, 65):
        raise RuntimeError(f"{path}: expected 1797 rows of 64 pixels and a label, got shape {table.shape}")
    return table[:, :64], table[:, 64].astype(np.int64)


def _stratified_test_mask(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded, stratified hold-out of ``fraction`` (1/k): shuffle, sort by label (stably),
    take every k-th sample.

    Every class gives up the same share (to within one sample), so the test set has the
    pool's label mix; the same seed gives the same split in every process.
    """
    step = round(1 / fraction)
    if not 0 < fraction < 1 or abs(step * fraction - 1) > 1e-9:
        raise ValueError(f"the test fraction must be 1/k for a whole k, got {fraction}")
    order = np.random.default_rng(seed).permutation(len(y))
    order = order[np.argsort(y[order], kind="stable")]
    mask = np.zeros(len(y), dtype=bool)
    mask[order[::step]] = True
    return mask


@lru_cache(maxsize=1)
def _global_split() -> tuple[Arrays, Arrays]:
    """Load once per process and split into (pool, test); cached because every task calls it."""
    pixels, labels = _bundled_digits()
    x = (pixels / 16.0).astype(np.float32)  # pixel values are 0..16 -> [0, 1]
    test = _stratified_test_mask(labels, TEST_FRACTION, SPLIT_SEED)
    x_pool, x_test, y_pool, y_test = x[~test], x[test], labels[~test], labels[test]
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

    ``seed``/``scheme``/``params`` go to ``fedtier.datatools.partition.partition_indices`` so
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
