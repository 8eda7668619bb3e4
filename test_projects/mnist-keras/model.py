"""The model: a Keras 3 Sequential CNN for 28x28 MNIST digits, on the torch backend.

Weights are exchanged through the ``keras`` helper named in ``fedn.yaml`` (a list of
arrays in ``model.weights`` order; the helper matches tensors by position, since
Keras' auto-generated names depend on how many models a process has built).
The backend must be chosen before keras is first imported, hence the
``setdefault`` at the top: the project ships no TensorFlow.
"""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402  (after the backend is chosen)

from fedtier.helpers import get_helper  # noqa: E402

#: Must match ``helper:`` in fedn.yaml: the combiner aggregates with the same helper.
HELPER_NAME = "keras"
NUM_CLASSES = 10
INPUT_SHAPE = (28, 28, 1)  # channels last, Keras' default


def build_model() -> keras.Model:
    """Return a fresh, untrained CNN (54k parameters), the same architecture as mnist-pytorch.

    Two 5x5 conv + 2x2 max-pool stages (28 -> 14 -> 7), a 64-unit dense layer and
    10 logits. Explicit layer names keep the weight names identical in every process
    (and so the seed file's bytes reproducible). Keras' default initialisers
    (Glorot uniform, zero biases) draw from its global seed:
    ``keras.utils.set_random_seed`` first makes the weights deterministic (seed.py).
    """
    return keras.Sequential(
        [
            keras.Input(shape=INPUT_SHAPE),
            keras.layers.Conv2D(8, 5, padding="same", activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(2, name="pool1"),
            keras.layers.Conv2D(16, 5, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(2, name="pool2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(64, activation="relu", name="dense"),
            keras.layers.Dense(NUM_CLASSES, name="logits"),
        ],
        name="mnist_cnn",
    )


def load_model(path: str) -> keras.Model:
    """Build the architecture and fill it with the weights stored at ``path``."""
    model = build_model()
    model.set_weights(get_helper(HELPER_NAME).load(path))
    return model


def save_model(model: keras.Model, path: str) -> None:
    """Write the model's weights at ``path`` in the helper's format."""
    get_helper(HELPER_NAME).save(model, path)
