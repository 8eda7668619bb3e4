"""FedAvgM: FedAvg with server momentum (Hsu et al., "Measuring the Effects of
Non-Identical Data Distribution for Federated Visual Classification", 2019).

    v <- momentum * v + delta
    x <- x + server_lr * v

``delta`` is the round's pseudo-gradient (mean - x, server_optimizer.py). Momentum
carries the direction of the last rounds, which damps the round-to-round swings that
skewed clients cause. ``server_lr`` 1 with ``momentum`` 0 is FedAvg; the effective step
over many rounds is ``server_lr / (1 - momentum)``, so a high momentum usually wants a
smaller ``server_lr``.
"""
from __future__ import annotations

import numpy as np

from fedtier.aggregators.params import Param
from fedtier.aggregators.server_optimizer import ServerOptimizer


class FedAvgM(ServerOptimizer):
    name = "fedavgm"
    summary = "FedAvg with server momentum on the pseudo-gradient (Hsu et al.); reducer tier"
    params = {
        "server_lr": Param(float, default=1.0, minimum=1e-6, maximum=10.0,
                           doc="the server's learning rate: the step is server_lr times the momentum"),
        "momentum": Param(float, default=0.9, minimum=0.0, maximum=0.999,
                          doc="how much of the previous rounds' direction each round keeps"),
    }
    moments = ("momentum",)

    def step(self, x: np.ndarray, delta: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
        v = state["momentum"]
        v *= self.settings["momentum"]
        v += delta
        delta[...] = v
        delta *= self.settings["server_lr"]
        delta += x
        return delta
