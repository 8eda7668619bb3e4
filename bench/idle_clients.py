"""Bytes per idle client: what a virtual client costs its swarm while it waits for a task.

    .venv/bin/python bench/idle_clients.py [--clients 1000] [--project test_projects/mnist-pytorch]
                                           [--modes pool,threads] [--workers 1] [--json out.json]

One network on loopback (a reducer and one combiner, fedtier.launch.network.LocalNetwork).
For each mode, a ``fedtier swarm`` of 1 client, then one of N clients, of the same project:

* ``pool``: ``--workers W`` (client/pool.py): the tasks would run in W worker processes,
  each with the project loaded; the swarm process itself never imports the project's code;
* ``threads``: no workers, the swarm trains in its clients' threads, so it imports the
  project's framework (torch) itself, as it did before the pool.

Each swarm is measured once all its clients are connected and idle (no session runs) and
its memory has settled: its RSS and its workers' (the swarm's own ``--stats`` totals,
``rss_bytes`` and ``worker_rss_bytes``). Bytes per idle client = (RSS with N clients - RSS
with 1) / (N - 1): what one more waiting client costs, whatever the process costs to
exist. The whole footprint of a mode is the swarm's RSS plus its workers'.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import MiB, ROOT  # noqa: E402

from fedtier.launch.network import LaunchError, LocalNetwork  # noqa: E402

MODES = ("pool", "threads")
SETTLE_SAMPLES = 3     # readings in a row within SETTLE_BYTES of each other: the RSS has settled
SETTLE_BYTES = 1 * MiB


def read_totals(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())["totals"]
    except (OSError, ValueError, KeyError):
        return None  # not written yet (replaced atomically, so never half a file)


def measure_swarm(net: LocalNetwork, mode: str, count: int, options: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Start one swarm, wait until all its clients are connected and its memory settled, stop it."""
    name = f"swarm-{mode}-{count}"
    stats = work / f"{name}.json"
    pool = ["--workers", str(options.workers), "--worker-threads", "1"] if mode == "pool" else []
    data = ["--data-path", options.data_path] if options.data_path else []
    started = time.monotonic()
    proc = net.spawn(name, "swarm", "--clients", str(count), "--reducer", net.url, "--project", options.project,
                     "--name-prefix", name, "--work-dir", str(work / name), "--stats", str(stats),
                     "--stats-interval", "1", "--start-interval", str(options.start_interval), *data, *pool,
                     log_level="WARNING")
    try:
        net.wait_for(f"{count} clients of {name} to connect",
                     lambda: (t := read_totals(stats)) is not None and t["connected"] >= count,
                     timeout=options.timeout, interval=1.0)
        joined = time.monotonic() - started
        samples: list[dict[str, Any]] = []
        deadline = time.monotonic() + options.settle_timeout
        while time.monotonic() < deadline:
            time.sleep(1.5)
            totals = read_totals(stats)
            if totals is not None:
                samples.append(totals)
            last = [s["rss_bytes"] for s in samples[-SETTLE_SAMPLES:]]
            if len(last) == SETTLE_SAMPLES and max(last) - min(last) <= SETTLE_BYTES:
                break
        totals = samples[-1]
        settled = len(samples) >= SETTLE_SAMPLES and \
            max(s["rss_bytes"] for s in samples[-SETTLE_SAMPLES:]) - \
            min(s["rss_bytes"] for s in samples[-SETTLE_SAMPLES:]) <= SETTLE_BYTES
        assert totals["train"] == totals["validate"] == totals["failed"] == 0  # idle: no task ever ran
        return {"mode": mode, "clients": count, "connected": totals["connected"], "join_s": joined,
                "rss_bytes": totals["rss_bytes"], "worker_rss_bytes": totals["worker_rss_bytes"],
                "threads": totals["threads"], "settled": settled}
    finally:
        proc.terminate()
        proc.wait(60)
        net.procs.procs.pop(name)  # ended as asked: not a process of the network that exited (its log stays)
        # the next swarm starts against an empty combiner
        deadline = time.monotonic() + 60
        while net.api("GET", "/api/v1/status")["clients_active"] and time.monotonic() < deadline:
            time.sleep(0.5)


def run(options: argparse.Namespace) -> dict[str, Any]:
    work = Path(options.work_dir or tempfile.mkdtemp(prefix="idle-clients-"))
    result: dict[str, Any] = {"machine": common.machine(), "clients": options.clients, "workers": options.workers,
                              "project": options.project, "runs": [], "modes": {}}
    try:
        with LocalNetwork(work, log_level="WARNING") as net:
            net.start_reducer()
            net.start_combiners(1, "--max-clients", str(max(1000, options.clients)))
            for mode in options.modes:
                one = measure_swarm(net, mode, 1, options, work)
                many = measure_swarm(net, mode, options.clients, options, work)
                result["runs"] += [one, many]
                per_client = (many["rss_bytes"] - one["rss_bytes"]) / max(1, options.clients - 1)
                result["modes"][mode] = {
                    "bytes_per_idle_client": per_client,
                    "swarm_rss_1": one["rss_bytes"], "swarm_rss_n": many["rss_bytes"],
                    "worker_rss_n": many["worker_rss_bytes"],
                    "footprint_n": many["rss_bytes"] + many["worker_rss_bytes"],
                    "threads_n": many["threads"], "join_s": many["join_s"],
                    "settled": one["settled"] and many["settled"]}
    except LaunchError as exc:
        result["error"] = str(exc)
    finally:
        if not options.keep and not options.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    modes = result["modes"]
    if {"pool", "threads"} <= set(modes):
        result["pool_vs_threads"] = {
            "swarm_rss_n": common.ratio(modes["pool"]["swarm_rss_n"], modes["threads"]["swarm_rss_n"]),
            "footprint_n": common.ratio(modes["pool"]["footprint_n"], modes["threads"]["footprint_n"]),
            "bytes_per_idle_client": common.ratio(modes["pool"]["bytes_per_idle_client"],
                                                  modes["threads"]["bytes_per_idle_client"])}
    result["ok"] = "error" not in result and set(modes) == set(options.modes) and \
        all(r["connected"] == r["clients"] for r in result["runs"])
    return result


def report(result: dict[str, Any]) -> None:
    print(common.machine_line(result["machine"]))
    if "error" in result:
        print(f"error: {result['error']}")
    rows = [[mode, result["clients"], f"{m['bytes_per_idle_client'] / 1024:.1f}", f"{m['swarm_rss_1'] / MiB:.1f}",
             f"{m['swarm_rss_n'] / MiB:.1f}", f"{m['worker_rss_n'] / MiB:.1f}", f"{m['footprint_n'] / MiB:.1f}",
             m["threads_n"], f"{m['join_s']:.1f}", m["settled"]]
            for mode, m in result["modes"].items()]
    common.print_table("Idle clients", ["mode", "clients", "KiB per idle client", "swarm MiB (1 client)",
                                        "swarm MiB (all)", "workers MiB", "swarm + workers MiB", "threads",
                                        "join s", "settled"], rows)
    if "pool_vs_threads" in result:
        print("\npool / threads: " + ", ".join(f"{k} {v:.2f} x" for k, v in result["pool_vs_threads"].items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="idle clients in the large swarm (default 1000)")
    parser.add_argument("--project", default=str(ROOT / "test_projects" / "mnist-pytorch"),
                        help="the swarm's project (default test_projects/mnist-pytorch)")
    shared = ROOT.parent / "shared" / "data" / "mnist"
    parser.add_argument("--data-path", default=str(shared) if shared.is_dir() else "",
                        help="data directory handed to the clients (default ../shared/data/mnist if present)")
    parser.add_argument("--modes", default=",".join(MODES), help="pool, threads or both (default both)")
    parser.add_argument("--workers", type=int, default=1, help="workers of the pool mode (default 1)")
    parser.add_argument("--start-interval", type=float, default=0.01, help="seconds between client starts")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for all clients to connect")
    parser.add_argument("--settle-timeout", type=float, default=60.0,
                        help="seconds to wait for the swarm's RSS to settle once all are connected")
    common.add_output_options(parser)
    options = parser.parse_args()
    options.modes = [m.strip() for m in options.modes.split(",") if m.strip()]
    if not options.modes or set(options.modes) - set(MODES):
        parser.error(f"--modes takes {', '.join(MODES)}, got {options.modes}")
    if options.clients < 2:
        parser.error("--clients must be at least 2 (the difference to a 1-client swarm is measured)")
    return common.conclude(run(options), report, options.json)


if __name__ == "__main__":
    sys.exit(main())
