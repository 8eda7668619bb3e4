"""FedAdagrad: Adagrad on the pseudo-gradient (Reddi et al., "Adaptive Federated
Optimization", ICLR 2021, Algorithm 2).

    m <- beta_1 * m + (1 - beta_1) * delta
    v <- v + delta^2
    x <- x + eta * m / (sqrt(v) + tau)

``v`` sums every round's squared pseudo-gradient, so each coordinate's step shrinks as
it keeps moving: a learning-rate decay per coordinate, fitted to rare features. With
``beta_1`` 0 (the default) ``m`` is the round's ``delta``. ``m`` starts at 0, ``v`` at tau^2.
"""
from __future__ import annotations

import numpy as np

from fedtier.aggregators.fedadam import BETA_1_DOC, AdaptiveOptimizer
from fedtier.aggregators.params import Param


class FedAdagrad(AdaptiveOptimizer):
    name = "fedadagrad"
    summary = "Adagrad on the pseudo-gradient (Reddi et al.); reducer tier"
    params = {**AdaptiveOptimizer.params,
              "beta_1": Param(float, default=0.0, minimum=0.0, maximum=0.999, doc=BETA_1_DOC)}

    def second_moment(self, v: np.ndarray, squared: np.ndarray) -> None:
        v += squared
