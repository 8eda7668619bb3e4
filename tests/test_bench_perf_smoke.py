"""bench/gigabyte.py, flower_compare.py, scale_out.py and hold_streams.py still run: small sizes, sane outputs, no speed asserted.

Each runs as the command a person would type (so --help, the tables and --json are
exercised too), with a model and a network small enough to finish in seconds. The
Flower side of flower_compare.py needs its own virtualenv (bench/.flower-venv, which
the benchmark creates by installing flwr) and a minute per run, so it is run here only
if that virtualenv already exists and FEDTIER_SMOKE_FLOWER=1 is set.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import BENCH, positive, run_bench, stats_ok

FLOWER_VENV = BENCH / ".flower-venv"


@pytest.mark.parametrize("script", ["gigabyte.py", "flower_compare.py", "scale_out.py"])
def test_help(script: str) -> None:
    done = run_bench(script, "--help", timeout=60)
    assert done.stdout.startswith("usage:") and "--json" in done.stdout


@pytest.mark.timeout(90)
def test_gigabyte_smoke(tmp_path: Path) -> None:
    out = tmp_path / "gigabyte.json"
    done = run_bench("gigabyte.py", "--size-mib", "32", "--clients", "2", "--rounds", "1", "--warmup", "1",
                     "--first-touch-mib", "16", "--settle-s", "0", "--json", str(out))
    assert "round / floor" in done.stdout and "Peak RSS" in done.stdout and "CPU per round" in done.stdout
    result = json.loads(out.read_text())
    assert result["ok"] is True and result["model_bytes"] >= 32 << 20
    (run,) = result["runs"]
    assert run["clients"] == 2 and run["rounds_succeeded"] == run["rounds"] == 2 and run["rounds_timed"] == 1
    # the warm-up round uploads the seed: (2N + 2) model transfers; the timed round's global
    # model is the combiner's own aggregate, adopted, not sent: (2N + 1), and so is its floor
    warmup, timed = run["records"]
    assert warmup["pushed"] == ["uploaded"] and warmup["bytes_moved"] == 6 * result["model_bytes"]
    assert timed["pushed"] == ["adopted"] and run["bytes_per_round"] == 5 * result["model_bytes"]
    for key in ("round_s", "raw_floor_s", "ratio_vs_raw_floor"):
        assert stats_ok(run[key]), (key, run[key])
    record = timed
    assert record["status"] == "success" and record["updates"] == 2
    assert positive(record["client_phases"]["download"]) and positive(record["client_phases"]["upload"])
    # the combiner holds at least the running mean; its peak is a real, finite number of bytes
    assert run["combiner_peak_bytes"] > 0 and positive(run["combiner_peak_vs_model"])
    assert run["reducer_peak_bytes"] > 0 and run["client_max_peak_bytes"] > 0
    # every role used CPU in the timed round, and so did the raw floor; each model a client
    # downloads is written to a file, so the page cache took at least the clients' downloads
    assert all(positive(sum(run["cpu"][role])) for role in ("reducer", "combiner", "clients", "total"))
    assert positive(sum(run["floor_cpu"])) and record["dirtied_bytes"] >= 2 * result["model_bytes"]
    before, after = result["first_touch"]
    for measured in (before, after):
        assert set(measured) == {"anonymous_fresh", "anonymous_again", "new_file"}
        assert all(positive(v["wall_s_per_gib"]) for v in measured.values())


@pytest.mark.timeout(90)
def test_flower_compare_fedtier_side_smoke(tmp_path: Path) -> None:
    out = tmp_path / "flower.json"
    done = run_bench("flower_compare.py", "--skip-flower", "--params", "10k", "--clients", "2", "--rounds", "1",
                     "--warmup", "0", "--combiners", "1,2", "--json", str(out))
    assert "Round time against Flower" in done.stdout
    result = json.loads(out.read_text())
    assert result["ok"] is True and result["flower_skipped"] is True and result["evaluate"] is False
    (size,) = result["sizes"]
    assert size["params"] == 10_000 and not size["errors"] and size["fedtier_ok"] is True
    assert set(size["fedtier"]) == {"1", "2"}
    for entry in size["fedtier"].values():
        assert entry["rounds_succeeded"] == entry["rounds"] == entry["rounds_timed"] == 1
        assert entry["model_unchanged"] is True  # the no-op round gave back the seed's exact bytes
        assert stats_ok(entry["round_s"]) and positive(entry["phase_medians_s"]["total"])
    assert positive(size["ratio_2_vs_1_combiners"])
    assert size["ratio_vs_flower"] == {}  # Flower was not run


@pytest.mark.timeout(300)
@pytest.mark.skipif(not (FLOWER_VENV / "bin" / "flower-superlink").is_file()
                    or os.environ.get("FEDTIER_SMOKE_FLOWER") != "1",
                    reason="the Flower side needs bench/.flower-venv (made by bench/flower_compare.py) and takes "
                           "~1-2 minutes (Flower's SuperNodes poll every 3 s); set FEDTIER_SMOKE_FLOWER=1 to run it")
def test_flower_compare_with_flower_smoke(tmp_path: Path) -> None:
    out = tmp_path / "flower.json"
    run_bench("flower_compare.py", "--params", "10k", "--clients", "2", "--rounds", "1", "--warmup", "0",
              "--combiners", "1", "--json", str(out), timeout=280)
    result = json.loads(out.read_text())
    assert result["ok"] is True and result["flower_versions"]["flwr"]
    (size,) = result["sizes"]
    assert size["flower_ok"] is True and size["flower"]["model_unchanged"] is True
    assert stats_ok(size["flower"]["round_s"]) and positive(size["ratio_vs_flower"]["1"])


@pytest.mark.timeout(120)
def test_scale_out_smoke(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    done = run_bench("scale_out.py", "--clients", "4", "--combiners", "1,2", "--per-swarm", "2", "--rounds", "1",
                     "--warmup", "0", "--json", str(out), timeout=110)
    assert "Scale-out" in done.stdout and "knee with 2 combiners" in done.stdout
    result = json.loads(out.read_text())
    assert result["ok"] is True
    assert sorted((r["clients"], r["combiners"]) for r in result["runs"]) == [(4, 1), (4, 2)]
    for r in result["runs"]:
        assert r["rounds_timed"] == 1 and all(r["checks"].values()) and stats_ok(r["round_s"])
        assert r["swarms"] == 2  # 4 clients, 2 per swarm process
        # every client held by a combiner and counted once: the updates add up to the clients
        assert sum(r["clients_per_combiner"].values()) == r["clients"]
        assert len(r["clients_per_combiner"]) == r["combiners"]
        assert r["liveness"] == "stream" and r["combiner_threads"] >= r["combiner_threads_idle"] > 0
        assert r["inactive_observations"] == r["reducer_inactive_observations"] == 0
    assert [(c["clients"], c["combiners"]) for c in result["combiner_ratios"]] == [(4, [1, 2])]
    assert all(positive(c["ratio"]) for c in result["combiner_ratios"])
    assert set(result["knees"]) == {"1", "2"}


def test_scale_out_knee_and_combiner_ratios() -> None:
    """The knee is the first client count that fails a check or whose time per client grows
    past the factor; ratios compare combiner counts at equal client counts."""
    sys.path.insert(0, str(BENCH))
    import scale_out

    def run(clients: int, combiners: int, seconds: float, ok: bool = True) -> dict[str, Any]:
        return {"clients": clients, "combiners": combiners, "ok": ok, "rounds_timed": 3 if ok else 0,
                "round_s": {"median": seconds}, "checks": {"no_update_lost": ok}}

    runs = [run(100, 2, 1.0), run(200, 2, 2.2), run(400, 2, 8.0),          # 10, 11, 20 ms per client
            run(100, 4, 1.0), run(200, 4, 1.8), run(400, 4, 3.0, ok=False)]
    knees = scale_out.find_knees(runs, factor=1.5)
    assert knees["2"]["clients"] == 400 and "time per client" in knees["2"]["why"]
    assert knees["4"]["clients"] == 400 and "no_update_lost" in knees["4"]["why"]
    assert scale_out.find_knees(runs[:2], factor=1.5) == {"2": None}
    ratios = scale_out.compare_combiners(runs)
    assert [(r["clients"], r["combiners"], round(r["ratio"], 3)) for r in ratios] == \
        [(100, [2, 4], 1.0), (200, [2, 4], round(1.8 / 2.2, 3))]  # 400 x 4 failed: no ratio


def test_scale_out_liveness_ratios_and_memory_per_client() -> None:
    """Each liveness rule is compared with the first at the same size; a client's memory is
    the growth of its combiner's RSS over the clients it holds, the worst combiner's."""
    sys.path.insert(0, str(BENCH))
    import scale_out

    def run(liveness: str, seconds: float, inactive: int, ok: bool = True) -> dict[str, Any]:
        return {"clients": 1000, "combiners": 2, "liveness": liveness, "ok": ok, "rounds_timed": 3 if ok else 0,
                "round_s": {"median": seconds}, "inactive_observations": inactive}

    ratios = scale_out.compare_liveness([run("stream", 10.0, 0), run("heartbeat", 15.0, 900)],
                                        ["stream", "heartbeat"])
    assert ratios == [{"clients": 1000, "combiners": 2, "modes": ["heartbeat", "stream"], "rounds_ok": [3, 3],
                       "inactive": [900, 0], "round_time_ratio": 1.5}]
    failed = scale_out.compare_liveness([run("stream", 10.0, 0), run("heartbeat", 0.0, 5000, ok=False)],
                                        ["stream", "heartbeat"])
    assert failed[0]["round_time_ratio"] is None and failed[0]["rounds_ok"] == [0, 3]
    result = {"combiners_idle": {"a": {"rss_mib": 100.0}, "b": {"rss_mib": 100.0}},
              "combiners_held": {"a": {"rss_mib": 110.0, "clients": 512}, "b": {"rss_mib": 105.0, "clients": 512}}}
    assert scale_out.per_client_kib(result) == 20.0  # 10 MiB over 512 clients


@pytest.mark.timeout(60)
def test_hold_streams_smoke(tmp_path: Path) -> None:
    """A combiner holds every client without a thread each, and counts none active once they go."""
    out = tmp_path / "hold.json"
    done = run_bench("hold_streams.py", "--clients", "50", "--json", str(out), timeout=55)
    assert "Clients held by one combiner" in done.stdout
    run = json.loads(out.read_text())["runs"][0]
    assert run["held"]["active"] == 50 and run["refused"] == 0
    assert run["held"]["threads"] < run["idle"]["threads"] + 10  # no thread per client
    assert positive(run["kib_per_client"]) and 0 <= run["release_s"] < 30
