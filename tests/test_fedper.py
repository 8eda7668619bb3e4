"""Personalised layers (fedper): the named layers are never averaged, stay on each client
across rounds, and validation scores both the global and the personalised model."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import ProcessGroup
from fedtier.aggregators import FedPer, StrategyError, Update
from fedtier.client.personal import PersonalLayers, with_personal
from fedtier.helpers import get_helper
from fedtier.round_config import RoundConfig, RoundConfigError
from test_faults import Network, wait_until

helper = get_helper("numpy")


def model(path: Path, body: float, head: float) -> Path:
    helper.save({"body": np.full(3, body, np.float32), "head": np.full(2, head, np.float32)}, path)
    return path


def test_personal_layers_keep_the_rounds_values_and_the_rest_is_fedavg(tmp_path: Path) -> None:
    reference = model(tmp_path / "ref", 0.0, 5.0)
    agg = FedPer(helper, personal="he*")
    agg.start(reference)
    agg.add(Update(model(tmp_path / "a", 1.0, 100.0), 10.0))
    agg.add(Update(model(tmp_path / "b", 4.0, -100.0), 20.0))
    assert agg.aggregate_one(Update(tmp_path / "a", 1.0), tmp_path / "x") is None  # no shortcut past the head
    agg.finish(tmp_path / "out")
    out = helper.load(tmp_path / "out")
    np.testing.assert_allclose(out["body"], (10 * 1.0 + 20 * 4.0) / 30, rtol=1e-6)
    np.testing.assert_array_equal(out["head"], 5.0)


@pytest.mark.parametrize("personal, words", [("", "name the layers"), ("nothing*", "matches no tensor"),
                                             ("*", "matches every tensor")])
def test_personal_patterns_that_cannot_work_are_refused_by_name(tmp_path: Path, personal: str, words: str) -> None:
    agg = FedPer(helper, personal=personal)
    with pytest.raises(StrategyError, match=words):
        agg.start(model(tmp_path / "ref", 0.0, 0.0))


def test_the_setting_is_bounded_and_reaches_the_clients() -> None:
    config = RoundConfig.from_dict({"aggregation": {"combiner": {"name": "fedper", "personal": "head"}}})
    assert config.client_settings() == {"personal": "head"}
    with pytest.raises(RoundConfigError) as caught:
        RoundConfig.from_dict({"aggregation": {"combiner": {"name": "fedper", "personal": "x" * 5000}}})
    assert caught.value.field == "aggregation.combiner.personal" and "at most 2000 characters" in str(caught.value)


def test_a_client_keeps_its_layers_per_session(tmp_path: Path) -> None:
    layers = PersonalLayers.from_settings(tmp_path, "s1", {"personal": "head"})
    assert layers is not None and PersonalLayers.from_settings(tmp_path, "s1", {}) is None
    given = model(tmp_path / "global", 1.0, 0.0)
    assert layers.apply(given, tmp_path / "mine") == given  # nothing of its own yet
    layers.remember(model(tmp_path / "trained", 2.0, 7.0))
    mine = helper.load(layers.apply(given, tmp_path / "mine"))
    np.testing.assert_array_equal(mine["body"], 1.0)  # the global body
    np.testing.assert_array_equal(mine["head"], 7.0)  # its own head
    other = PersonalLayers.from_settings(tmp_path, "s2", {"personal": "head"})
    assert other is not None and not other.has_own()  # a new session starts from the global head
    assert with_personal({"acc": 0.5, "num_examples": 3}, {"acc": 0.9, "num_examples": 3}) == \
        {"acc": 0.5, "num_examples": 3, "personal_acc": 0.9}


def test_a_network_session_keeps_each_clients_head_and_reports_both_scores(procs: ProcessGroup,
                                                                          tmp_path: Path) -> None:
    """Two numpy_shift clients (client-k adds k+1 to every value, weight 10(k+1)) over two rounds
    with fedper at the combiner: the global head stays the seed's, each client's head grows by
    its own shift each round, and validation reports the global and the personalised sums."""
    net = Network(procs, tmp_path)
    net.reducer()
    net.combiner("c0")
    wait_until(lambda: net.get("/api/v1/combiners"), what="c0 registered")
    data = helper.to_bytes({"body": np.zeros(3, np.float32), "head": np.zeros(2, np.float32)})
    assert requests.post(net.url + "/seed", files={"seed": ("seed", io.BytesIO(data))}, timeout=10).status_code == 201
    for i in range(2):
        net.client(i, 2)
    wait_until(lambda: net.active_on("c0") == 2, what="clients", procs=procs)
    # layers the model does not have: refused at /start, naming the setting, not on every round
    bad = requests.post(net.url + "/start", json={"rounds": 1, "aggregation": {"combiner": {
        "name": "fedper", "personal": "fc2.*"}}}, timeout=10)
    assert bad.status_code == 400 and bad.json()["field"] == "aggregation.combiner.personal", bad.text
    assert "matches no tensor of the model (its tensors: body, head)" in bad.json()["error"]
    assert net.get("/api/v1/sessions") == []
    session = net.start(rounds=2, clients_required=2, validate=True,
                        aggregation={"combiner": {"name": "fedper", "personal": "head"}, "reducer": "fedavg"})
    assert net.finished(session)["rounds_succeeded"] == 2, net.get("/api/v1/rounds")

    last = net.get("/api/v1/rounds")[-1]
    final = requests.get(f"{net.url}/api/v1/models/{last['model_out']}/download", timeout=10)
    weights = helper.from_bytes(final.content)
    np.testing.assert_allclose(weights["body"], 2 * (10 * 1 + 20 * 2) / 30, rtol=1e-6)  # two FedAvg steps
    np.testing.assert_array_equal(weights["head"], 0.0)  # never aggregated
    reports = {v["client"]: v["metrics"] for v in net.get(f"/api/v1/validations?round_id={last['id']}")}
    for i, client in enumerate(("client-0", "client-1")):
        shift = i + 1  # the head this client trained: 2 rounds of its own shift, kept between them
        assert reports[client]["weight_sum"] == pytest.approx(3 * 2 * 50 / 30)
        assert reports[client]["personal_weight_sum"] == pytest.approx(3 * 2 * 50 / 30 + 2 * 2 * shift)
