"""A real combiner process and real client processes on loopback, driven like the reducer drives them."""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import pytest

from conftest import TEST_PROJECTS, ProcessGroup, free_port, wait_for_port
from fedtier.helpers import get_helper
from fedtier.proto import fedtier_pb2 as pb
from fedtier.reducer.combiner_client import CombinerClient

SHIFT = TEST_PROJECTS / "numpy_shift"
numpy_helper = get_helper("numpy")


def start_network(procs: ProcessGroup, tmp_path: Path, clients: int, project: Path = SHIFT,
                  extra_client_args: tuple[str, ...] = ()) -> CombinerClient:
    port = free_port()
    combiner = procs.start("combiner", "combiner", "--name", "c1", "--host", "127.0.0.1", "--port", str(port),
                           "--work-dir", str(tmp_path / "c1"), "--heartbeat-interval", "0.3",
                           "--heartbeat-timeout", "10")
    wait_for_port(port, proc=combiner)
    for i in range(clients):
        procs.start(f"client-{i}", "client", "--combiner", f"127.0.0.1:{port}", "--project", str(project),
                    "--name", f"client-{i}", "--partition", f"{i}/{clients}",
                    "--work-dir", str(tmp_path / f"client-{i}"), *extra_client_args)
    client = CombinerClient(f"127.0.0.1:{port}")
    wait_active(client, clients)
    return client


def wait_active(combiner: CombinerClient, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while combiner.status().active_clients < count:
        assert time.monotonic() < deadline, f"{count} clients not active after {timeout}s"
        time.sleep(0.1)


def round_request(kind: int, model_id: str, **config: object) -> pb.RoundRequest:
    base = {"clients_required": 3, "round_timeout": 60, "wait_for_clients": 60}
    base.update(config)
    return pb.RoundRequest(session_id="s", round_id=uuid.uuid4().hex, kind=kind, model_id=model_id,
                           config_json=json.dumps(base))


def push_seed(combiner: CombinerClient, tmp_path: Path) -> dict[str, np.ndarray]:
    seed = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, dtype=np.float32)}
    numpy_helper.save(seed, tmp_path / "seed")
    combiner.upload_model(tmp_path / "seed", "seed")
    return seed


class Shared(NamedTuple):
    """The module's network of one combiner and three numpy_shift clients; ``seed`` is pushed as "seed"."""
    procs: ProcessGroup
    combiner: CombinerClient
    work: Path  # the combiner's work dir is work/c1
    seed: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def shift_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    """Started once for the tests below that only drive rounds: none stops or breaks a process,
    and each waits for all three clients before its rounds (each start cost several seconds)."""
    work = tmp_path_factory.mktemp("shift-network")
    group = ProcessGroup(work)
    try:
        yield Shared(group, start_network(group, work, clients=3), work, {})
    finally:
        group.stop_all()


@pytest.fixture
def shared(shift_network: Shared, request: pytest.FixtureRequest) -> Iterator[Shared]:
    """The shared network with all three clients active and the seed pushed (again: the combiner
    keeps only the models its rounds need); its logs printed if the test fails."""
    wait_active(shift_network.combiner, 3)
    network = shift_network._replace(seed=push_seed(shift_network.combiner, shift_network.work))
    yield network
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(network.procs.dump_logs())


def test_training_round_is_exact_weighted_average(shared: Shared) -> None:
    combiner, seed, tmp_path = shared.combiner, shared.seed, shared.work
    joined = {c.name: c.rounds_joined for c in combiner.status().clients}
    result = combiner.start_round(round_request(pb.TRAINING, "seed"), timeout=120)
    assert result.success, result.error
    # client i adds i+1 and weighs 10*(i+1): mean shift = (1*10 + 2*20 + 3*30) / 60
    assert result.num_examples == 60
    assert sorted(u.client_name for u in result.updates) == ["client-0", "client-1", "client-2"]
    combiner.download_model(result.model_id, tmp_path / "combined")
    combined = numpy_helper.load(tmp_path / "combined")
    for name, value in seed.items():
        np.testing.assert_allclose(combined[name], value + 140 / 60, rtol=1e-6)
    assert {"wait_clients", "tasks", "aggregation", "total"} <= set(result.timings)

    validation = combiner.start_round(round_request(pb.VALIDATION, result.model_id), timeout=120)
    assert validation.success, validation.error
    sums = [json.loads(v.metrics_json)["weight_sum"] for v in validation.validations]
    expected = float(sum((v + 140 / 60).sum() for v in seed.values()))
    assert sums == [pytest.approx(expected, rel=1e-6)] * 3
    status = combiner.status()
    assert status.active_clients == 3 and status.last_model_id == result.model_id
    assert {c.name: c.rounds_joined - joined[c.name] for c in status.clients} == \
        {name: 1 for name in joined}  # the training round counts, the validation round not

    # the reducer commits that model and pushes it back under the trail's id: adopted, not sent
    digest = hashlib.sha256((tmp_path / "combined").read_bytes()).hexdigest()
    assert not combiner.adopt_model(tmp_path / "combined", "trail-2", "0" * 64)
    assert combiner.adopt_model(tmp_path / "combined", "trail-2", digest)
    assert "model trail-2 adopted" in shared.procs.log("combiner")
    again = combiner.start_round(round_request(pb.TRAINING, "trail-2"), timeout=120)
    assert again.success, again.error
    combiner.download_model(again.model_id, tmp_path / "again")
    np.testing.assert_allclose(numpy_helper.load(tmp_path / "again")["b"], seed["b"] + 2 * 140 / 60, rtol=1e-6)

    # a robust combiner tier on the same network: the median of the shifts 1, 2, 3 is 2, the
    # weight returned is still every example; the updates it kept on disk are gone after the round
    median = combiner.start_round(round_request(pb.TRAINING, again.model_id,
                                                aggregation={"combiner": {"name": "median"}}), timeout=120)
    assert median.success, median.error
    assert median.num_examples == 60
    combiner.download_model(median.model_id, tmp_path / "median")
    np.testing.assert_allclose(numpy_helper.load(tmp_path / "median")["b"],
                               numpy_helper.load(tmp_path / "again")["b"] + 2, rtol=1e-6)
    assert not [p for p in (tmp_path / "c1").rglob("kept-*/*")]
    # Krum with f = 1 needs more than 4 updates: 3 fail the round, naming the numbers
    krum = combiner.start_round(round_request(pb.TRAINING, again.model_id,
                                              aggregation={"combiner": {"name": "krum", "f": 1}}), timeout=120)
    assert not krum.success and "needs more than 2f + 2 = 4 updates, and this round has 3" in krum.error


@pytest.mark.parametrize("bad", ["nan_client", "wrong_shape_client"])
def test_malformed_update_is_rejected_and_round_completes(shared: Shared, tmp_path: Path, bad: str) -> None:
    combiner, seed = shared.combiner, shared.seed
    logged = len(shared.procs.log("combiner"))
    result = combiner.start_round(round_request(pb.TRAINING, "seed", clients_required=2,
                                                task={bad: "client-1"}), timeout=120)
    assert result.success, result.error
    assert sorted(u.client_name for u in result.updates) == ["client-0", "client-2"], result.failures
    assert any(f.startswith("client-1: update rejected") for f in result.failures), result.failures
    combiner.download_model(result.model_id, tmp_path / "combined")
    combined = numpy_helper.load(tmp_path / "combined")
    np.testing.assert_allclose(combined["w"], seed["w"] + (1 * 10 + 3 * 30) / 40, rtol=1e-6)
    assert "update from client-1 rejected" in shared.procs.log("combiner")[logged:]  # logged, naming the client


def test_round_fails_cleanly_without_quorum(shared: Shared) -> None:
    combiner = shared.combiner
    # a failing client leaves 2 updates where 3 are required: the round fails with a reason
    result = combiner.start_round(round_request(pb.TRAINING, "seed", clients_required=3,
                                                task={"fail_client": "client-0"}), timeout=120)
    assert not result.success
    assert "only 2 of 3 required updates" in result.error
    assert any("told to fail" in f for f in result.failures)
    # asking for more clients than exist fails after the bounded wait, naming the count
    result = combiner.start_round(round_request(pb.TRAINING, "seed", clients_required=5, wait_for_clients=1),
                                  timeout=60)
    assert not result.success and "only 3 of 5 required clients" in result.error


def test_command_entry_points_and_client_reconnect(procs: ProcessGroup, tmp_path: Path) -> None:
    """FEDn-style subprocess entry points; a combiner restart is survived by the clients."""
    project = tmp_path / "cmd_project"
    project.mkdir()
    for f in ("shift.py", "train.py", "validate.py"):
        (project / f).write_text((SHIFT / f).read_text())
    (project / "fedn.yaml").write_text("helper: numpy\nentry_points:\n  train:\n    command: python train.py\n"
                                       "  validate:\n    command: python validate.py\n")
    combiner = start_network(procs, tmp_path, clients=2, project=project)
    seed = push_seed(combiner, tmp_path)
    result = combiner.start_round(round_request(pb.TRAINING, "seed", clients_required=2), timeout=120)
    assert result.success, result.error
    assert result.num_examples == 30

    # restart the combiner on the same port: clients reconnect by themselves
    port = int(combiner.address.rsplit(":", 1)[1])
    procs.kill("combiner")
    restarted = procs.start("combiner2", "combiner", "--name", "c1", "--host", "127.0.0.1", "--port", str(port),
                            "--work-dir", str(tmp_path / "c1b"), "--heartbeat-interval", "0.3",
                            "--heartbeat-timeout", "10")
    wait_for_port(port, proc=restarted)
    again = CombinerClient(f"127.0.0.1:{port}")
    push_seed(again, tmp_path)
    result = again.start_round(round_request(pb.TRAINING, "seed", clients_required=2, wait_for_clients=60),
                               timeout=120)
    assert result.success, result.error
    again.download_model(result.model_id, tmp_path / "after")
    np.testing.assert_allclose(numpy_helper.load(tmp_path / "after")["b"], seed["b"] + (10 + 40) / 30, rtol=1e-6)
