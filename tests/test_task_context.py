"""What reaches a project's code: the round number, the session, the task settings, the
strategy's client-side settings, and nothing else of the round (issue 15)."""
from __future__ import annotations

import json
import os
import random
import threading
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from conftest import TEST_PROJECTS, ProcessGroup, free_port, wait_for_port
from fedtier.aggregators import AGGREGATORS
from fedtier.aggregators.fedavg import FedAvg
from fedtier.aggregators.params import Param
from fedtier.proto import fedtier_pb2 as pb
from fedtier.proto import fedtier_pb2_grpc as rpc
from fedtier.reducer.combiner_client import CombinerClient
from fedtier.round_config import COMBINER_WAIT_S, CombinerQuorum, RoundConfig, RoundConfigError
from fedtier.transport.channel import make_channel
from test_combiner_network import push_seed, wait_active
from test_faults import Network, wait_until

PROBE = TEST_PROJECTS / "context_probe"
PROBE_CMD = TEST_PROJECTS / "context_probe_cmd"


def test_a_network_session_tells_each_entry_point_its_round_number_and_session(
        procs: ProcessGroup, tmp_path: Path) -> None:
    """Two rounds through reducer, combiner and two clients, one with python entry points and
    one with commands (environment variables): both see rounds 1 then 2 and the session id."""
    net = Network(procs, tmp_path)
    net.reducer()
    net.combiner("c0")
    wait_until(lambda: net.get("/api/v1/combiners"), what="c0 registered")
    net.seed()
    log_file = tmp_path / "probe.jsonl"
    for name, project in (("py", PROBE), ("cmd", PROBE_CMD)):
        procs.start(name, "client", "--reducer", net.url, "--project", str(project), "--name", name,
                    env={**net.env, "PROBE_LOG": str(log_file)})
    wait_until(lambda: net.active_on("c0") == 2, what="both clients active", procs=procs)

    # FedProx at the combiner, FedAdam at the reducer: mu is the one strategy setting clients see
    session = net.start(rounds=2, clients_required=2, validate=True, wait_for_clients=30, task={"epochs": 3},
                        aggregation={"combiner": {"name": "fedprox", "mu": 0.25}, "reducer": {"name": "fedadam"}})
    done = net.finished(session)
    assert done["rounds_succeeded"] == 2, net.get("/api/v1/rounds")

    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    for client in ("py", "cmd"):
        seen = [(r["kind"], r["round_number"]) for r in lines if r["client"] == client]
        assert seen == [("train", 1), ("validate", 1), ("train", 2), ("validate", 2)], lines
    assert {r["session_id"] for r in lines} == {session}
    assert all(r["config"] == {"epochs": 3} and r["settings"] == {"mu": 0.25} for r in lines), lines
    rounds = {r["round"]: r for r in net.get("/api/v1/rounds")}
    # the reducer's optimiser state is stored with each model it produced
    states = [m.get("strategy_state") for m in net.get("/api/v1/models")]
    assert states[0] is None and [s["strategy"] for s in states[1:]] == ["fedadam", "fedadam"], states
    train_ids = {(r["client"], r["round_number"]): r["round_id"] for r in lines if r["kind"] == "train"}
    assert train_ids[("py", 2)] == rounds[2]["id"] == train_ids[("cmd", 2)]

    # the combiner's quorum, chosen by the reducer, is on the round record by name
    (c0,) = rounds[1]["combiners"]
    assert c0["quorum"] == {"min_clients": 1, "clients_requested": 0, "wait_s": COMBINER_WAIT_S}
    assert rounds[1]["validation_quorums"] == {"c0": {"min_clients": 1, "clients_requested": 0,
                                                      "wait_s": COMBINER_WAIT_S}}


def _raw_client(port: int) -> tuple[rpc.CombinerStub, object, object]:
    """A client made of bare gRPC calls, to see a task exactly as the combiner sends it."""
    channel = make_channel(f"127.0.0.1:{port}")
    stub = rpc.CombinerStub(channel)
    stub.Connect(pb.ConnectRequest(client_name="raw", version="test"), timeout=10)
    return stub, stub.TaskStream(pb.TaskStreamRequest(client_name="raw")), channel


def test_a_task_carries_only_what_the_project_needs_and_the_quorum_travels_by_name(
        procs: ProcessGroup, tmp_path: Path) -> None:
    port = free_port()
    proc = procs.start("combiner", "combiner", "--name", "c1", "--host", "127.0.0.1", "--port", str(port),
                       "--work-dir", str(tmp_path / "c1"), "--heartbeat-interval", "0.3",
                       "--heartbeat-timeout", "10")
    wait_for_port(port, proc=proc)
    combiner = CombinerClient(f"127.0.0.1:{port}")
    stub, stream, channel = _raw_client(port)
    try:
        wait_active(combiner, 1)
        push_seed(combiner, tmp_path)
        config = {"clients_required": 1, "round_timeout": 30, "wait_for_clients": 30, "aggregator": "fedavg",
                  "aggregator_kwargs": {}, "helper": "numpy", "weight_cap": 1000, "task": {"lr": 0.5}}

        # the named quorum rules, not the session's clients_required: 2 wanted, 1 there
        refused = combiner.start_round(pb.RoundRequest(
            session_id="s", round_id="r0", kind=pb.TRAINING, model_id="seed", config_json=json.dumps(config),
            round_number=6, min_clients=2, wait_for_clients_s=0.5), timeout=30)
        assert not refused.success
        assert "only 1 of 2 required clients active after 0.5s" in refused.error

        results: list[pb.RoundResult] = []
        request = pb.RoundRequest(session_id="s-42", round_id=uuid.uuid4().hex, kind=pb.TRAINING, model_id="seed",
                                  config_json=json.dumps(config), round_number=7, min_clients=1,
                                  wait_for_clients_s=5)
        runner = threading.Thread(target=lambda: results.append(combiner.start_round(request, timeout=60)))
        runner.start()
        task = next(iter(stream))
        assert json.loads(task.config_json) == {"task": {"lr": 0.5}, "strategy": {}}
        assert (task.round_number, task.session_id, task.round_id) == (7, "s-42", request.round_id)
        stub.ReportFailure(pb.TaskFailure(client_name="raw", task_id=task.task_id, round_id=task.round_id,
                                          error="probe"), timeout=10)
        runner.join(60)
        assert results and not results[0].success and "only 0 of 1 required updates" in results[0].error
    finally:
        stream.cancel()
        channel.close()
        combiner.close()


def test_the_task_json_holds_the_task_and_the_strategys_client_settings(monkeypatch) -> None:
    class Proximal(FedAvg):  # a strategy with one client-side parameter, as FedProx's mu
        name = "proximal"
        params = {"mu": Param(float, default=0.01, minimum=0, client=True), "server_lr": Param(float, default=1.0)}

    monkeypatch.setitem(AGGREGATORS, "proximal", Proximal)
    config = RoundConfig.from_dict({"aggregator": "proximal", "aggregator_kwargs": {"server_lr": 0.5},
                                    "clients_required": 3, "round_timeout": 9, "task": {"epochs": 2}})
    assert json.loads(config.task_json()) == {"task": {"epochs": 2}, "strategy": {"mu": 0.01}}
    with_mu = RoundConfig.from_dict({"aggregator": "proximal", "aggregator_kwargs": {"mu": 0.2}})
    assert with_mu.client_settings() == {"mu": 0.2}
    assert json.loads(RoundConfig().task_json()) == {"task": {}, "strategy": {}}


@settings(max_examples=200, deadline=None)
@given(requested=st.integers(1, 2000), active=st.lists(st.integers(1, 1000), min_size=1, max_size=8))
def test_the_shares_add_up_to_the_clients_requested(requested: int, active: list[int]) -> None:
    """Rounding each combiner's share alone asked 8 of the 9 clients of two combiners of 6."""
    config = RoundConfig.from_dict({"clients_requested": requested})
    shares = CombinerQuorum.share_out(config, {f"c{i}": n for i, n in enumerate(active)})
    asked = [q.clients_requested for q in shares.values()]
    exact = [requested * n / sum(active) for n in active]
    assert all(abs(a - e) < 1 or (a == 1 and e < 1) for a, e in zip(asked, exact))
    assert requested <= sum(asked) <= requested + len(active)
    if all(e >= 1 for e in exact):  # no combiner raised to one: exactly what the session asks
        assert sum(asked) == requested


def test_the_combiner_quorum_is_shared_out_and_its_request_fields_checked() -> None:
    config = RoundConfig.from_dict({"clients_required": 4, "clients_requested": 6, "wait_for_clients": 60})
    assert CombinerQuorum.share_out(config, {"a": 2, "b": 2}) == {"a": CombinerQuorum(1, 3, COMBINER_WAIT_S),
                                                                  "b": CombinerQuorum(1, 3, COMBINER_WAIT_S)}
    short = RoundConfig.from_dict({"wait_for_clients": 2})
    assert CombinerQuorum.share_out(short, {"a": 1})["a"].wait_for_clients == 2
    # unset fields: the session's own settings (a caller driving one combiner alone)
    assert CombinerQuorum.of_request(config, 0, 0, 0.0) == CombinerQuorum(4, 6, 60.0)
    with pytest.raises(RoundConfigError, match="quorum"):
        CombinerQuorum.of_request(config, -1, 0, 0.0)
    with pytest.raises(RoundConfigError, match="quorum"):
        CombinerQuorum.of_request(config, 1, 0, float("nan"))


def test_the_reducer_scores_each_new_global_model_on_the_operators_held_out_set(
        procs: ProcessGroup, tmp_path: Path) -> None:
    """FEDTIER_REDUCER_EVAL_PROJECT/_DATA: the reducer runs the project's validate once per
    round on the committed model; its metrics are the round's reducer_metrics in the API."""
    net = Network(procs, tmp_path)
    held_out = tmp_path / "held-out"
    held_out.mkdir()
    net.env.update(FEDTIER_REDUCER_EVAL_PROJECT=str(TEST_PROJECTS / "numpy_shift"),
                   FEDTIER_REDUCER_EVAL_DATA=str(held_out))
    net.seeded_with_clients(2)
    done = net.finished(net.start(rounds=2, clients_required=2))
    assert done["rounds_succeeded"] == 2, net.get("/api/v1/rounds")
    rounds = sorted(net.get("/api/v1/rounds"), key=lambda r: r["round"])
    # numpy_shift: clients add 1 and 2 with weights 10 and 20 to a 3x3 zero seed: +5/3 a round
    assert [r["reducer_metrics"]["weight_sum"] for r in rounds] == [pytest.approx(15.0), pytest.approx(30.0)]
    assert all(r["metrics"] == {} and "reducer_evaluation" in r["timings"] for r in rounds)  # validate: False


def test_the_reducer_evaluation_gets_the_task_context_with_the_data(tmp_path: Path, monkeypatch) -> None:
    from fedtier.reducer.evaluation import EvaluationError, ReducerEvaluation

    log_file = tmp_path / "probe.jsonl"
    monkeypatch.setenv("PROBE_LOG", str(log_file))
    model = tmp_path / "model"
    model.write_bytes(b"not read by the probe")
    evaluation = ReducerEvaluation(PROBE, str(tmp_path))
    try:
        assert evaluation.run(model, 3, "s-1", {"epochs": 2}, timeout=60) == {"num_examples": 1.0}
        assert evaluation.run(model, 4, "s-1", {"epochs": 2}, timeout=60) == {"num_examples": 1.0}
        seen = [json.loads(line) for line in log_file.read_text().splitlines()]
        assert seen[0] | {"round_id": "", "pid": 0} == {
            "pid": 0, "kind": "validate", "client": "reducer", "round_number": 3, "session_id": "s-1", "round_id": "",
            "config": {"epochs": 2}, "settings": {}, "data_path": str(tmp_path)}
        assert seen[1]["round_number"] == 4
        assert len({line["pid"] for line in seen}) == 1 and seen[0]["pid"] != os.getpid()  # one worker, kept
    finally:
        evaluation.close()
    monkeypatch.delenv("PROBE_LOG")  # the probe fails: the error says so, nothing is returned
    failing = ReducerEvaluation(PROBE, str(tmp_path))
    try:
        with pytest.raises(EvaluationError, match="validate failed: KeyError"):
            failing.run(model, 3, "s-1", {}, timeout=60)
    finally:
        failing.close()


def test_the_reducer_evaluation_settings_come_together() -> None:
    from fedtier.config import ConfigError, Settings

    with pytest.raises(ConfigError, match="FEDTIER_REDUCER_EVAL_PROJECT and FEDTIER_REDUCER_EVAL_DATA"):
        Settings.from_env({"FEDTIER_REDUCER_EVAL_DATA": "/tmp"})
    with pytest.raises(ConfigError, match="FEDTIER_REDUCER_EVAL_PROJECT names"):
        Settings.from_env({"FEDTIER_REDUCER_EVAL_DATA": "/tmp", "FEDTIER_REDUCER_EVAL_PROJECT": "/nonexistent"})


def test_a_sampling_seed_repeats_the_clients_asked_and_is_bounded() -> None:
    from fedtier.combiner.runner import choose_clients

    names = [f"client-{k:03d}" for k in range(200)]
    fresh = random.Random()
    first = choose_clients(names, 10, 7, 3, "c0", fresh)
    assert choose_clients(names, 10, 7, 3, "c0", random.Random()) == first  # the same run, again
    others = [choose_clients(names, 10, 7, r, "c0", fresh) for r in (4, 5)] + [
        choose_clients(names, 10, 7, 3, "c1", fresh), choose_clients(names, 10, 8, 3, "c0", fresh)]
    assert all(sorted(o) != sorted(first) for o in others)  # another round, combiner or seed
    assert len(set(first)) == 10 and set(first) <= set(names)
    assert choose_clients(names[:4], 10, 7, 3, "c0", fresh) and len(choose_clients(names[:4], 10, 7, 3, "c0",
                                                                                    fresh)) == 4
    unseeded = {tuple(choose_clients(names, 10, 0, 3, "c0", random.Random(k))) for k in range(3)}
    assert len(unseeded) == 3  # 0: the runner's own generator, a fresh draw
    assert RoundConfig.from_dict({"sampling_seed": 5}).sampling_seed == 5
    for bad in (-1, 2 ** 31, 1.5, "x", True):
        with pytest.raises(RoundConfigError, match="sampling_seed"):
            RoundConfig.from_dict({"sampling_seed": bad})
