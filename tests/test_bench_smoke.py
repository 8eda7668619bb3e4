"""The benchmarks in bench/ still run: tiny sizes, sane outputs. Speed is not asserted.

Each benchmark runs as the command a person would type (so --help, the tables and
--json are exercised too) with sizes small enough to finish in seconds.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import positive, run_bench, stats_ok



@pytest.mark.parametrize("script", ["round_overhead.py", "transfer.py", "aggregation.py", "run_all.py",
                                    "network_page.py", "idle_clients.py", "flower_simulation.py"])
def test_help(script: str) -> None:
    done = run_bench(script, "--help", timeout=60)
    assert done.stdout.startswith("usage:") and "--json" in done.stdout


@pytest.mark.timeout(90)
def test_round_overhead_smoke(tmp_path: Path) -> None:
    out = tmp_path / "rounds.json"
    done = run_bench("round_overhead.py", "--clients", "2", "--rounds", "1", "--warmup", "0", "--params", "20k",
                     "--tiny-params", "100", "--sandbox", "1", "--sandbox-rounds", "1", "--json", str(out))
    assert "Round time" in done.stdout and "Through the reducer" in done.stdout
    result = json.loads(out.read_text())
    for key in ("direct", "tiny"):
        block = result[key]
        assert block["model_unchanged"] is True  # the no-op round gave back the exact input bytes
        assert block["rounds"] == 1
        for stat in ("round_s", "push_s", "start_round_s", "fetch_s", "raw_floor_s", "ratio_vs_raw_floor"):
            assert stats_ok(block[stat]), (key, stat, block[stat])
        assert set(block["combiner"]) == {"wait_clients", "tasks", "aggregation", "total"}
        assert all(stats_ok(block["clients"][p]) for p in ("download", "train", "upload"))
        assert block["cpu_per_round_s"]["combiner"] >= 0 and 0 <= block["cpu_busy_share"] < 10
    assert positive(result["ratio_vs_tiny"]) and stats_ok(result["rpc_floor_s"])
    (sandbox,) = result["sandbox"]
    assert sandbox["combiners"] == 1 and sandbox["rounds_succeeded"] == sandbox["rounds"] == 1
    assert stats_ok(sandbox["phases"]["total"]) and positive(sandbox["ratio_vs_direct"])
    assert result["ok"] is True


@pytest.mark.timeout(60)
def test_transfer_smoke(tmp_path: Path) -> None:
    out = tmp_path / "transfer.json"
    done = run_bench("transfer.py", "--sizes-mib", "1,2", "--repeats", "2", "--json", str(out))
    assert "ours/raw" in done.stdout
    result = json.loads(out.read_text())
    assert result["ok"] is True and len(result["sizes"]) == 2
    for size in result["sizes"]:
        assert size["checksums_ok"] is True  # both directions: the checksum the receiver computed matched
        for key in ("raw_upload", "ours_upload", "raw_download", "ours_download"):
            assert positive(size[key]["mib_s"]) and stats_ok(size[key]["seconds"])
        assert positive(size["upload_ratio"]) and positive(size["download_ratio"])
        assert all(positive(v) for v in size["components"].values())


@pytest.mark.timeout(60)
def test_aggregation_smoke(tmp_path: Path) -> None:
    out = tmp_path / "aggregation.json"
    done = run_bench("aggregation.py", "--params", "10k,50k", "--updates", "3", "--repeats", "1",
                     "--memory-updates", "4", "--json", str(out))
    assert "FedAvg per update" in done.stdout
    result = json.loads(out.read_text())
    assert [s["params"] for s in result["sizes"]] == [10_000, 50_000]
    for size in result["sizes"]:
        for key in ("fedavg", "fedavg_on_arrival", "arrival_check", "numpy_memory", "numpy_blocked", "numpy_files"):
            assert stats_ok(size[key]["seconds_per_update"])
        for key in ("ratio_vs_numpy_memory", "ratio_vs_numpy_blocked", "ratio_vs_numpy_files",
                    "on_arrival_ratio_vs_numpy_memory", "on_arrival_ratio_vs_numpy_blocked"):
            assert positive(size[key])
        # the check is part of the arrival figure, not left out of it
        assert (size["arrival_check"]["seconds_per_update"]["median"]
                < size["fedavg_on_arrival"]["seconds_per_update"]["median"])
        memory = size["memory"]
        assert [r["update"] for r in memory["per_update"]] == [1, 2, 3, 4]
        # the running mean is held (one model copy); the peak does not scale with updates
        assert memory["per_update"][-1]["traced_current_mib"] >= 0.9 * size["model_mib"]
        assert memory["peak_last_mib"] < 1.5 * memory["peak_first_mib"]


@pytest.mark.timeout(90)
def test_run_all_smoke(tmp_path: Path) -> None:
    out = tmp_path / "all.json"
    done = run_bench("run_all.py", "--smoke", "--only", "transfer,aggregation", "--json", str(out))
    assert "Summary" in done.stdout
    results = json.loads(out.read_text())
    assert results["ok"] is True and set(results["benchmarks"]) == {"transfer", "aggregation"}
    assert results["rows"] and all(len(row) == 6 and positive(row[-1]) for row in results["rows"])


@pytest.mark.timeout(120)
def test_strategies_smoke(tmp_path: Path) -> None:
    """bench/strategies.py through the real sandbox with MNIST: 2 clients, one of them Byzantine."""
    from conftest import SHARED

    if not (SHARED / "data" / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs ../shared/data/mnist")
    out = tmp_path / "strategies.json"
    done = run_bench("strategies.py", "--smoke", "--json", str(out))
    assert "Expected comparisons, as measured" in done.stdout
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert result["ok"] is True and run["ok"] is True
    assert (run["strategy"], run["partition"], run["attack"]) == ("fedavg", "iid", "50-spread")
    assert run["byzantine"]["clients"] == [{"client": "client-1", "combiner": "combiner-0"}]
    assert "client-1 on combiner-0" in done.stdout  # named in its table's title
    assert [r["round"] for r in run["rounds"]] == [1] and 0 <= run["final"] <= 1 and run["best"] == run["final"]
    assert positive(run["cpu_s"]) and positive(run["wall_s"])
    assert all(c["met"] is None for c in result["comparisons"])  # one run measures none of them


def test_strategies_comparisons_are_computed_from_the_runs() -> None:
    """The expectations are measured, never written in: the same code says met and not met."""
    import sys

    from conftest import BENCH

    sys.path.insert(0, str(BENCH))
    import strategies as bench

    def run(strategy: str, partition: str, attack: str, final: float) -> dict:
        return {"strategy": strategy, "settings": bench.STRATEGIES[strategy], "partition": partition,
                "attack": attack, "ok": True, "final": final}

    runs = [run("fedavg", "dirichlet", "none", 0.80), run("fedadam", "dirichlet", "none", 0.83),
            run("fedavg", "kclass", "none", 0.70), run("fedprox", "kclass", "none", 0.71),
            run("fedavg", "iid", "none", 0.95), run("fedavg", "iid", "30-one", 0.10),
            run("median", "iid", "30-one", 0.93), run("fedavg", "iid", "30-spread", None),
            run("median", "iid", "30-spread", 0.90)]
    verdicts = {c["claim"].split(":")[0]: c["met"] for c in bench.comparisons(runs)}
    assert verdicts["dirichlet"] is True and verdicts["kclass"] is False
    # 30-spread: FedAvg had no successful round (collapsed), but the best robust run is 5 points down
    assert verdicts["iid, 30-one"] is True and verdicts["iid, 30-spread"] is False
    assert verdicts["two classes per client"] is None


def test_flower_simulation_workload_is_the_projects(tmp_path: Path) -> None:
    """bench/flower_simulation.py without Flower or the lab: the partition the Flower app reads is
    exactly what test_projects/mnist-pytorch gives each client, the app's model is the project's,
    and the in-process FedAvg (the accuracy reference) trains and reports."""
    import importlib.util
    import sys

    import numpy as np
    import torch

    from conftest import BENCH, SHARED

    data_dir = SHARED / "data" / "mnist"
    if not (data_dir / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs ../shared/data/mnist (the MNIST IDX files)")
    sys.path.insert(0, str(BENCH))
    import flower_simulation as bench

    clients, seed = 100, 3
    npz = tmp_path / "workload.npz"
    workload = bench.write_workload(npz, data_dir, clients, seed)

    # the Flower app's own reader (task.py as written into the app), against the project's loader
    app = bench.write_flower_app(tmp_path / "flower")
    spec = importlib.util.spec_from_file_location("flower_task", app / "fedtiersim" / "task.py")
    task = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(task)
    project_data = bench.project_module("data")
    config = {"partition": {"scheme": "iid", "seed": seed}}
    for client in (0, 1, clients - 1):
        x, y = task.client_data(str(npz), client)
        x_project, y_project, _, _ = project_data.load_partition(str(data_dir), client, clients, config)
        assert np.array_equal(y, y_project) and np.array_equal(x, x_project), client
    # another seed is another partition: the seed really reaches the partitioner
    other = bench.train_indices(workload["y_train"], clients, seed + 1)
    assert not np.array_equal(other[0], workload["parts"][0])
    # the app's model and initial weights are the project's (same names, shapes and values)
    app_model = task.build_model()
    app_model.load_state_dict(task.seed_state(str(npz)))
    assert {k: tuple(v.shape) for k, v in app_model.state_dict().items()} == \
        {k: v.shape for k, v in workload["weights"].items()}
    assert all(torch.equal(v, torch.tensor(workload["weights"][k])) for k, v in app_model.state_dict().items())

    reference = bench.fedavg_in_process(workload, per_round=3, rounds=1, seed=seed)
    assert reference["sampled"] == bench.sample_rounds(clients, 3, 1, seed) and len(reference["sampled"][0]) == 3
    seed_accuracy = bench.test_accuracy(workload["weights"], workload["x_test"], workload["y_test"])
    assert seed_accuracy < 0.2 and reference["test_accuracy"] > 0.3  # one round of 3 clients learns (0.46)
    assert len(reference["round_s"]) == 1 and positive(reference["total_s"])


def test_flower_simulation_names_processes_by_role() -> None:
    """The bench's CPU profile groups processes by what they are, whatever their flags."""
    import sys

    from conftest import BENCH

    sys.path.insert(0, str(BENCH))
    from flower_simulation import role_of

    assert role_of(["/v/python", "-m", "fedtier.launch.cli", "--env-file", "/dev/null", "--log-level", "WARNING",
                    "combiner", "--port", "1"]) == "fedtier combiner"
    assert role_of(["/v/python", "-m", "fedtier.reducer.evaluation", "x"]) == "python -m fedtier.reducer.evaluation"
    assert role_of(["/v/python", "-B", "-c", "from multiprocessing.spawn import spawn_main; spawn_main(8)",
                    "--multiprocessing-fork"]) == "multiprocessing worker"
    assert role_of(["ray::ClientAppActor.run"]) == "ray::ClientAppActor.run"
    assert role_of(["/v/bin/python3.11", "/v/bin/flower-superlink", "--insecure"]) == "flower-superlink"
