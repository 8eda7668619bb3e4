"""FedYogi: Yogi on the pseudo-gradient (Reddi et al., "Adaptive Federated
Optimization", ICLR 2021, Algorithm 2).

    m <- beta_1 * m + (1 - beta_1) * delta
    v <- v - (1 - beta_2) * delta^2 * sign(v - delta^2)
    x <- x + eta * m / (sqrt(v) + tau)

As FedAdam, but ``v`` moves towards ``delta^2`` by an additive step instead of a
multiplicative decay, so it grows slowly and never collapses after one large round:
the step size adapts more gently (Zaheer et al., 2018). ``m`` starts at 0, ``v`` at tau^2.
"""
from __future__ import annotations

import numpy as np

from fedtier.aggregators.fedadam import BETA_2_DOC, AdaptiveOptimizer
from fedtier.aggregators.params import Param


class FedYogi(AdaptiveOptimizer):
    name = "fedyogi"
    summary = "Yogi on the pseudo-gradient (Reddi et al.); reducer tier"
    params = {**AdaptiveOptimizer.params,
              "beta_2": Param(float, default=0.99, minimum=0.0, maximum=0.9999, doc=BETA_2_DOC)}

    def second_moment(self, v: np.ndarray, squared: np.ndarray) -> None:
        change = np.sign(v - squared)
        change *= squared
        change *= 1.0 - self.settings["beta_2"]
        v -= change
