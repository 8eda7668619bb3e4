"""In-process entry points for the digits project (see ``entry_points`` in fedn.yaml).

The client imports this module and calls:

    train(in_model_path, out_model_path, ctx) -> {"num_examples": int, "train_loss": float}
    validate(in_model_path, ctx)              -> {"accuracy", "loss", "num_examples",
                                                  "test_accuracy", "test_loss"}

``ctx`` is a ``fedtier.client.context.TaskContext``: which partition this client
holds, the round number and session, and the round's ``config`` (hyperparameters sent
with the task; see DEFAULTS for the keys understood here). The round number seeds
each round's shuffle and drives the learning-rate decay (``lr_decay``). train.py / validate.py wrap the same
functions as FEDn-style commands.

``evaluate_model_file(path)`` scores any model file on the global test set; tests
and the sandbox use it to follow the global model's accuracy.
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
from fedtier.datatools.partition import resolve_config
from fedtier.helpers.pytorch_helper import add_proximal_term
from model import load_model, save_model

#: Hyperparameters used when the task config does not set them. Chosen so that
#: FedAvg over 3 IID clients reaches ~0.97 global test accuracy in 3 rounds (and
#: > 0.9 even with 10 clients) while a train call takes ~50 ms on one CPU thread.
#: With epochs=1, 3 clients only reach ~0.89 after 3 rounds.
DEFAULTS: dict[str, Any] = {
    "epochs": 5,
    "learning_rate": 0.1,
    "batch_size": 32,
    # learning rate in round n: learning_rate * lr_decay ** (n - 1); 1.0 keeps it constant
    "lr_decay": 1.0,
}
MOMENTUM = 0.9


def _task_seed(ctx: TaskContext) -> int:
    """A seed that is fixed for a (round number, client) pair but differs between them.

    Keyed on the round *number*, not the round's random id, so a new session from the
    same seed model shuffles exactly as the last one did, round for round, while clients
    (and rounds) shuffle differently. Without a round number (a task from a caller that
    gave none) the round id keys it. hashlib rather than hash(): str hashes are salted
    per process.
    """
    round_key = ctx.round_number if ctx.round_number > 0 else ctx.round_id
    key = f"{round_key}|{ctx.client_name}|{ctx.partition_index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def _client_data(ctx: TaskContext) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # ctx.data_path is unused: the dataset is bundled with scikit-learn and each
    # client takes its share by partition index instead. The partition scheme comes
    # from the task config ("partition", e.g. set by `fedtier sandbox --partition`),
    # the same for every client of a session; IID when absent.
    scheme, seed, params = resolve_config(ctx.config.get("partition", {"scheme": "iid"}))
    return load_partition(ctx.partition_index, ctx.num_partitions, seed=seed, scheme=scheme, **params)


def _metrics(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(accuracy, mean cross-entropy, predicted labels) of ``model`` on ``(x, y)``."""
    model.eval()
    with torch.no_grad():
        # torch.tensor copies: the cached test arrays are read-only.
        logits = model(torch.tensor(x))
        target = torch.tensor(y)
        loss = nn.functional.cross_entropy(logits, target).item()
        predicted = logits.argmax(dim=1)
        accuracy = (predicted == target).float().mean().item()
    return accuracy, loss, predicted.numpy()


class _SGDMomentum:
    """SGD with momentum, the same update as ``torch.optim.SGD(lr, momentum)``.

    Written out because any ``torch.optim`` optimizer imports ``torch._dynamo`` on
    first use, which costs seconds of CPU per process, far more than training this
    model. That matters when many client processes (or one process per task with
    command entry points) share a couple of cores. For a larger model, simply use
    ``torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)`` instead.
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
            # buf = momentum * buf + grad; param -= lr * buf (first step: buf = grad)
            buf.mul_(self.momentum).add_(param.grad)
            param.sub_(buf, alpha=self.lr)


def round_learning_rate(config: dict[str, Any], round_number: int) -> float:
    """``learning_rate`` decayed by ``lr_decay`` once per round after the first."""
    return float(config["learning_rate"]) * float(config["lr_decay"]) ** max(0, round_number - 1)


def train(in_model_path: str, out_model_path: str, ctx: TaskContext) -> dict[str, Any]:
    """Train the received model on this client's partition and write the result."""
    # Many simulated clients share few cores: torch's default thread pool per
    # process would oversubscribe them and make everything slower.
    torch.set_num_threads(1)
    config = {**DEFAULTS, **dict(ctx.config)}
    epochs = int(config["epochs"])
    batch_size = int(config["batch_size"])

    x_train, y_train, _, _ = _client_data(ctx)
    x_train, y_train = client_view_for(ctx, x_train, y_train)  # lab data heterogeneity; no-op without it
    x, y = torch.as_tensor(x_train), torch.as_tensor(flip_labels_for(ctx, y_train))  # lab attack; no-op if honest
    model = load_model(in_model_path)
    mu = float(ctx.settings.get("mu", 0.0))  # FedProx's weight; absent (FedAvg) is 0
    add_proximal_term(model, mu)  # training holds the model near the round's: + mu/2 ||w - w_global||^2
    learning_rate = round_learning_rate(config, ctx.round_number)
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
        "num_examples": int(len(x_train)),
        "train_loss": float(epoch_loss),  # mean batch loss over the last epoch
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "mu": mu,
        "round": ctx.round_number,
    }


def validate(in_model_path: str, ctx: TaskContext) -> dict[str, Any]:
    """Score the received model on this client's held-out split and the global test set; for
    the reducer's evaluation (``ctx.on_reducer``) on the test set only: the reducer holds no
    client's share, and scoring one it does not hold would cost more than the test set."""
    if not ctx.on_reducer:
        torch.set_num_threads(1)  # a client's task: one thread (a reducer's worker has its own share)
    model = load_model(in_model_path)
    x_test, y_test = load_test_set()
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


def evaluate_model_file(path: str) -> dict[str, Any]:
    """Accuracy/loss of the model stored at ``path`` on the global test set."""
    torch.set_num_threads(1)
    x_test, y_test = load_test_set()
    accuracy, loss, _ = _metrics(load_model(path), x_test, y_test)
    return {"accuracy": accuracy, "loss": loss, "num_examples": int(len(y_test))}
