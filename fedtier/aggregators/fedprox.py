"""FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020).

Each client minimises its loss plus the proximal term ``mu/2 * ||w - w_global||^2``,
which holds its model near the round's global model so skewed clients drift apart
less. The term is the clients' business: ``mu`` reaches the project's train as
``TaskContext.settings["mu"]`` (``Param.client``), and the framework helpers give the
term in one line (fedtier/helpers/proximal.py). The servers average as FedAvg does,
at either tier; with ``mu`` 0 it is FedAvg.
"""
from __future__ import annotations

from fedtier.aggregators.fedavg import FedAvg
from fedtier.aggregators.params import Param


class FedProx(FedAvg):
    name = "fedprox"
    summary = "FedAvg whose clients add the proximal term mu/2 ||w - w_global||^2 to their loss (Li et al.)"
    params = {
        "mu": Param(float, default=0.01, minimum=0.0, maximum=1000.0, client=True,
                    doc="weight of the clients' proximal term; 0 is FedAvg"),
    }
