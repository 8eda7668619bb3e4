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

from fedtier.aggregators.fedadam import BETA_1_DOC, ETA_DOC, TAU_DOC, adaptive_step, first_moment
from fedtier.aggregators.params import Param
from fedtier.aggregators.server_optimizer import ServerOptimizer


class FedAdagrad(ServerOptimizer):
    name = "fedadagrad"
    summary = "Adagrad on the pseudo-gradient (Reddi et al.); reducer tier"
    params = {
        "eta": Param(float, default=0.01, minimum=1e-6, maximum=10.0, doc=ETA_DOC),
        "beta_1": Param(float, default=0.0, minimum=0.0, maximum=0.999, doc=BETA_1_DOC),
        "tau": Param(float, default=1e-3, minimum=1e-9, maximum=1.0, doc=TAU_DOC),
    }
    moments = ("m", "v")

    def initial(self, moment: str) -> float:
        return self.settings["tau"] ** 2 if moment == "v" else 0.0

    def step(self, x: np.ndarray, delta: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
        s = self.settings
        m, v = state["m"], state["v"]
        first_moment(m, delta, s["beta_1"])
        np.square(delta, out=delta)
        v += delta
        return adaptive_step(x, m, v, s["eta"], s["tau"], out=delta)
