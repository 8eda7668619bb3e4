"""Real processes: a client that claims 10**12 examples does not own the average, at either
tier, and an update trained from another model than the round's is refused."""
from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import requests

from conftest import TEST_PROJECTS, ProcessGroup
from fedtier.helpers import get_helper
from fedtier.proto import fedtier_pb2 as pb
from fedtier.proto import fedtier_pb2_grpc as rpc
from fedtier.transport.streams import file_chunks
from fedtier.transport.wire import ModelTransferStub
from test_combiner_network import Shared, round_request, shared, shift_network, wait_active  # noqa: F401 (fixtures)
from test_faults import Network, wait_until

SHIFT = str(TEST_PROJECTS / "numpy_shift")
helper = get_helper("numpy")
LIAR = 10**12
# numpy_shift: client i adds i + 1 and reports 10 (i + 1) examples; the liar, client-2, claims
# 10**12. Reported [10, 20, 10**12]: lower median 20, cap 10 x 20 = 200.
CAPPED_SHIFT = (10 * 1 + 20 * 2 + 200 * 3) / 230


def test_a_liar_is_capped_at_its_combiner(shared: Shared, tmp_path: Path) -> None:
    combiner, seed = shared.combiner, shared.seed  # one combiner, client-0..2 (the module's network)
    result = combiner.start_round(round_request(pb.TRAINING, "seed", task={"liar_client": "client-2"}), timeout=120)
    assert result.success, result.error
    assert result.num_examples == 230
    used = {u.client_name: (u.num_examples, u.weight_used, u.capped) for u in result.updates}
    assert used == {"client-0": (10, 10, False), "client-1": (20, 20, False), "client-2": (LIAR, 200, True)}
    combiner.download_model(result.model_id, tmp_path / "combined")
    combined = helper.load(tmp_path / "combined")
    for name, value in seed.items():
        np.testing.assert_allclose(combined[name], value + CAPPED_SHIFT, rtol=1e-6)  # not value + 3
    assert "client-2 reported 1000000000000 examples; counted as 200" in shared.procs.log("combiner")


def test_a_liar_alone_on_its_combiner_is_capped_by_the_reducer(procs: ProcessGroup, tmp_path: Path) -> None:
    """client-2 is its combiner's only client, so that combiner's cap (over one weight)
    lets it through; the reducer's cap over every client of the round does not."""
    net = Network(procs, tmp_path)
    net.reducer()
    for name in ("c0", "c1"):
        net.combiner(name)
    wait_until(lambda: len(net.get("/api/v1/combiners")) == 2, what="two combiners registered", procs=procs)
    net.seed()
    for i, combiner in [(0, "c0"), (1, "c0"), (2, "c1")]:
        procs.start(f"client-{i}", "client", "--combiner", f"127.0.0.1:{net.combiner_ports[combiner]}",
                    "--project", SHIFT, "--name", f"client-{i}", "--partition", f"{i}/3",
                    "--work-dir", str(tmp_path / f"client-{i}"), env=net.env)
    wait_until(lambda: sum(c.get("active_clients", 0) for c in net.get("/api/v1/combiners")) == 3,
               what="three clients active", procs=procs)
    done = net.finished(net.start(rounds=1, clients_required=3, task={"liar_client": "client-2"}))
    round_doc = net.get(f"/api/v1/rounds/{done['round_ids'][0]}")
    assert round_doc["status"] == "success", round_doc["error"]
    model = requests_model(net, round_doc["model_out"])
    np.testing.assert_allclose(model["w"], np.full((3, 3), CAPPED_SHIFT), rtol=1e-6)  # the seed is zeros
    assert round_doc["capped"] == [{"client": "client-2", "combiner": "c1", "reported": LIAR, "used": 200}]
    assert round_doc["capped_combiners"] == [{"combiner": "c1", "reported": LIAR, "used": 200}]
    assert "client client-2 (combiner c1) reported 1000000000000 examples; counted as 200" in procs.log("reducer")


def requests_model(net: Network, model_id: str) -> dict[str, np.ndarray]:
    reply = requests.get(f"{net.url}/api/v1/models/{model_id}/download", timeout=10)
    assert reply.status_code == 200, reply.text
    return helper.from_bytes(reply.content)


class StaleClient:
    """A client that answers its train task with an update it says it trained from another
    model: the real protocol over a real socket, only the parent is not the task's model."""

    def __init__(self, address: str, update: Path, parent: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = rpc.CombinerStub(self.channel)
        self.transfer = ModelTransferStub(self.channel)
        self.update, self.parent = update, parent
        self.acks: list[pb.Ack] = []
        self.stub.Connect(pb.ConnectRequest(client_name="stale"))
        self.stream = self.stub.TaskStream(pb.TaskStreamRequest(client_name="stale"))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            for task in self.stream:
                uploaded = self.transfer.UploadModel(file_chunks(self.update, client_name="stale"))
                self.acks.append(self.stub.ReportUpdate(pb.ModelUpdate(
                    client_name="stale", task_id=task.task_id, round_id=task.round_id, model_id=uploaded.model_id,
                    parent_model_id=self.parent, num_examples=10)))
        except grpc.RpcError:
            pass  # closed at the end of the test

    def close(self) -> None:
        self.stream.cancel()
        self.channel.close()


def test_a_stale_update_is_refused_and_the_round_completes(shared: Shared, tmp_path: Path) -> None:
    combiner, seed = shared.combiner, shared.seed  # client-0..2 of the module's network, and the stale one
    helper.save({k: v + 1000 for k, v in seed.items()}, tmp_path / "stale-update")
    stale = StaleClient(combiner.address, tmp_path / "stale-update", parent="an-older-model")
    try:
        wait_active(combiner, 4)
        result = combiner.start_round(round_request(pb.TRAINING, "seed", clients_required=3), timeout=120)
    finally:
        stale.close()
    assert result.success, result.error
    assert sorted(u.client_name for u in result.updates) == ["client-0", "client-1", "client-2"]
    assert [a.ok for a in stale.acks] == [False] and "stale update" in stale.acks[0].message
    assert any(f.startswith("stale: update rejected: stale update: trained from model 'an-older-model', "
                            "but this round's model is 'seed'") for f in result.failures), result.failures
    combiner.download_model(result.model_id, tmp_path / "combined")
    np.testing.assert_allclose(helper.load(tmp_path / "combined")["w"], seed["w"] + (10 * 1 + 20 * 2 + 30 * 3) / 60,
                               rtol=1e-6)
