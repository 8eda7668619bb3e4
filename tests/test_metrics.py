"""Prometheus metrics: scraped from a real reducer and a real combiner after a real round,
parsed with prometheus_client's own parser; the Grafana dashboard asks only for what they export."""
from __future__ import annotations

import io
import json
import os
import re
import socket
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, TEST_PROJECTS, ProcessGroup, free_port, wait_for_port
from fedtier.config import ConfigError, Settings
from fedtier.helpers import get_helper
from fedtier.proto import fedtier_pb2 as pb
from fedtier.proto import fedtier_pb2_grpc as rpc
from fedtier.transport.streams import file_chunks
from fedtier.transport.wire import ModelTransferStub
from test_faults import wait_until

SHIFT = str(TEST_PROJECTS / "numpy_shift")
DASHBOARD = ROOT / "compose" / "grafana" / "dashboards" / "fedtier.json"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample of a /metrics page: (name, sorted labels) -> value, by the official parser."""
    reply = requests.get(url, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(reply.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A reducer, a combiner with its metrics port, three numpy_shift clients, and one session
    of one round in which client-1 claims 10**12 examples (capped) and client-2's update is NaN
    (rejected as invalid); scraped once the session has ended."""
    tmp = tmp_path_factory.mktemp("metrics")
    procs = ProcessGroup(tmp)
    env = {"FEDTIER_DATA_DIR": str(tmp / "data")}
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, proc=procs.start("reducer", "reducer", "--host", "127.0.0.1", "--port", str(port),
                                             env=env))
        combiner = procs.start("c0", "combiner", "--name", "c0", "--host", "127.0.0.1", "--port", str(grpc_port),
                               "--reducer", url, "--heartbeat-interval", "0.3",
                               env={**env, "FEDTIER_METRICS_PORT": str(metrics_port)})  # as compose sets it
        wait_for_port(metrics_port, proc=combiner)
        wait_until(lambda: requests.get(url + "/api/v1/combiners", timeout=5).json(), what="c0 registered",
                   procs=procs)
        seed = get_helper("numpy").to_bytes({"w": np.zeros((3, 3), np.float32)})
        assert requests.post(url + "/seed", files={"seed": ("seed", io.BytesIO(seed))}, timeout=10).status_code == 201
        for i in range(3):
            procs.start(f"client-{i}", "client", "--reducer", url, "--project", SHIFT, "--name", f"client-{i}",
                        "--partition", f"{i}/3", env=env)
        wait_until(lambda: sum(c.get("active", False) for c in requests.get(url + "/api/v1/clients", timeout=5).json())
                   == 3, what="3 clients active", procs=procs)
        reply = requests.post(url + "/start", timeout=10, json={
            "rounds": 1, "clients_required": 2, "validate": True, "round_timeout": 60,
            "task": {"liar_client": "client-1", "nan_client": "client-2"}})
        assert reply.status_code == 201, reply.text
        session = reply.json()["session_id"]
        done = wait_until(lambda: (s := requests.get(f"{url}/api/v1/sessions/{session}", timeout=5).json())
                          ["status"] != "running" and s, what="the session to end", procs=procs)
        assert done["status"] == "succeeded", (done, procs.dump_logs())
        yield {"url": url, "grpc": f"127.0.0.1:{grpc_port}", "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
               "reducer": scrape(url + "/metrics"), "combiner": scrape(f"http://127.0.0.1:{metrics_port}/metrics"),
               "tmp": tmp, "procs": procs}
    finally:
        procs.stop_all()


def test_reducer_metrics_after_a_round(network: dict) -> None:
    r = network["reducer"]
    assert value(r, "fedtier_reducer_rounds_total", outcome="success") == 1
    assert value(r, "fedtier_reducer_rounds_total", outcome="failed") == 0
    assert value(r, "fedtier_reducer_sessions_total", outcome="succeeded") == 1
    for phase in ("wait_clients", "transfer", "training", "aggregation", "validation", "total"):
        assert value(r, "fedtier_reducer_round_phase_seconds_count", phase=phase) == 1, phase
    total = value(r, "fedtier_reducer_round_phase_seconds_sum", phase="total")
    assert total > 0 and total >= value(r, "fedtier_reducer_round_phase_seconds_sum", phase="training")
    assert value(r, "fedtier_reducer_clients_active", combiner="c0") == 3
    assert value(r, "fedtier_reducer_combiners_online") == 1
    seed_size = len(get_helper("numpy").to_bytes({"w": np.zeros((3, 3), np.float32)}))
    # the seed pushed, the round's model fetched; the validated model is c0's own aggregate: adopted, not sent
    assert value(r, "fedtier_reducer_model_bytes_total", direction="pushed") == seed_size
    assert value(r, "fedtier_reducer_model_bytes_total", direction="fetched") == seed_size
    assert value(r, "fedtier_reducer_capped_weights_total", tier="client") == 1  # the liar
    assert value(r, "fedtier_reducer_capped_weights_total", tier="combiner") == 0
    store_errors = {labels: v for (name, labels), v in r.items() if name == "fedtier_reducer_store_errors_total"}
    assert len(store_errors) == 11 and not any(store_errors.values())  # every kind shown, at 0


def test_combiner_metrics_after_a_round(network: dict) -> None:
    c = network["combiner"]
    assert value(c, "fedtier_combiner_clients_connected") == 3
    assert value(c, "fedtier_combiner_clients_active") == 3
    assert value(c, "fedtier_combiner_updates_accepted_total") == 2
    assert value(c, "fedtier_combiner_updates_rejected_total", stage="report", reason="invalid") == 1  # the NaN
    assert sum(v for (name, _), v in c.items() if name == "fedtier_combiner_updates_rejected_total") == 1
    assert value(c, "fedtier_combiner_rounds_total", kind="training", outcome="success") == 1
    assert value(c, "fedtier_combiner_rounds_total", kind="validation", outcome="success") == 1
    assert value(c, "fedtier_combiner_round_seconds_count", kind="training") == 1
    assert value(c, "fedtier_combiner_capped_updates_total") == 1
    assert value(c, "fedtier_combiner_model_bytes_total", direction="received") > 0  # the seed and 3 updates
    assert value(c, "fedtier_combiner_model_bytes_total", direction="sent") > 0  # to the clients and the reducer


def test_refusals_outside_a_round_are_counted_under_a_fixed_reason(network: dict) -> None:
    """An upload from a client with no open task and a report with no round: each counted
    under its reason, never under its sender's name."""
    path = network["tmp"] / "intruder-update"
    get_helper("numpy").save({"w": np.ones((3, 3), np.float32)}, path)
    with grpc.insecure_channel(network["grpc"]) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            ModelTransferStub(channel).UploadModel(file_chunks(path, client_name="intruder"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        ack = rpc.CombinerStub(channel).ReportUpdate(pb.ModelUpdate(client_name="intruder", task_id="t", round_id="r",
                                                                    model_id="m", num_examples=1), timeout=10)
        assert not ack.ok
    c = scrape(network["metrics"])
    assert value(c, "fedtier_combiner_updates_rejected_total", stage="upload", reason="no_task") == 1
    assert value(c, "fedtier_combiner_updates_rejected_total", stage="report", reason="no_round") == 1
    assert "intruder" not in requests.get(network["metrics"], timeout=10).text


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (fedtier's all start with fedtier_)."""
    return set(re.findall(r"\bfedtier_[a-z0-9_]+\b", expr))


def test_the_dashboard_asks_only_for_exported_metrics(network: dict) -> None:
    exported = {name for name, _ in network["reducer"]} | {name for name, _ in network["combiner"]}
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    asked: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            names = promql_metric_names(target["expr"])
            assert names, f"panel {panel['title']!r}: {target['expr']!r} selects no fedtier metric"
            missing = names - exported
            assert not missing, f"panel {panel['title']!r} asks for {sorted(missing)}, which nothing exports"
            asked |= names
    # the federation at a glance: every family the issue names is on the dashboard
    for wanted in ("fedtier_reducer_rounds_total", "fedtier_reducer_round_phase_seconds_bucket",
                   "fedtier_reducer_clients_active", "fedtier_combiner_updates_rejected_total",
                   "fedtier_reducer_model_bytes_total", "fedtier_combiner_model_bytes_total",
                   "fedtier_reducer_store_errors_total", "fedtier_reducer_capped_weights_total"):
        assert wanted in asked, f"the dashboard does not show {wanted}"


def test_the_name_check_would_catch_a_typo() -> None:
    assert promql_metric_names('sum(rate(fedtier_reducer_round_total{outcome="x"}[5m]))') == \
        {"fedtier_reducer_round_total"}


# ---------------------------------------------------------------- in-process: read policy, store errors
@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    from fedtier.identity import generate_keypair

    return generate_keypair(tmp_path / "keys")


def test_metrics_follow_the_read_policy_and_the_metrics_token_opens_only_them(tmp_path: Path,
                                                                              keys: tuple[Path, Path]) -> None:
    from fedtier.reducer.app import create_app

    settings = Settings(data_dir=tmp_path / "r", admin_auth_token="admin-m", public_read=False,
                        token_signing_key=str(keys[0]), token_verify_key=str(keys[1]), metrics_token="scrape-m")
    app = create_app(settings, poll_interval_s=None)
    try:
        web = app.test_client()
        refused = web.get("/metrics")
        assert refused.status_code == 401 and "Location" not in refused.headers  # a program gets a 401, not /login
        assert "FEDTIER_METRICS_TOKEN" in refused.get_json()["error"]
        assert web.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        for scheme in ("Bearer", "Token"):
            ok = web.get("/metrics", headers={"Authorization": f"{scheme} scrape-m"})
            assert ok.status_code == 200 and "fedtier_reducer_rounds_total" in ok.text
        assert web.get("/metrics", headers={"Authorization": "Token admin-m"}).status_code == 200
        assert web.get("/api/v1/status", headers={"Authorization": "Bearer scrape-m"}).status_code == 401
        assert web.post("/start", json={}, headers={"Authorization": "Bearer scrape-m"}).status_code == 401
    finally:
        app.extensions["fedtier"].close()


def test_the_metrics_token_must_be_its_own() -> None:
    with pytest.raises(ConfigError, match="FEDTIER_METRICS_TOKEN"):
        Settings.from_env({"FEDN_ALLIANCE_ADMIN_AUTH_TOKEN": "same", "FEDTIER_METRICS_TOKEN": "same"})
    with pytest.raises(ConfigError, match="FEDTIER_METRICS_PORT"):
        Settings.from_env({"FEDTIER_METRICS_PORT": "70000"})


def test_store_errors_are_counted_by_kind_and_a_scrape_still_answers(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from fedtier.reducer.app import create_app
    from fedtier.storage.state_store import StateStoreError

    app = create_app(Settings(data_dir=tmp_path / "r"), poll_interval_s=None)
    reducer = app.extensions["fedtier"]
    try:
        def down(*args: object, **kwargs: object) -> None:
            raise StateStoreError("cannot reach MongoDB at mongo:27017")

        monkeypatch.setattr(reducer.state, "find", down)
        web = app.test_client()
        assert web.get("/api/v1/combiners").status_code == 503
        page = web.get("/metrics")  # the network view cannot be read: left out, the rest answers
        assert page.status_code == 200
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(page.text) for s in f.samples}
        assert samples[("fedtier_reducer_store_errors_total", (("kind", "other"), ("store", "state")))] == 1
        assert ("fedtier_reducer_rounds_total", (("outcome", "success"),)) in samples
        assert not any(name == "fedtier_reducer_combiners_online" for name, _ in samples)
    finally:
        monkeypatch.undo()
        reducer.close()


def test_store_error_kinds_are_a_fixed_set() -> None:
    from fedtier.reducer.metrics import store_error_labels
    from fedtier.storage.model_store import ModelCorruptError, ModelNotFoundError, StorageFullError
    from fedtier.storage.state_store import StateStoreFullError

    assert store_error_labels(ModelCorruptError("x")) == ("model", "corrupt")
    assert store_error_labels(StorageFullError("x")) == ("model", "full")
    assert store_error_labels(ModelNotFoundError("x")) == ("model", "not_found")
    assert store_error_labels(StateStoreFullError("x")) == ("state", "full")
    assert store_error_labels(ValueError("x")) is None


@pytest.mark.parametrize("port", ["70000", "-1", "ninety"])
def test_a_bad_metrics_port_is_refused_by_name(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    from fedtier.launch.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["combiner", "--name", "c", "--metrics-port", port])
    assert "--metrics-port" in capsys.readouterr().err
    assert build_parser().parse_args(["combiner", "--name", "c", "--metrics-port", "9464"]).metrics_port == 9464


def test_a_taken_metrics_port_stops_the_combiner_before_it_serves(tmp_path: Path) -> None:
    from fedtier.combiner.server import CombinerServer, CombinerSettings

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = CombinerServer(CombinerSettings(name="cm", host="127.0.0.1", port=0, work_dir=tmp_path / "c",
                                                 metrics_port=taken.getsockname()[1]))
        with pytest.raises(RuntimeError, match="--metrics-port"):
            server.start()
    server.stop(0)


def test_two_combiners_in_one_process_keep_their_own_metrics(tmp_path: Path) -> None:
    from fedtier.combiner.server import CombinerServer, CombinerSettings

    servers = [CombinerServer(CombinerSettings(name=f"c{i}", host="127.0.0.1", port=0, work_dir=tmp_path / f"c{i}",
                                               metrics_port=0)) for i in range(2)]
    try:
        for server in servers:
            server.start()
        servers[0].metrics.accepted.inc(5)
        pages = [scrape(f"http://127.0.0.1:{s.metrics_port}/metrics") for s in servers]
        assert [value(p, "fedtier_combiner_updates_accepted_total") for p in pages] == [5, 0]
    finally:
        for server in servers:
            server.stop(0)


def test_a_model_found_damaged_mid_download_is_counted_once(tmp_path: Path) -> None:
    """Damage found after the status line went out never reaches the error handlers
    (reducer/downloads.py): it is counted where the download is cut; damage found before
    the first byte is counted by the handler. Each once."""
    from fedtier.reducer.app import create_app
    from fedtier.storage.model_store import ModelCorruptError
    from test_store_integrity import flip_byte, seeded

    app = create_app(Settings(data_dir=tmp_path), helper="numpy", poll_interval_s=None)
    metrics = app.extensions["fedtier"].metrics

    def corrupt() -> float:
        return metrics.registry.get_sample_value("fedtier_reducer_store_errors_total",
                                                 {"store": "model", "kind": "corrupt"})
    try:
        model, data_file = seeded(app, 4)  # past the first two chunks: sent before it is verified whole
        flip_byte(data_file, model["size"] - 10)
        reply = app.test_client().get(f"/api/v1/models/{model['id']}/download", buffered=False)
        assert reply.status_code == 200 and corrupt() == 0
        with pytest.raises(ModelCorruptError):
            reply.get_data()  # the stream breaks at its last chunk
        assert corrupt() == 1
        os.truncate(data_file, model["size"] - 1)  # now known before the first byte: the handler's
        assert app.test_client().get(f"/api/v1/models/{model['id']}/download").status_code == 500
        assert corrupt() == 2
    finally:
        app.extensions["fedtier"].close()
