"""Data for the MNIST projects: the original IDX files, partitioned among the clients.

Nothing is downloaded and nothing is bundled: the four MNIST files (``train-images-
idx3-ubyte.gz`` and friends) are read from the directory the client is given:

    ctx.data_path (``fedtier client --data-path``, FEDN_DATA_PATH for command entry points)
    else $FEDN_DATA_PATH
    else ../shared/data/mnist next to the repository (the reference copy on this machine)

How the 60000 training images become client data (identical in every client, so the
shares are disjoint without any coordination):

    train set --(max_train: fixed-seed subset, optional)--> pool
    pool --fedtier.datatools.partition (task config "partition", default IID)--> client shares
    each share --80/20, fixed seed--> train / validation

The global test set is the t10k set (or its first ``max_test`` images); no client
trains on it. ``train_labels`` returns the pool's labels so the sandbox can show
every client's label histogram before the run (``labels:`` in fedn.yaml).

This module needs only numpy, so the sandbox can call ``train_labels`` without
importing the training framework.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fedtier.datatools.datasets import load_mnist, load_mnist_labels
from fedtier.datatools.partition import partition_from_config

#: The reference copy on this machine: <repo>/../shared/data/mnist.
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"
VAL_FRACTION = 0.2  # share of each client's partition held out for validation
SUBSET_SEED = 1234  # fixed: every client must draw the same max_train subset
MEAN, STD = 0.1307, 0.3081  # MNIST pixel statistics (of x/255): inputs are standardised

Arrays = tuple[np.ndarray, np.ndarray]


def data_dir(data_path: str | None) -> Path:
    """The directory holding the MNIST IDX files, by the precedence in the module docstring."""
    return Path(data_path or os.environ.get("FEDN_DATA_PATH") or DEFAULT_DATA_DIR).expanduser().resolve()


def _limit(config: Mapping[str, Any], key: str) -> int | None:
    """``max_train``/``max_test`` from the task config: a positive int, or absent/None for all."""
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"task config {key} must be a positive integer, got {value!r}")
    return value


def _pool_indices(num_images: int, max_train: int | None) -> np.ndarray:
    """Which training images form the federated pool: all, or a fixed random subset.

    A random subset (fixed seed, kept in file order) rather than the first images, so
    the pool is an unbiased sample whatever order the file is stored in.
    """
    if max_train is None or max_train >= num_images:
        return np.arange(num_images)
    return np.sort(np.random.default_rng(SUBSET_SEED).choice(num_images, size=max_train, replace=False))


@lru_cache(maxsize=2)
def _raw(directory: Path, split: str) -> Arrays:
    """Read a split once per process (every task needs it); read-only because it is shared."""
    images, labels = load_mnist(directory, split)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _standardise(images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) / 255.0 - MEAN) / STD).astype(np.float32)


def train_labels(data_path: str | None, config: Mapping[str, Any]) -> np.ndarray:
    """Labels of the pool the clients partition (``labels:`` entry of fedn.yaml).

    Reads only the labels file, so the sandbox pays no image decompression for it.
    """
    labels = load_mnist_labels(data_dir(data_path), "train")
    return labels[_pool_indices(len(labels), _limit(config, "max_train"))].astype(np.int64)


def load_test_set(data_path: str | None, config: Mapping[str, Any]) -> Arrays:
    """The global test set ``(x float32 [N, 28, 28], y int64 [N])``: t10k, or its first max_test."""
    return _test_set(data_dir(data_path), _limit(config, "max_test"))


@lru_cache(maxsize=2)
def _test_set(directory: Path, max_test: int | None) -> Arrays:
    images, labels = _raw(directory, "test")
    x, y = _standardise(images[:max_test]), labels[:max_test].astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_partition(data_path: str | None, index: int, num_partitions: int,
                   config: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Client ``index``'s share as ``(x_train, y_train, x_val, y_val)``.

    ``config`` is the task config: ``max_train`` and ``partition`` (``{"scheme": ...,
    params}``, default IID) must be the same for every client of a session, which holds
    because the reducer sends the same task config to all of them.
    """
    if not 0 <= index < num_partitions:
        raise ValueError(f"partition index {index} out of range for {num_partitions} partitions")
    key = json.dumps({"max_train": _limit(config, "max_train"),
                      "partition": config.get("partition", {"scheme": "iid"})}, sort_keys=True)
    return _partition(data_dir(data_path), index, num_partitions, key)


@lru_cache(maxsize=4)
def _partition(directory: Path, index: int, num_partitions: int,
               key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    settings = json.loads(key)  # hashable form of (max_train, partition) for the cache
    images, labels = _raw(directory, "train")
    pool = _pool_indices(len(labels), settings["max_train"])
    part = partition_from_config(labels[pool], num_partitions, settings["partition"])[index]
    if len(part) < 2:
        raise ValueError(
            f"partition {index} of {num_partitions} has {len(part)} sample(s); need >= 2 to split "
            f"train/validation (raise min_size in the partition config, or use fewer clients)"
        )
    # Stable across rounds: a client never trains on samples it validated on earlier.
    part = pool[np.random.default_rng([SUBSET_SEED, index]).permutation(part)]
    n_val = min(max(1, round(len(part) * VAL_FRACTION)), len(part) - 1)
    val, train = np.sort(part[:n_val]), np.sort(part[n_val:])
    out = (_standardise(images[train]), labels[train].astype(np.int64),
           _standardise(images[val]), labels[val].astype(np.int64))
    for arr in out:
        arr.setflags(write=False)
    return out
