"""The weight cap: its bound, its tracker, and a combiner round's fold against numpy's capped mean."""
from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest

from fedtier.aggregators import FedAvg
from fedtier.aggregators.weight_policy import WeightCap, WeightPolicy, lower_median, median_lower_bound
from fedtier.combiner.model_cache import ModelCache
from fedtier.combiner.round import ActiveRound, RejectedReport
from fedtier.helpers import get_helper
from fedtier.proto import fedtier_pb2 as pb
from fedtier.round_config import RoundConfig, RoundConfigError
from fedtier.transport.streams import file_chunks

helper = get_helper("numpy")


def test_lower_median_is_the_honest_weight_of_two() -> None:
    assert lower_median([10, 10**12]) == 10
    assert lower_median([1, 2, 3]) == 2 and lower_median([1, 2, 3, 4]) == 2 and lower_median([7]) == 7
    policy = WeightPolicy(median_multiple=10)
    assert policy.cap([10, 10**12]) == 100  # the plain median (5e11) would let the liar own the mean
    assert WeightPolicy(median_multiple=10, absolute=50).cap([10, 10**12]) == 50
    assert WeightPolicy(median_multiple=0, absolute=0).cap([10, 10**12]) is None
    assert WeightPolicy(median_multiple=2.3).cap([100]) == 230  # the multiple as written, not 229.99...


def test_the_median_bound_holds_for_every_completion() -> None:
    """Brute force: whatever weights (0..4 of them, values 1..5) arrive besides the known
    ones, up to n in all, the final lower median is at least the bound."""
    for n in range(1, 6):
        for k in range(0, n + 1):
            for known in itertools.combinations_with_replacement(range(1, 6), k):
                bound = median_lower_bound(sorted(known), n)
                for m in range(0, n - k + 1):
                    if k + m == 0:
                        continue
                    for more in itertools.product(range(1, 6), repeat=m):
                        assert lower_median(sorted(known + more)) >= bound, (known, more, n, bound)
    assert median_lower_bound([3, 8, 9], 3) == 8  # all known: the lower median itself
    assert median_lower_bound([3, 8], 3) == 3 and median_lower_bound([3], 3) == 0


def test_tracker_folds_under_the_bound_defers_over_it_and_names_the_capped() -> None:
    cap = WeightCap(WeightPolicy(median_multiple=10), expected=4)
    assert cap.add("liar", 10**12) is False  # nothing is known yet: wait
    assert cap.add("a", 30) is False  # two of four known: two more could sit below both
    assert cap.releasable() == []
    assert cap.add("b", 10) is True  # three known: the lower median is at least 10, the cap at least 100
    assert cap.releasable() == ["a"]  # 30 <= 100; the liar still waits
    assert cap.close() == ["liar"]  # the fourth never answered: cap 10 x 30 over the three
    assert cap.final_cap() == 300 and cap.weight_for("liar") == 300 and cap.weight_for("a") == 30
    assert cap.capped() == {"liar": (10**12, 300)}
    with pytest.raises(ValueError, match="positive"):
        cap.add("zero", 0)

    dropped = WeightCap(WeightPolicy(median_multiple=10), expected=3)
    assert dropped.add("a", 10) is False
    dropped.drop()  # one task failed: two at most, and the other could still weigh 1
    assert dropped.releasable() == []
    dropped.drop()  # the other failed too: 10 is the lower median
    assert dropped.releasable() == ["a"]

    absolute = WeightCap(WeightPolicy(median_multiple=0, absolute=50), expected=2)
    assert absolute.add("liar", 10**12) is True  # the cap is known from the start: fold now, capped
    assert absolute.weight_for("liar") == 50 and absolute.capped() == {"liar": (10**12, 50)}

    off = WeightCap(WeightPolicy(median_multiple=0), expected=2)
    assert off.add("liar", 10**12) is True and off.weight_for("liar") == 10**12 and off.capped() == {}


def test_round_config_names_the_weight_fields() -> None:
    assert RoundConfig().weight_cap_median == 10 and RoundConfig().weight_cap == 0  # on by default
    assert RoundConfig.from_dict({"weight_cap": "500", "weight_cap_median": 0}).weight_policy() == \
        WeightPolicy(median_multiple=0, absolute=500)
    for bad, name in [({"weight_cap": -1}, "weight_cap"), ({"weight_cap": 1.5}, "weight_cap"),
                      ({"weight_cap_median": 0.5}, "weight_cap_median"),
                      ({"weight_cap_median": "nan"}, "weight_cap_median"),
                      ({"weight_cap_median": True}, "weight_cap_median")]:
        with pytest.raises(RoundConfigError) as info:
            RoundConfig.from_dict(bad)
        assert info.value.field == name


def run_round(tmp_path: Path, values: list[float], weights: list[int], missing: set[int],
              policy: WeightPolicy, order: list[int]) -> tuple[np.ndarray, ActiveRound, ModelCache]:
    """A combiner round on real files: tasks for every client, answers in ``order``, the
    ``missing`` ones fail; then close and settle as the runner does."""
    cache = ModelCache(tmp_path / "cache")
    reference = tmp_path / "global"
    helper.save({"w": np.zeros(3, np.float32)}, reference)
    round_ = ActiveRound(round_id="r", kind=pb.TRAINING, model_id="g", aggregator=FedAvg(helper), policy=policy)
    round_.aggregator.start(reference)
    for i in range(len(values)):
        round_.expect(f"t{i}", f"c{i}")
    for i in order:
        if i in missing:
            round_.fail_task(f"t{i}", "no answer")
            continue
        path = tmp_path / f"u{i}"
        helper.save({"w": np.full(3, values[i], np.float32)}, path)
        model_id = cache.receive(file_chunks(path, client_name=f"c{i}"), lambda header: None).path.name  # admitted
        round_.submit_update(pb.ModelUpdate(client_name=f"c{i}", task_id=f"t{i}", round_id="r", model_id=model_id,
                                            parent_model_id="g", num_examples=weights[i]), cache)
    round_.close()
    round_.settle(cache)
    round_.aggregator.finish(tmp_path / "out")
    return helper.load(tmp_path / "out")["w"], round_, cache


@pytest.mark.parametrize("seed", range(30))
def test_the_fold_with_deferral_equals_numpys_capped_mean(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 7)
    values = [rng.uniform(-5, 5) for _ in range(n)]
    weights = [rng.choice([rng.randint(1, 100), rng.randint(1, 100), 10**rng.randint(3, 12)]) for _ in range(n)]
    missing = set(rng.sample(range(n), rng.randint(0, n - 1)))
    policy = rng.choice([WeightPolicy(10), WeightPolicy(2), WeightPolicy(10, 150), WeightPolicy(0, 50),
                         WeightPolicy(0, 0)])
    order = list(range(n))
    rng.shuffle(order)
    got, round_, cache = run_round(tmp_path, values, weights, missing, policy, order)

    arrived = [i for i in range(n) if i not in missing]
    cap = policy.cap([weights[i] for i in arrived])
    used = np.array([min(weights[i], cap) if cap is not None else weights[i] for i in arrived], np.float64)
    x = np.array([np.float32(values[i]) for i in arrived], np.float64)
    expected = (used * x).sum() / used.sum()
    np.testing.assert_allclose(got, np.full(3, expected), rtol=1e-6, atol=1e-6)
    assert round_.aggregator.total_weight == used.sum()
    assert {u.client_name: (u.num_examples, u.weight_used, u.capped) for u in round_.updates} == {
        f"c{i}": (weights[i], int(u), int(u) < weights[i]) for i, u in zip(arrived, used)}
    assert not round_.weights.deferred and not list(cache.root.iterdir())  # every update folded and deleted


def test_a_liar_among_honest_clients_counts_with_the_cap(tmp_path: Path) -> None:
    # the liar answers first, so its update waits on disk until the others' weights are known
    got, round_, _ = run_round(tmp_path, [100.0, 1.0, 2.0], [10**12, 10, 20], set(), WeightPolicy(10), [0, 1, 2])
    np.testing.assert_allclose(got, np.full(3, (200 * 100 + 10 + 40) / 230), rtol=1e-6)
    assert [(u.client_name, u.weight_used, u.capped) for u in round_.updates if u.capped] == [("c0", 200, True)]


def test_stale_and_unnamed_parents_are_refused_and_the_task_fails(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache")
    helper.save({"w": np.zeros(3, np.float32)}, tmp_path / "global")
    round_ = ActiveRound(round_id="r", kind=pb.TRAINING, model_id="g2", aggregator=FedAvg(helper))
    round_.aggregator.start(tmp_path / "global")
    round_.expect("t0", "c0")
    round_.expect("t1", "c1")
    for task, client, parent, message in [("t0", "c0", "g1", "stale update: trained from model 'g1', but this "
                                                               "round's model is 'g2'"),
                                          ("t1", "c1", "", "parent_model_id is empty")]:
        model_id = cache.receive(file_chunks(tmp_path / "global", client_name=client), lambda header: None).path.name
        with pytest.raises(RejectedReport, match=message):
            round_.submit_update(pb.ModelUpdate(client_name=client, task_id=task, round_id="r", model_id=model_id,
                                                parent_model_id=parent, num_examples=10), cache)
        assert not cache.exists(model_id)
    assert round_.wait(0.1)  # both tasks answered (failed): the round does not wait for them
    assert not round_.updates and round_.aggregator.num_updates == 0
    assert [f.split(":")[0] for f in round_.failures] == ["c0", "c1"]


def test_validation_metrics_are_weighted_under_the_same_cap() -> None:
    from fedtier.reducer.control import weighted_metrics

    reports = [({"accuracy": 0.9}, 10), ({"accuracy": 0.8}, 20), ({"accuracy": 0.0}, 10**12)]
    # reported [10, 20, 10**12]: cap 200
    assert weighted_metrics(reports, WeightPolicy(10)) == {"accuracy": pytest.approx((9 + 16) / 230)}
    assert weighted_metrics(reports, WeightPolicy(0)) == {"accuracy": pytest.approx(25 / (30 + 10**12))}
