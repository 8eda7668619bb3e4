"""Scale-out: how many clients a round can hold, and whether more combiners help.

    .venv/bin/python bench/scale_out.py [--clients 250,500,1000] [--combiners 2,4]
                                        [--rounds 3] [--warmup 1] [--params 10k]
                                        [--per-swarm 125] [--liveness stream,heartbeat]
                                        [--max-clients N] [--json out.json]

Every (clients, combiners) pair is one fresh network on loopback, run by bench/load.py:
a reducer, the combiners, and ``fedtier swarm`` processes of ``--per-swarm`` virtual
clients each (every client its own gRPC channel, TCP connection, heartbeat and task
stream; each asks the reducer's /assign for its combiner, so the combiners share the
clients out). One session of ``--warmup`` + ``--rounds`` rounds requires every client
in every round, with a small model and validation off, so a round is the network's own
cost of a task to every client and an update back from each.

Per pair it reports the median round time of the timed rounds, the time per client
(round / clients), the clients each combiner held, the clients' time to join, the largest
heartbeat gap, and load.py's checks (every update arrived, nobody inactive or reconnected).

The knee: for each combiner count, the smallest client count at which a check fails, or
at which the time per client grows by more than ``--knee-factor`` (default 1.5) over
the smallest client count's. Adding combiners helps where, at the same client count,
the round is faster, or the knee is further out.

The figure to quote is the ratio of round times with the larger combiner count to the
smaller, at the same client count, measured in the same run.

``--liveness stream,heartbeat`` runs every pair under each combiner liveness rule
(combiner/registry.py: the open stream, the default; FEDn's heartbeat rule, the
behaviour before) and reports, per pair, the clients wrongly seen inactive under each
and the ratio of round times. Per run it also reports each combiner's threads and the
memory a client costs it: (RSS holding its clients - RSS before any joined) / clients.
"""
from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import load  # noqa: E402

from fedtier.combiner.server import HEARTBEAT_INTERVAL, CombinerSettings  # noqa: E402

# the combiner's own defaults, used when --heartbeat-interval/--heartbeat-timeout are not given
DEFAULT_HEARTBEAT = HEARTBEAT_INTERVAL["stream"]
DEFAULT_HEARTBEAT_TIMEOUT = CombinerSettings.heartbeat_timeout


def load_args(options: argparse.Namespace, clients: int, combiners: int, work: Path,
              liveness: str | None = None) -> argparse.Namespace:
    """bench/load.py's options for one (clients, combiners) network."""
    swarms = max(1, -(-clients // options.per_swarm))
    return argparse.Namespace(
        clients=clients, swarms=swarms, combiners=combiners, rounds=options.warmup + options.rounds,
        params=options.params, validate=False, round_timeout=options.round_timeout,
        heartbeat_interval=options.heartbeat_interval, heartbeat_timeout=options.heartbeat_timeout,
        task_slots=options.task_slots, liveness=liveness, max_clients=options.max_clients,
        log_level="WARNING", work_dir=str(work), json="")


def per_client_kib(result: dict[str, Any]) -> float:
    """What a connected client costs a combiner in RSS (KiB), the largest over the combiners."""
    costs = [(held["rss_mib"] - result["combiners_idle"][name]["rss_mib"]) * 1024 / held["clients"]
             for name, held in result["combiners_held"].items() if held["clients"]]
    return max(costs, default=0.0)


def run_pair(options: argparse.Namespace, clients: int, combiners: int, work: Path,
             liveness: str | None = None) -> dict[str, Any]:
    args = load_args(options, clients, combiners, work, liveness)
    started = time.monotonic()
    result = load.run(args)
    records = result["rounds"]
    timed = [r for r in records[options.warmup:] if r["status"] == "success"]
    held: dict[str, list[int]] = {}
    for record in timed:
        for name, entry in record["per_combiner"].items():
            held.setdefault(name, []).append(entry["updates"])
    summary = result["summary"]
    rss = result["peak_rss_mib"]
    return {
        "clients": clients, "combiners": combiners, "liveness": liveness or "stream", "swarms": args.swarms,
        "wall_s": time.monotonic() - started,
        "combiner_threads": max(h["threads"] for h in result["combiners_held"].values()),
        "combiner_threads_idle": max(h["threads"] for h in result["combiners_idle"].values()),
        "combiner_kib_per_client": per_client_kib(result),
        "reducer_inactive_observations": result["reducer_inactive_observations"],
        "startup_s": result["startup_s"], "rounds": len(records), "rounds_timed": len(timed),
        "round_s": common.summarize(r["round_time_s"] for r in timed),
        "phases_s": {p: common.summarize(r["phases_s"].get(p, 0.0) for r in timed)["median"]
                     for p in sorted({k for r in timed for k in r["phases_s"]})},
        "clients_per_combiner": {name: max(values) for name, values in sorted(held.items())},
        "max_heartbeat_gap_s": summary["max_heartbeat_gap_s"],
        "status_unanswered": result.get("status_unanswered", 0),
        "inactive_observations": result["inactive_observations"],
        "checks": summary["checks"], "ok": summary["ok"],
        "peak_rss_mib": {"reducer": rss.get("reducer", 0.0),
                         "combiner_max": max((v for k, v in rss.items() if k.startswith("combiner")), default=0.0),
                         "swarm_max": max((v for k, v in rss.items() if k.startswith("swarm")), default=0.0)},
    }


def find_knees(runs: list[dict[str, Any]], factor: float) -> dict[str, Any]:
    """Per combiner count: the first client count that failed a check or whose time per client
    grew past ``factor`` x the smallest count's; None when every count held."""
    knees: dict[str, Any] = {}
    for combiners in sorted({r["combiners"] for r in runs}):
        mine = sorted((r for r in runs if r["combiners"] == combiners), key=lambda r: r["clients"])
        base = next((r for r in mine if r["ok"] and r["rounds_timed"]), None)
        knee = None
        for r in mine:
            if not r["ok"] or not r["rounds_timed"]:
                knee = {"clients": r["clients"], "why": "a check failed: " + ", ".join(
                    k for k, v in r.get("checks", {}).items() if not v) if r.get("checks") else r.get("error", "")}
                break
            per_client = r["round_s"]["median"] / r["clients"]
            if base is not None and per_client > factor * base["round_s"]["median"] / base["clients"]:
                knee = {"clients": r["clients"], "why": f"time per client {per_client * 1e3:.1f} ms, over "
                        f"{factor:g} x {base['round_s']['median'] / base['clients'] * 1e3:.1f} ms at "
                        f"{base['clients']} clients"}
                break
        knees[str(combiners)] = knee
    return knees


def compare_combiners(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At each client count run with several combiner counts: round time of each count / the smallest."""
    out = []
    for clients in sorted({r["clients"] for r in runs}):
        mine = sorted((r for r in runs if r["clients"] == clients and r["ok"] and r["rounds_timed"]),
                      key=lambda r: r["combiners"])
        if len(mine) < 2:
            continue
        base = mine[0]
        for other in mine[1:]:
            out.append({"clients": clients, "combiners": [base["combiners"], other["combiners"]],
                        "ratio": common.ratio(other["round_s"]["median"], base["round_s"]["median"])})
    return out


def compare_liveness(runs: list[dict[str, Any]], modes: list[str]) -> list[dict[str, Any]]:
    """At each (clients, combiners): each later liveness rule against the first, same run."""
    out = []
    for clients, combiners in sorted({(r["clients"], r["combiners"]) for r in runs}):
        mine = {r["liveness"]: r for r in runs if (r["clients"], r["combiners"]) == (clients, combiners)}
        base = mine.get(modes[0])
        for mode in modes[1:]:
            other = mine.get(mode)
            if base is None or other is None:
                continue
            timed = base.get("rounds_timed") and other.get("rounds_timed")
            out.append({"clients": clients, "combiners": combiners, "modes": [mode, modes[0]],
                        "rounds_ok": [other.get("rounds_timed", 0), base.get("rounds_timed", 0)],
                        "inactive": [other.get("inactive_observations"), base.get("inactive_observations")],
                        "round_time_ratio": common.ratio(other["round_s"]["median"], base["round_s"]["median"])
                        if timed else None})
    return out


def run(options: argparse.Namespace) -> dict[str, Any]:
    work = Path(options.work_dir or tempfile.mkdtemp(prefix="fedtier-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"benchmark": "scale_out", "machine": common.machine(), "params": options.params,
                              "rounds": options.rounds, "warmup": options.warmup, "per_swarm": options.per_swarm,
                              "task_slots": options.task_slots, "runs": [],
                              "heartbeat_interval": options.heartbeat_interval or None,
                              "heartbeat_timeout": options.heartbeat_timeout or None}
    try:
        for clients in options.clients:
            for combiners in options.combiners:
                for liveness in options.liveness:
                    tag = f"{clients}x{combiners}" + (f"-{liveness}" if len(options.liveness) > 1 else "")
                    print(f"[{tag}] {clients} clients over {combiners} combiners, liveness {liveness}, "
                          f"{options.warmup}+{options.rounds} rounds...", flush=True)
                    try:
                        result["runs"].append(run_pair(options, clients, combiners, work / tag, liveness))
                        r = result["runs"][-1]
                        print(f"[{tag}] median round {r['round_s']['median']:.2f} s, clients per combiner "
                              f"{r['clients_per_combiner']}, inactive {r['inactive_observations']} (combiners) "
                              f"{r['reducer_inactive_observations']} (reducer), combiner threads "
                              f"{r['combiner_threads']}, {r['combiner_kib_per_client']:.1f} KiB a client, checks "
                              f"{'ok' if r['ok'] else 'FAILED'}", flush=True)
                    except Exception as exc:  # noqa: BLE001 - a failed pair is a finding; the others still run
                        traceback.print_exc()
                        result["runs"].append({"clients": clients, "combiners": combiners, "liveness": liveness,
                                               "ok": False, "rounds_timed": 0, "error": str(exc)[:1000]})
                    finally:
                        if not options.keep:
                            shutil.rmtree(work / tag, ignore_errors=True)
    finally:
        if not options.work_dir and not options.keep:
            shutil.rmtree(work, ignore_errors=True)
    first = [r for r in result["runs"] if r["liveness"] == options.liveness[0]]
    result["knees"] = find_knees(first, options.knee_factor)
    result["combiner_ratios"] = compare_combiners(first)
    result["liveness_ratios"] = compare_liveness(result["runs"], options.liveness)
    result["ok"] = all(r["ok"] for r in result["runs"])
    return result


def report(result: dict[str, Any]) -> None:
    rows = []
    for r in result["runs"]:
        if "error" in r:
            rows.append([r["clients"], r["combiners"], r.get("liveness", "-"), "-", "FAILED: " + r["error"][:80],
                         *["-"] * 11])
            continue
        per = "/".join(str(v) for v in r["clients_per_combiner"].values())
        rows.append([r["clients"], r["combiners"], r["liveness"], f"{r['rounds_timed']}/{r['rounds']}",
                     r["round_s"]["median"] if r["rounds_timed"] else "-",
                     r["round_s"]["median"] / r["clients"] * 1e3 if r["rounds_timed"] else "-", per, r["startup_s"],
                     r["max_heartbeat_gap_s"], r["inactive_observations"], r["reducer_inactive_observations"],
                     r["status_unanswered"], r["combiner_threads"], r["combiner_kib_per_client"],
                     r["peak_rss_mib"]["combiner_max"],
                     "ok" if r["ok"] else "FAILED: " + ", ".join(k for k, v in r["checks"].items() if not v)])
    common.print_table(f"Scale-out: virtual clients ({result['per_swarm']} per swarm process), "
                       f"{common.human_count(result['params'])}-parameter model, validation off, "
                       f"{result['rounds']} timed rounds after {result['warmup']}"
                       + (f", heartbeat every {result['heartbeat_interval'] or DEFAULT_HEARTBEAT:g} s, timeout "
                          f"{result['heartbeat_timeout'] or DEFAULT_HEARTBEAT_TIMEOUT:g} s"
                          if result.get("heartbeat_interval")
                          or result.get("heartbeat_timeout") else ""),
                       ["clients", "combiners", "liveness", "timed/rounds", "median round s", "ms per client",
                        "clients per combiner", "join s", "max heartbeat gap s", "inactive obs (combiners)",
                        "inactive obs (reducer)", "Status unanswered (10 s)", "combiner threads",
                        "combiner KiB per client", "combiner peak MiB", "checks"],
                       rows)
    if result["combiner_ratios"]:
        print("\nround time, more combiners / fewer, same clients: " + "; ".join(
            f"{c['clients']} clients: {c['combiners'][1]} / {c['combiners'][0]} = {c['ratio']:.2f}"
            for c in result["combiner_ratios"]))
    for c in result.get("liveness_ratios", []):
        print(f"{c['clients']} clients over {c['combiners']} combiners: liveness {c['modes'][0]} / {c['modes'][1]}: "
              f"rounds ok {c['rounds_ok'][0]} / {c['rounds_ok'][1]}, inactive observations {c['inactive'][0]} / "
              f"{c['inactive'][1]}, round time "
              + (f"{c['round_time_ratio']:.2f}" if c["round_time_ratio"] is not None else "- (no timed round in one)"))
    for combiners, knee in result["knees"].items():
        print(f"knee with {combiners} combiners: " +
              (f"{knee['clients']} clients ({knee['why']})" if knee else "none up to the largest count run"))
    print("\n" + common.machine_line(result["machine"]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Figures are ratios between configurations measured in the same run.")
    p.add_argument("--clients", type=common.parse_list, default=[250, 500, 1000],
                   help="client counts, comma-separated (default 250,500,1000)")
    p.add_argument("--combiners", type=lambda s: common.parse_list(s, int), default=[2, 4],
                   help="combiner counts, comma-separated (default 2,4)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per network (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--params", type=common.parse_count, default=10_000,
                   help="float32 values in the model (default 10k: 40 KB)")
    p.add_argument("--per-swarm", type=int, default=125, help="virtual clients per swarm process (default 125)")
    p.add_argument("--task-slots", type=int, default=8, help="tasks at once per swarm process (default 8)")
    p.add_argument("--heartbeat-interval", type=float, default=0.0,
                   help=f"combiner --heartbeat-interval in s (default: the combiner's own, {DEFAULT_HEARTBEAT:g})")
    p.add_argument("--heartbeat-timeout", type=float, default=0.0,
                   help=f"combiner --heartbeat-timeout in s (default: the combiner's own, {DEFAULT_HEARTBEAT_TIMEOUT:g})")
    p.add_argument("--round-timeout", type=float, default=600.0, help="seconds per round (default 600)")
    p.add_argument("--liveness", type=lambda s: [m for m in s.split(",") if m], default=["stream"],
                   help="combiner liveness rules to run each pair under, comma-separated: stream (the default), "
                        "heartbeat (FEDn's, the behaviour before); the first is the base of the ratios")
    p.add_argument("--max-clients", type=int, default=0,
                   help="combiner --max-clients (default: the combiner's own)")
    p.add_argument("--knee-factor", type=float, default=1.5,
                   help="time per client over this x the smallest count's marks the knee (default 1.5)")
    common.add_output_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if not options.liveness or any(m not in ("stream", "heartbeat") for m in options.liveness):
        raise SystemExit("--liveness is a comma-separated list of stream and heartbeat")
    if options.rounds < 1 or options.warmup < 0 or options.per_swarm < 1 or any(c < 1 for c in options.combiners):
        raise SystemExit("--rounds, --per-swarm and --combiners must be at least 1, --warmup at least 0")
    return common.conclude(run(options), report, options.json)


if __name__ == "__main__":
    sys.exit(main())
