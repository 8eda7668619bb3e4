"""FedAdam: Adam on the pseudo-gradient (Reddi et al., "Adaptive Federated
Optimization", ICLR 2021, Algorithm 2).

    m <- beta_1 * m + (1 - beta_1) * delta
    v <- beta_2 * v + (1 - beta_2) * delta^2
    x <- x + eta * m / (sqrt(v) + tau)

``delta`` is the round's pseudo-gradient (mean - x, server_optimizer.py); ``m`` starts
at 0 and ``v`` at tau^2, as in the paper, without bias correction. Each coordinate
moves by at most about ``eta`` per round whatever the scale of the clients' change,
which is what makes an adaptive server robust to the skew that makes FedAvg swing.
"""
from __future__ import annotations

import numpy as np

from fedtier.aggregators.params import Param
from fedtier.aggregators.server_optimizer import ServerOptimizer

#: the parameters FedAdam, FedYogi and FedAdagrad share (Reddi et al.'s names)
ETA_DOC = "the server's learning rate: about the largest move of a coordinate per round"
BETA_1_DOC = "decay of the first moment (momentum of the pseudo-gradient); 0 keeps none"
BETA_2_DOC = "decay of the second moment (the squared pseudo-gradient's running mean)"
TAU_DOC = "adaptivity: added to sqrt(v) (and v starts at tau^2); larger is closer to plain momentum"


def first_moment(m: np.ndarray, delta: np.ndarray, beta_1: float) -> None:
    """``m <- beta_1 * m + (1 - beta_1) * delta``, in place."""
    m *= beta_1
    m += (1.0 - beta_1) * delta


def adaptive_step(x: np.ndarray, m: np.ndarray, v: np.ndarray, eta: float, tau: float,
                  out: np.ndarray) -> np.ndarray:
    """``x + eta * m / (sqrt(v) + tau)`` into ``out``."""
    np.sqrt(v, out=out)
    out += tau
    np.divide(m, out, out=out)
    out *= eta
    out += x
    return out


class AdaptiveOptimizer(ServerOptimizer):
    """The shape FedAdam, FedYogi and FedAdagrad share: a first moment ``m`` (momentum of the
    pseudo-gradient), a second moment ``v`` of its square that starts at tau^2, and the step
    ``x + eta * m / (sqrt(v) + tau)``; each says only how ``v`` follows the squared delta."""

    params = {
        "eta": Param(float, default=0.01, minimum=1e-6, maximum=10.0, doc=ETA_DOC),
        "beta_1": Param(float, default=0.9, minimum=0.0, maximum=0.999, doc=BETA_1_DOC),
        "tau": Param(float, default=1e-3, minimum=1e-9, maximum=1.0, doc=TAU_DOC),
    }
    moments = ("m", "v")

    def initial(self, moment: str) -> float:
        return self.settings["tau"] ** 2 if moment == "v" else 0.0

    def second_moment(self, v: np.ndarray, squared: np.ndarray) -> None:
        """Move ``v`` with this round's squared pseudo-gradient, in place (``squared`` is scratch)."""
        raise NotImplementedError

    def step(self, x: np.ndarray, delta: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
        s = self.settings
        m, v = state["m"], state["v"]
        first_moment(m, delta, s["beta_1"])
        np.square(delta, out=delta)
        self.second_moment(v, delta)
        return adaptive_step(x, m, v, s["eta"], s["tau"], out=delta)


class FedAdam(AdaptiveOptimizer):
    name = "fedadam"
    summary = "Adam on the pseudo-gradient (Reddi et al.); reducer tier"
    params = {**AdaptiveOptimizer.params,
              "beta_2": Param(float, default=0.99, minimum=0.0, maximum=0.9999, doc=BETA_2_DOC)}

    def second_moment(self, v: np.ndarray, squared: np.ndarray) -> None:
        v *= self.settings["beta_2"]
        squared *= 1.0 - self.settings["beta_2"]
        v += squared
