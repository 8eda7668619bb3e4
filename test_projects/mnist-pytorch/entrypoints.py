"""In-process entry points for the mnist-pytorch project (see ``entry_points`` in fedn.yaml).

The client imports this module and calls:

    train(in_model_path, out_model_path, ctx) -> {"num_examples": int, "train_loss": float, ...}
    validate(in_model_path, ctx)              -> {"accuracy", "loss", "num_examples",
                                                  "test_accuracy", "test_loss"}

``ctx`` is a ``fedtier.client.context.TaskContext``: where the MNIST files are
(``data_path``), which partition this client holds, the round id, and the round's
``config`` (task settings; see DEFAULTS and data.py for the keys understood here).
train.py / validate.py wrap the same functions as FEDn-style commands.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import nn

from data import load_partition, load_test_set
from fedtier.client.attack import flip_labels_for
from fedtier.client.context import TaskContext
from fedtier.datatools.heterogeneity import client_view_for, task_metrics_for
from fedtier.helpers.pytorch_helper import add_proximal_term
from model import load_model, save_model

#: Hyperparameters used when the task config does not set them. Chosen so that FedAvg
#: over 5 IID clients sharing 6000 training images ({"max_train": 6000}, 960 training
#: images each) reaches ~0.94 global test accuracy after 1 round and ~0.965 after 2
#: (the target is >= 0.9), for ~1.5 s of one CPU thread per client and round. Fewer
#: local steps fall short: 2 epochs at batch 32 reach only ~0.90 after 2 rounds, and a
#: larger learning rate (0.05) makes round 1's average poor (~0.5) because the
#: clients' models drift apart. With the full dataset (9600 images per client) one
#: epoch per round is plenty (bench/mnist_full.py).
DEFAULTS: dict[str, Any] = {
    "epochs": 5,
    "learning_rate": 0.01,
    "batch_size": 16,
}
MOMENTUM = 0.9
EVAL_BATCH = 1000  # bounds memory when scoring the 10000-image test set


def _task_seed(ctx: TaskContext) -> int:
    """A seed fixed for a (round, client) pair but different between them.

    Re-running a task reproduces it exactly while clients (and rounds) shuffle
    differently. hashlib rather than hash(): str hashes are salted per process.
    """
    key = f"{ctx.round_id}|{ctx.client_name}|{ctx.partition_index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def _client_data(ctx: TaskContext) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return load_partition(ctx.data_path, ctx.partition_index, ctx.num_partitions, ctx.config)


def _as_images(x: np.ndarray) -> torch.Tensor:
    """[N, 28, 28] float32 -> [N, 1, 28, 28] tensor; copies, the cached arrays are read-only."""
    return torch.tensor(x).unsqueeze(1)


def _metrics(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(accuracy, mean cross-entropy, predicted labels) of ``model`` on ``(x, y)``, in batches."""
    model.eval()
    correct, loss_sum, predicted = 0, 0.0, []
    with torch.no_grad():
        for start in range(0, len(y), EVAL_BATCH):
            logits = model(_as_images(x[start:start + EVAL_BATCH]))
            target = torch.tensor(y[start:start + EVAL_BATCH])
            loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum").item()
            predicted.append(logits.argmax(dim=1))
            correct += int((predicted[-1] == target).sum().item())
    return correct / len(y), loss_sum / len(y), torch.cat(predicted).numpy()


class _SGDMomentum:
    """SGD with momentum, the same update as ``torch.optim.SGD(lr, momentum)``.

    Written out because any ``torch.optim`` optimizer imports ``torch._dynamo`` on
    first use, which costs ~2.5 s of CPU per process: with five clients starting on
    two cores that is longer than a training round here.
    """

    def __init__(self, model: nn.Module, lr: float, momentum: float) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.buffers = [torch.zeros_like(p) for p in self.params]
        self.lr, self.momentum = lr, momentum

    @torch.no_grad()
    def step(self) -> None:
        for param, buf in zip(self.params, self.buffers):
            if param.grad is None:
                continue
            buf.mul_(self.momentum).add_(param.grad)  # buf = momentum * buf + grad
            param.sub_(buf, alpha=self.lr)


def train(in_model_path: str, out_model_path: str, ctx: TaskContext) -> dict[str, Any]:
    """Train the received model on this client's partition and write the result."""
    # Many simulated clients share few cores: torch's default thread pool per
    # process would oversubscribe them and make everything slower.
    torch.set_num_threads(1)
    config = {**DEFAULTS, **dict(ctx.config)}
    epochs = int(config["epochs"])
    batch_size = int(config["batch_size"])
    learning_rate = float(config["learning_rate"])
    if epochs < 1 or batch_size < 1 or not learning_rate > 0:
        raise ValueError(f"epochs and batch_size must be >= 1 and learning_rate > 0, got {epochs}, "
                         f"{batch_size}, {learning_rate}")

    x_train, y_train, _, _ = _client_data(ctx)
    x_train, y_train = client_view_for(ctx, x_train, y_train)  # lab data heterogeneity; no-op without it
    x, y = _as_images(x_train), torch.tensor(flip_labels_for(ctx, y_train))  # lab attack; no-op if honest
    model = load_model(in_model_path)
    mu = float(ctx.settings.get("mu", 0.0))  # FedProx's weight; absent (FedAvg) is 0
    add_proximal_term(model, mu)  # training holds the model near the round's: + mu/2 ||w - w_global||^2
    optimizer = _SGDMomentum(model, lr=learning_rate, momentum=MOMENTUM)
    generator = torch.Generator().manual_seed(_task_seed(ctx))

    model.train()
    epoch_loss = float("nan")
    for _ in range(epochs):
        total, seen = 0.0, 0
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            model.zero_grad()
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            seen += len(batch)
        epoch_loss = total / seen

    save_model(model, out_model_path)
    # num_examples weights this update in FedAvg; the rest is informational.
    return {
        "num_examples": int(len(y_train)),
        "train_loss": float(epoch_loss),  # mean batch loss over the last epoch
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "mu": mu,
    }


def validate(in_model_path: str, ctx: TaskContext) -> dict[str, Any]:
    """Score the received model on this client's held-out split and the global test set; for
    the reducer's evaluation (``ctx.on_reducer``) on the test set only: the reducer holds no
    client's share, and scoring one it does not hold would cost more than the test set."""
    if not ctx.on_reducer:
        torch.set_num_threads(1)  # a client's task: one thread (a reducer's worker has its own share)
    model = load_model(in_model_path)
    x_test, y_test = load_test_set(ctx.data_path, ctx.config)
    test_accuracy, test_loss, test_predicted = _metrics(model, x_test, y_test)
    metrics = {
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "num_examples": int(len(y_test)),
        **task_metrics_for(ctx, y_test, test_predicted),  # lab class-incremental tasks; none without them
    }
    if not ctx.on_reducer:
        _, _, x_val, y_val = _client_data(ctx)
        accuracy, loss, _ = _metrics(model, x_val, y_val)
        metrics.update(accuracy=accuracy, loss=loss, num_examples=int(len(y_val)))
    return metrics


def evaluate_model_file(path: str, data_path: str | None = None, max_test: int | None = None) -> dict[str, Any]:
    """Accuracy/loss of the model stored at ``path`` on the global test set."""
    torch.set_num_threads(1)
    x_test, y_test = load_test_set(data_path, {"max_test": max_test})
    accuracy, loss, _ = _metrics(load_model(path), x_test, y_test)
    return {"accuracy": accuracy, "loss": loss, "num_examples": int(len(y_test))}
