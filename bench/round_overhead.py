"""Per-round framework overhead: a real combiner, real clients, a no-op project.

    .venv/bin/python bench/round_overhead.py [--clients 10] [--rounds 10] [--params 1M]
                                             [--sandbox 1,2] [--json out.json]

A combiner process and ``--clients`` client processes run on loopback with
``bench/projects/noop`` (train copies the model through unchanged), and this process
drives rounds through ``CombinerClient`` exactly as the reducer does: upload the global
model, ``StartRound``, download the combiner model. Every round's result is checked to
be byte-identical to its input (the no-op makes the average exact).

Baselines measured in the same run, interleaved with the rounds:
  raw bytes   raw gRPC loopback (bench/transfer.py's server) moving, one stream after
              another, the bytes a round moves: 1 + clients downloads, clients + 1 uploads
  tiny model  the same rounds with a ``--tiny-params`` model: the size-independent cost
  rpc         a unary Status call to the same combiner: the floor of one round trip

With ``--sandbox 1,2`` it also runs the network ``fedtier sandbox`` runs (reducer + N
combiners + the same clients, as separate processes, started by the same launcher,
fedtier.launch.network, with the sandbox's settings) and reads the reducer's per-round
phase timings from its REST API; those rounds also validate (the default, as in the
sandbox) and are reported against the direct rounds above.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import transfer  # noqa: E402
from common import MiB, NOOP_PROJECT, make_seed, sha256_file  # noqa: E402

from fedtier.launch.network import LocalNetwork  # noqa: E402
from fedtier.proto import fedtier_pb2 as pb  # noqa: E402
from fedtier.reducer.combiner_client import CombinerClient  # noqa: E402

PHASES = ("wait_clients", "tasks", "aggregation", "total")
CLIENT_PHASES = ("download", "train", "upload")


def start_network(procs: common.Processes, work: Path, clients: int) -> CombinerClient:
    port = common.free_port()
    combiner = procs.fedtier("combiner", "combiner", "--name", "bench", "--host", "127.0.0.1", "--port", str(port),
                             "--work-dir", str(work / "combiner"), "--heartbeat-interval", "1",
                             "--heartbeat-timeout", "10")
    common.wait_for_port(port, proc=combiner)
    for i in range(clients):
        procs.fedtier(f"client-{i}", "client", "--combiner", f"127.0.0.1:{port}", "--project", str(NOOP_PROJECT),
                      "--name", f"client-{i}", "--partition", f"{i}/{clients}",
                      "--work-dir", str(work / f"client-{i}"))
    handle = CombinerClient(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 120
    while True:
        try:
            if handle.status().active_clients >= clients:
                return handle
        except Exception:  # noqa: BLE001 - the combiner may still be starting
            pass
        procs.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{clients} clients not active after 120s")
        time.sleep(0.1)


def cpu_snapshot(procs: common.Processes) -> dict[str, float]:
    """CPU seconds so far of the combiner, all clients together, and this (reducer-role) process."""
    return {"combiner": common.cpu_seconds(procs.procs["combiner"].pid),
            "clients": sum(common.cpu_seconds(p.pid) for n, p in procs.procs.items() if n.startswith("client-")),
            "driver": time.process_time()}


def run_rounds(handle: CombinerClient, raw: transfer.RawClient, procs: common.Processes, seed: Path, work: Path,
               clients: int, rounds: int, warmup: int) -> dict[str, Any]:
    size = seed.stat().st_size
    expected = sha256_file(seed)
    config = json.dumps({"clients_required": clients, "round_timeout": 600, "wait_for_clients": 60})
    records: list[dict[str, Any]] = []
    failed: list[str] = []
    current = seed
    unchanged = True
    done = 0
    while done < warmup + rounds:
        if len(failed) > 2 * (warmup + rounds):
            raise RuntimeError(f"too many failed rounds: {failed[-3:]}")
        model_id = f"g{done}-{uuid.uuid4().hex[:8]}"
        cpu0 = cpu_snapshot(procs)
        t0 = time.perf_counter()
        handle.upload_model(current, model_id, timeout=600)
        t1 = time.perf_counter()
        result = handle.start_round(pb.RoundRequest(session_id="bench", round_id=uuid.uuid4().hex,
                                                    kind=pb.TRAINING, model_id=model_id, config_json=config),
                                    timeout=900)
        t2 = time.perf_counter()
        if not result.success:  # recorded and reported, not timed; the next round starts afresh
            failed.append(f"{result.error}; failures: {list(result.failures)}")
            time.sleep(0.5)  # let the late reports of the failed round drain
            continue
        dest = work / f"global-{done}"
        received = handle.download_model(result.model_id, dest, timeout=600)
        t3 = time.perf_counter()
        cpu1 = cpu_snapshot(procs)
        unchanged &= received.sha256 == expected and len(result.updates) == clients
        floor = transfer.raw_round_floor(raw, size, clients)
        if current != seed:
            current.unlink()
        current = dest
        done += 1
        if done <= warmup:
            continue
        per_client = {p: [u.timings.get(p, 0.0) for u in result.updates] for p in CLIENT_PHASES}
        records.append({
            "round_s": t3 - t0, "push_s": t1 - t0, "start_round_s": t2 - t1, "fetch_s": t3 - t2,
            "combiner": {p: result.timings.get(p, 0.0) for p in PHASES},
            "clients_median": {p: statistics.median(v) for p, v in per_client.items()},
            "client_busiest_s": max(sum(u.timings.get(p, 0.0) for p in CLIENT_PHASES) for u in result.updates),
            "updates": len(result.updates), "raw_floor_s": floor,
            "cpu_s": {k: cpu1[k] - cpu0[k] for k in cpu0},
        })
    if current != seed:
        current.unlink()
    return {"model_bytes": size, "records": records, "model_unchanged": unchanged, "failed_rounds": failed}


def summarize_rounds(block: dict[str, Any]) -> dict[str, Any]:
    recs = block["records"]
    out: dict[str, Any] = {"model_bytes": block["model_bytes"], "model_unchanged": block["model_unchanged"],
                           "rounds": len(recs), "failed_rounds": len(block["failed_rounds"]),
                           "failures": block["failed_rounds"]}
    for key in ("round_s", "push_s", "start_round_s", "fetch_s", "client_busiest_s", "raw_floor_s"):
        out[key] = common.summarize(r[key] for r in recs)
    out["combiner"] = {p: common.summarize(r["combiner"][p] for r in recs) for p in PHASES}
    out["clients"] = {p: common.summarize(r["clients_median"][p] for r in recs) for p in CLIENT_PHASES}
    # what the combiner spends around its clients' own work: task dispatch, reports, folding
    out["dispatch_overhead_s"] = common.summarize(r["combiner"]["tasks"] - r["client_busiest_s"] for r in recs)
    out["ratio_vs_raw_floor"] = common.summarize(r["round_s"] / r["raw_floor_s"] for r in recs)
    # CPU all processes of the round used, per round, and as a share of the machine during it
    out["cpu_s"] = {k: common.summarize(r["cpu_s"][k] for r in recs) for k in ("combiner", "clients", "driver")}
    # /proc counts in 10 ms ticks: use totals over all timed rounds, not per-round medians
    out["cpu_per_round_s"] = {k: sum(r["cpu_s"][k] for r in recs) / len(recs) for k in ("combiner", "clients", "driver")}
    out["cpu_busy_share"] = (sum(sum(r["cpu_s"].values()) for r in recs)
                             / (sum(r["round_s"] for r in recs) * (os.cpu_count() or 1)))
    return out


def rpc_floor(handle: CombinerClient, calls: int = 50) -> dict[str, float]:
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        handle.status()
        times.append(time.perf_counter() - t)
    return common.summarize(times)


# ---------------------------------------------------------------- through the reducer (fedtier sandbox)
def run_sandbox(work: Path, seed: Path, combiners: int, clients: int, rounds: int, warmup: int) -> dict[str, Any]:
    folder = work / f"sandbox-{combiners}"
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with LocalNetwork(folder / "net") as net:  # the sandbox's processes and settings (launch/sandbox.py)
        net.start_reducer(helper="numpy")
        net.start_combiners(combiners, "--heartbeat-interval", "1", "--heartbeat-timeout", "6")
        net.seed(seed)
        net.start_clients(clients, NOOP_PROJECT)
        session_id = net.start_session(rounds=warmup + rounds, clients_required=clients, round_timeout=600,
                                       task={})
        net.wait_for_session(session_id, timeout=300 + (warmup + rounds) * 120)
        docs = net.rounds(session_id)
    docs = sorted(docs, key=lambda d: d["round"])
    succeeded_all = sum(1 for d in docs if d["status"] == "success")
    ok = [d for d in docs[warmup:] if d["status"] == "success"]  # the first rounds warm the reducer up
    phases = sorted({k for d in ok for k in d["timings"]} | {"total"})
    out: dict[str, Any] = {"combiners": combiners, "clients": clients, "rounds": len(docs), "warmup": warmup,
                           "rounds_succeeded": succeeded_all, "rounds_timed": len(ok),
                           "startup_to_done_s": time.monotonic() - started,
                           "errors": [f"round {d['round']}: {d.get('error')}" for d in docs if d["status"] != "success"],
                           "phases": {p: common.summarize(d["timings"].get(p, 0.0) for d in ok) for p in phases}}
    out["total_without_validation_s"] = common.summarize(
        d["timings"].get("total", 0.0) - d["timings"].get("validation", 0.0) for d in ok)
    return out


# ---------------------------------------------------------------- the run
def run(options: argparse.Namespace) -> dict[str, Any]:
    work = Path(options.work_dir or tempfile.mkdtemp(prefix="fedtier-bench-rounds-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"benchmark": "round_overhead", "machine": common.machine(),
                              "clients": options.clients, "params": options.params,
                              "tiny_params": options.tiny_params}
    try:
        seed = make_seed(work / "seed", options.params)
        tiny = make_seed(work / "seed-tiny", options.tiny_params) if options.tiny_params else None
        with common.Processes(work / "logs") as procs:
            raw_port = common.free_port()
            raw_proc = procs.start("raw", [sys.executable, str(Path(transfer.__file__).resolve()),
                                           "--serve-raw", str(raw_port)])
            handle = start_network(procs, work, options.clients)
            common.wait_for_port(raw_port, proc=raw_proc)
            raw = transfer.RawClient(f"127.0.0.1:{raw_port}")
            try:
                result["rpc_floor_s"] = rpc_floor(handle)
                result["direct"] = summarize_rounds(run_rounds(handle, raw, procs, seed, work, options.clients,
                                                               options.rounds, options.warmup))
                if tiny is not None:
                    result["tiny"] = summarize_rounds(run_rounds(handle, raw, procs, tiny, work, options.clients,
                                                                 options.rounds, options.warmup))
                    result["ratio_vs_tiny"] = common.ratio(result["direct"]["round_s"]["median"],
                                                           result["tiny"]["round_s"]["median"])
                result["rpc_floor_after_s"] = rpc_floor(handle)
            finally:
                handle.close()
                raw.close()
        result["sandbox"] = []
        for count in options.sandbox:
            entry = None
            for attempt in range(2):  # a free port can be taken by another process before the reducer binds it
                try:
                    entry = run_sandbox(work, seed, count, options.clients, options.sandbox_rounds, options.warmup)
                    break
                except RuntimeError as exc:
                    print(f"sandbox with {count} combiner(s), attempt {attempt + 1} failed: {exc}", file=sys.stderr)
                    error = str(exc)
            if entry is None:
                result["sandbox"].append({"combiners": count, "error": error[-3000:]})
                continue
            entry["ratio_vs_direct"] = common.ratio(entry["phases"]["total"]["median"],
                                                    result["direct"]["round_s"]["median"])
            entry["ratio_without_validation_vs_direct"] = common.ratio(
                entry["total_without_validation_s"]["median"], result["direct"]["round_s"]["median"])
            result["sandbox"].append(entry)
    finally:
        if not options.work_dir and not options.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["ok"] = result["direct"]["model_unchanged"] and all(
        "error" not in s and s["rounds_succeeded"] == s["rounds"] for s in result.get("sandbox", []))
    return result


def report(result: dict[str, Any]) -> None:
    ms = lambda s: s["median"] * 1e3  # noqa: E731
    blocks = [("direct", result["params"])] + ([("tiny", result["tiny_params"])] if "tiny" in result else [])
    rows = []
    for key, params in blocks:
        d = result[key]
        rows.append([common.human_count(params), d["model_bytes"] / MiB, d["rounds"], ms(d["round_s"]),
                     d["round_s"]["min"] * 1e3, d["round_s"]["max"] * 1e3, ms(d["raw_floor_s"]),
                     d["ratio_vs_raw_floor"]["median"], "yes" if d["model_unchanged"] else "NO", d["failed_rounds"]])
    common.print_table(f"Round time, {result['clients']} clients, no-op training, driven like the reducer "
                       f"(upload + StartRound + download)",
                       ["params", "model MiB", "rounds", "median ms", "min ms", "max ms", "raw-gRPC bytes floor ms",
                        "round / floor", "model unchanged", "failed rounds (untimed)"], rows)
    for key, _ in blocks:
        for failure in result[key]["failures"][:3]:
            print(f"  failed round ({key}): {failure[:300]}")
    rows = []
    for key, params in blocks:
        d = result[key]
        c = d["combiner"]
        rows.append([common.human_count(params), ms(d["push_s"]), ms(c["wait_clients"]), ms(c["tasks"]),
                     ms(d["clients"]["download"]), ms(d["clients"]["train"]), ms(d["clients"]["upload"]),
                     ms(d["dispatch_overhead_s"]), ms(c["aggregation"]), ms(c["total"]), ms(d["fetch_s"])])
    common.print_table("Where a round's time goes (medians, ms): reducer side, combiner phases, per-client",
                       ["params", "push", "wait_clients", "tasks", "client download", "client train",
                        "client upload", "tasks - busiest client", "aggregation", "combiner total", "fetch"], rows)
    rows = []
    for key, params in blocks:
        d = result[key]
        cpu = {k: v * 1e3 for k, v in d["cpu_per_round_s"].items()}
        rows.append([common.human_count(params), d["round_s"]["mean"] * 1e3, cpu["combiner"], cpu["clients"],
                     cpu["clients"] / result["clients"], cpu["driver"], sum(cpu.values()), d["cpu_busy_share"]])
    common.print_table(f"CPU per round (user+sys, mean over the timed rounds, ms) and the share of the "
                       f"{os.cpu_count()} cores the round's processes kept busy",
                       ["params", "round wall (mean)", "combiner CPU", "all clients CPU", "per client CPU",
                        "driver (reducer role) CPU", "total CPU", "busy share"], rows)
    if "tiny" in result:
        print(f"\nround({common.human_count(result['params'])}) / round({common.human_count(result['tiny_params'])})"
              f" = {result['ratio_vs_tiny']:.2f};  Status RPC floor {result['rpc_floor_s']['median'] * 1e3:.2f} ms "
              f"(after the rounds {result['rpc_floor_after_s']['median'] * 1e3:.2f} ms)")
    if result.get("sandbox"):
        rows = []
        for s in result["sandbox"]:
            if "error" in s:
                rows.append([s["combiners"], "sandbox failed: " + s["error"].splitlines()[0][:60]] + ["-"] * 11)
                continue
            p = s["phases"]
            rows.append([s["combiners"], f"{s['rounds_succeeded']}/{s['rounds']}", s["rounds_timed"], ms(p["total"]),
                         p["total"]["min"] * 1e3, p["total"]["max"] * 1e3, ms(s["total_without_validation_s"]),
                         *(ms(p[k]) if k in p else "-" for k in ("transfer", "training", "aggregation", "validation")),
                         s["ratio_without_validation_vs_direct"], s["ratio_vs_direct"]])
        common.print_table(f"Through the reducer (fedtier sandbox, {result['clients']} clients, "
                           f"{common.human_count(result['params'])} params; medians, ms)",
                           ["combiners", "ok", "timed", "round", "min", "max", "round w/o validation", "transfer",
                            "training", "aggregation", "validation", "w/o validation / direct",
                            "round / direct"], rows)
        for s in result["sandbox"]:
            for error in s.get("errors", [])[:3]:
                print(f"  failed reducer round ({s['combiners']} combiners): {str(error)[:300]}")
    print("\n" + common.machine_line(result["machine"]))


def summary_rows(result: dict[str, Any]) -> list[list[Any]]:
    d = result["direct"]
    n = result["clients"]
    p = common.human_count(result["params"])
    rows = [["round_overhead", f"round, {n} clients, {p} params", "raw-gRPC bytes floor (ms)",
             d["raw_floor_s"]["median"] * 1e3, d["round_s"]["median"] * 1e3, d["ratio_vs_raw_floor"]["median"]]]
    if "tiny" in result:
        rows.append(["round_overhead", f"round, {n} clients, {p} params",
                     f"same, {common.human_count(result['tiny_params'])} params (ms)",
                     result["tiny"]["round_s"]["median"] * 1e3, d["round_s"]["median"] * 1e3, result["ratio_vs_tiny"]])
    for s in result.get("sandbox", []):
        if "error" in s:
            continue
        rows.append(["round_overhead", f"reducer round, {s['combiners']} combiner(s), w/o validation",
                     "direct round (ms)", d["round_s"]["median"] * 1e3,
                     s["total_without_validation_s"]["median"] * 1e3, s["ratio_without_validation_vs_direct"]])
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Figures are ratios against baselines measured in the same run.")
    p.add_argument("--clients", type=int, default=10, help="client processes (default 10)")
    p.add_argument("--rounds", type=int, default=10, help="timed rounds per model size (default 10)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first, also in the sandbox (default 1)")
    p.add_argument("--params", type=common.parse_count, default=1_000_000,
                   help="float32 parameters of the model, k/M allowed (default 1M)")
    p.add_argument("--tiny-params", type=lambda s: 0 if s == "0" else common.parse_count(s), default=1000,
                   help="parameters of the size-independent baseline model (default 1000; 0 skips it)")
    p.add_argument("--sandbox", type=lambda s: [] if s in ("", "none", "0") else common.parse_list(s, int),
                   default=[1, 2], help="also run through the reducer with these combiner counts "
                                        "(default 1,2; 'none' skips)")
    p.add_argument("--sandbox-rounds", type=int, default=5, help="timed rounds per sandbox run (default 5)")
    common.add_output_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    if options.clients < 1 or options.rounds < 1 or options.warmup < 0:
        raise SystemExit("--clients and --rounds must be at least 1, --warmup at least 0")
    return common.conclude(run(options), report, options.json)


if __name__ == "__main__":
    sys.exit(main())
