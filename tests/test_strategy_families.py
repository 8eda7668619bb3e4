"""One short networked session per strategy family (adaptive, proximal, robust) on one
network of a reducer, two combiners and four clients: each session's global models must
be what the same strategy objects compute in process from the updates the round records
name, so the tiers, the weights and the reducer's state across rounds are wired as the
unit tests assume. (Personalised layers: tests/test_fedper.py.)"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from conftest import ProcessGroup
from fedtier.aggregators import COMBINER, REDUCER, RoundContext, Update, get_strategy
from fedtier.round_config import RoundConfig
from test_faults import Network, helper, wait_until

FAMILIES: list[tuple[str, dict[str, Any]]] = [
    ("adaptive", {"aggregation": {"combiner": "fedavg", "reducer": {"name": "fedadam", "eta": 0.1}}}),
    ("proximal", {"aggregation": {"combiner": {"name": "fedprox", "mu": 0.5}, "reducer": "fedavgm"}}),
    ("robust", {"aggregation": {"combiner": "median", "reducer": {"name": "trimmed_mean", "beta": 0.0}}}),
]


def replay(settings: dict[str, Any], rounds: list[dict[str, Any]], work: Path,
           start: np.ndarray | None = None) -> np.ndarray:
    """The session's last model, computed in process: each client of numpy_shift adds its
    shift (client-k: k+1) to the round's model; each combiner's strategy reduces its
    clients' updates, the reducer's (one instance for the session) the combiner models."""
    config = RoundConfig.from_dict(settings)
    work.mkdir(parents=True)
    model = np.zeros((3, 3), np.float32) if start is None else start
    top = None
    for n, record in enumerate(rounds):
        ref = work / f"ref-{n}"
        helper.save({"w": model}, ref)
        reduced = []
        for c, combiner in enumerate(record["combiners"]):
            choice = config.strategy(COMBINER)
            strategy = get_strategy(choice.name, helper, COMBINER, **dict(choice.params))
            strategy.start(ref, RoundContext(tier=COMBINER, work_dir=work / f"c{n}-{c}"))
            for u in combiner["updates"]:
                path = work / f"u-{n}-{u['client']}"
                helper.save({"w": model + (int(u["client"].split("-")[1]) + 1)}, path)
                strategy.add(Update(path, float(u["weight_used"]), sender=u["client"]))
            out = work / f"combiner-{n}-{c}"
            reduced.append((out, strategy.finish(out), combiner["name"]))
        choice = config.strategy(REDUCER)
        top = top or get_strategy(choice.name, helper, REDUCER, **dict(choice.params))
        top.start(ref, RoundContext(tier=REDUCER, work_dir=work / f"r{n}"))
        out = work / f"global-{n}"
        if len(reduced) != 1 or top.aggregate_one(Update(reduced[0][0], reduced[0][1]), out) is None:
            for path, weight, name in reduced:
                top.add(Update(path, weight, sender=name))
            top.finish(out)
        model = helper.load(out)["w"]
    return model


def test_each_family_runs_over_the_network_as_it_computes_in_process(procs: ProcessGroup, tmp_path: Path) -> None:
    net = Network(procs, tmp_path)
    net.reducer()
    for name in ("c0", "c1"):
        net.combiner(name)
    wait_until(lambda: len(net.get("/api/v1/combiners")) == 2, what="both combiners registered")
    net.seed()
    for i in range(4):
        net.client(i, 4)
    wait_until(lambda: sum(c.get("active", False) for c in net.get("/api/v1/clients")) == 4, what="4 clients",
               procs=procs)
    for family, settings in FAMILIES:
        session = net.start(rounds=2, clients_required=4, **settings)
        assert net.finished(session)["rounds_succeeded"] == 2, (family, net.get("/api/v1/rounds"))
        rounds = [r for r in net.get("/api/v1/rounds") if r["session_id"] == session]
        final = requests.get(f"{net.url}/api/v1/models/{rounds[-1]['model_out']}/download", timeout=10)
        first = requests.get(f"{net.url}/api/v1/models/{rounds[0]['model_in']}/download", timeout=10)
        expected = replay(settings, rounds, tmp_path / family, start=helper.from_bytes(first.content)["w"])
        np.testing.assert_allclose(helper.from_bytes(final.content)["w"], expected, rtol=1e-5, atol=1e-6,
                                   err_msg=family)


def test_a_reducer_restart_mid_session_continues_with_the_same_moments(procs: ProcessGroup, tmp_path: Path) -> None:
    """FedAdam at the reducer, the reducer killed while the session's second round trains:
    the next session, started from the last model, continues with the moments stored with
    it (the replay with one optimiser for both sessions), not afresh (a new one)."""
    settings = {"aggregation": {"reducer": {"name": "fedadam", "eta": 0.5}}}
    net = Network(procs, tmp_path)
    net.reducer()
    net.combiner("c0")
    wait_until(lambda: net.get("/api/v1/combiners"), what="c0 registered")
    net.seed()
    for i in range(2):
        net.client(i, 2)
    wait_until(lambda: net.active_on("c0") == 2, what="2 clients", procs=procs)
    first = net.start(rounds=3, clients_required=2, task={"sleep": 1.5}, **settings)
    wait_until(lambda: len(net.get("/api/v1/models")) == 2 and net.training_running(), what="round 2 training",
               procs=procs)
    procs.kill("reducer")
    net.reducer("reducer2")
    assert net.get(f"/api/v1/sessions/{first}")["status"] == "interrupted"
    wait_until(lambda: net.active_on("c0") == 2, what="clients seen again", procs=procs)
    second = net.start(rounds=1, clients_required=2, **settings)
    assert net.finished(second)["rounds_succeeded"] == 1

    done = [r for r in net.get("/api/v1/rounds") if r["status"] == "success"]
    assert [r["session_id"] for r in done] == [first, second]
    final = helper.from_bytes(requests.get(f"{net.url}/api/v1/models/{done[-1]['model_out']}/download",
                                           timeout=10).content)["w"]
    continued = replay(settings, done, tmp_path / "continued")
    np.testing.assert_allclose(final, continued, rtol=1e-5, atol=1e-6)
    afresh = replay(settings, done[1:], tmp_path / "afresh", start=replay(settings, done[:1], tmp_path / "one"))
    assert not np.allclose(final, afresh, rtol=1e-3), "the optimiser's moments were not carried over"
