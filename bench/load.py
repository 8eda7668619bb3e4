"""The long load run: hundreds of virtual clients, one session of many rounds, nothing lost.

    .venv/bin/python bench/load.py [--clients 200] [--swarms 4] [--combiners 2] [--rounds 20]
                                   [--params 100k] [--no-validate] [--json load.json]

A reducer, ``--combiners`` combiners and ``--swarms`` ``fedtier swarm`` processes (the
clients shared out evenly; each client asks the reducer for its combiner) run as real
processes on loopback with ``bench/projects/noop`` (train copies the model through and
reports 100 examples). One session of ``--rounds`` rounds needs every client in every
round (``clients_required`` = all of them), and this script watches it:

  updates      every round succeeds with one update per client (participants, distinct
               names), and the examples the combiners aggregated equal the sum of what
               the clients reported (and clients x 100)
  memory       RSS (psutil) of the reducer, each combiner and each swarm at the end of
               every round, and the peak during the run: first round vs last, max growth
  heartbeats   every 0.5 s each combiner's Status: a client seen inactive (or missing)
               is one inactive observation; the largest seconds-since-heartbeat; every
               2 s the reducer's /api/v1/clients; at the end, each client's connects
               (more than one is a reconnect)
  time         the reducer's round time (and its phases)

It prints a table per round and a summary, and writes everything with ``--json``.
The exit status is 0 only when every check held.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import MiB, NOOP_PROJECT  # noqa: E402

from fedtier.launch.network import LocalNetwork  # noqa: E402
from fedtier.reducer.combiner_client import CombinerClient  # noqa: E402

EXAMPLES_PER_CLIENT = 100  # bench/projects/noop/noop.py NUM_EXAMPLES
STATUS_TIMEOUT_S = 10.0  # a combiner's Status slower than this counts as unanswered


def process_figures(pid: int) -> dict[str, float]:
    """RSS (MiB) and threads of a process now."""
    proc = psutil.Process(pid)
    return {"rss_mib": proc.memory_info().rss / MiB, "threads": proc.num_threads()}


class LoadNetwork:
    """The processes of one run (fedtier.launch.network) and the REST/gRPC handles to watch them with."""

    def __init__(self, local: LocalNetwork, args: argparse.Namespace) -> None:
        self.local = local
        self.procs = local.procs
        self.work = local.work_dir
        self.args = args
        self.combiners: dict[str, CombinerClient] = {}
        self.swarm_stats: list[Path] = []

    @property
    def url(self) -> str:
        return self.local.url

    def get(self, path: str, **params: Any) -> Any:
        reply = requests.get(self.url + path, params=params, timeout=30)
        reply.raise_for_status()
        return reply.json()

    def wait(self, what: str, condition, timeout: float) -> Any:
        # busy: ask again
        return self.local.wait_for(what, condition, timeout, retry_on=(KeyError, grpc.RpcError))

    def start(self) -> float:
        """Reducer, combiners, seed, swarms; returns seconds until every client was active."""
        a = self.args
        self.local.start_reducer()
        extra = []
        if a.heartbeat_interval:
            extra += ["--heartbeat-interval", str(a.heartbeat_interval)]
        if a.heartbeat_timeout:
            extra += ["--heartbeat-timeout", str(a.heartbeat_timeout)]
        if getattr(a, "liveness", ""):
            extra += ["--liveness", a.liveness]
        if getattr(a, "max_clients", 0):
            extra += ["--max-clients", str(a.max_clients)]
        env, combiner_level = None, None
        if getattr(a, "trace_combiners", False):  # tracemalloc on, and the INFO line that reports it
            env, combiner_level = {"PYTHONTRACEMALLOC": "1"}, "INFO"
        ports = self.local.start_combiners(a.combiners, *extra, env=env, log_level=combiner_level)
        self.combiners = {name: CombinerClient(f"127.0.0.1:{port}") for name, port in ports.items()}
        seed = self.work / "seed.safetensors"
        subprocess.run([sys.executable, str(NOOP_PROJECT / "seed.py"), str(seed), str(a.params)], check=True,
                       cwd=NOOP_PROJECT)
        self.local.seed(seed, timeout=60)

        self.combiners_idle = {name: process_figures(self.procs.procs[name].pid) for name in self.combiners}
        started = time.monotonic()
        shares = [a.clients // a.swarms + (1 if i < a.clients % a.swarms else 0) for i in range(a.swarms)]
        offset = 0
        for i, count in enumerate(shares):
            stats = self.work / f"swarm-{i}.json"
            self.swarm_stats.append(stats)
            self.local.spawn(
                f"swarm-{i}", "swarm",
                "--clients", str(count), "--reducer", self.url, "--project", str(NOOP_PROJECT),
                "--name-prefix", f"s{i}", "--partition-count", str(a.clients), "--partition-offset", str(offset),
                "--work-dir", str(self.work / f"swarm-{i}"), "--stats", str(stats), "--stats-interval", "1",
                "--task-slots", str(a.task_slots))
            offset += count
        seen = [0]

        def all_active() -> bool:
            seen[0] = sum(c.status(timeout=30).active_clients for c in self.combiners.values())
            return seen[0] >= a.clients

        try:
            self.wait(f"{a.clients} clients active on the combiners", all_active, max(180, a.clients / 8))
        except RuntimeError as exc:
            raise RuntimeError(f"{exc} (the last count was {seen[0]})") from None
        seconds = time.monotonic() - started
        self.combiners_held = {name: {**process_figures(self.procs.procs[name].pid),
                                      "clients": handle.status(timeout=30).active_clients}
                               for name, handle in self.combiners.items()}
        self.wait(f"the reducer to see {a.clients} active clients",
                  lambda: self.get("/api/v1/status")["clients_active"] >= a.clients, 60)
        return seconds

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.procs.items()}

    def read_swarm_stats(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in self.swarm_stats if p.is_file()]


class Watcher:
    """Polls the combiners, the reducer and the processes while the session runs."""

    def __init__(self, net: LoadNetwork) -> None:
        self.net = net
        self.handles = {name: psutil.Process(pid) for name, pid in net.pids().items()}
        self.peak_rss: dict[str, int] = {name: 0 for name in self.handles}
        self.known: set[str] = set()          # clients seen active at least once
        self.window = self._fresh_window()    # observations since the last round ended
        self.total_inactive = 0
        self.total_reducer_inactive = 0
        self.status_polls = 0
        self.status_unanswered = 0  # Status calls a combiner did not answer within STATUS_TIMEOUT_S

    @staticmethod
    def _fresh_window() -> dict[str, Any]:
        return {"inactive": 0, "reducer_inactive": 0, "max_gap_s": 0.0, "polls": 0, "status_unanswered": 0}

    def rss(self) -> dict[str, int]:
        out = {}
        for name, proc in self.handles.items():
            try:
                out[name] = proc.memory_info().rss
            except psutil.Error:
                out[name] = 0
            self.peak_rss[name] = max(self.peak_rss[name], out[name])
        return out

    def threads(self) -> dict[str, int]:
        out = {}
        for name, proc in self.handles.items():
            try:
                out[name] = proc.num_threads()
            except psutil.Error:
                out[name] = 0
        return out

    def poll_combiners(self) -> None:
        """One inactive observation per client seen active before and active on no combiner now.

        A combiner too busy to answer its Status in time is a finding, not a crash: it is
        counted, and that poll says nothing about which clients are active."""
        active: set[str] = set()
        for handle in self.net.combiners.values():
            try:
                clients = handle.status(timeout=STATUS_TIMEOUT_S).clients
            except grpc.RpcError:
                self.window["status_unanswered"] += 1
                self.status_unanswered += 1
                return
            for c in clients:
                self.window["max_gap_s"] = max(self.window["max_gap_s"], c.seconds_since_heartbeat)
                if c.active:
                    active.add(c.name)
        inactive = len(self.known - active)
        self.known |= active
        self.window["inactive"] += inactive
        self.total_inactive += inactive
        self.window["polls"] += 1
        self.status_polls += 1

    def poll_reducer(self) -> None:
        inactive = sum(1 for c in self.net.get("/api/v1/clients") if not c.get("active") and c["name"] in self.known)
        self.window["reducer_inactive"] += inactive
        self.total_reducer_inactive += inactive

    def take_window(self) -> dict[str, Any]:
        window, self.window = self.window, self._fresh_window()
        return window


def round_record(doc: dict[str, Any], window: dict[str, Any], rss: dict[str, int], validations: int | None,
                 clients: int) -> dict[str, Any]:
    combiners = doc.get("combiners") or []
    aggregated = sum(int(c.get("num_examples") or 0) for c in combiners if c.get("success"))
    reported = sum(int(u.get("num_examples") or 0) for c in combiners if c.get("success") for u in c.get("updates", []))
    participants = doc.get("participants") or []
    return {
        "round": doc["round"], "status": doc["status"], "error": doc.get("error"),
        "participants": len(participants), "distinct_participants": len(set(participants)),
        "examples_aggregated": aggregated, "examples_reported": reported,
        "examples_expected": clients * EXAMPLES_PER_CLIENT,
        "per_combiner": {c["name"]: {"updates": len(c.get("updates", [])), "num_examples": c.get("num_examples"),
                                     "failures": (c.get("failures") or [])[:5]} for c in combiners},
        "validations": validations, "round_time_s": doc["timings"].get("total", 0.0),
        "phases_s": {k: v for k, v in doc["timings"].items() if k != "total"},
        "rss_mib": {name: value / MiB for name, value in rss.items()},
        "heartbeat": window, "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fedtier-load-")).resolve()
    result: dict[str, Any] = {"machine": common.machine(), "settings": {k: v for k, v in vars(args).items()
                                                                         if k not in ("json",)}}
    with LocalNetwork(work, data_dir=work / "data", log_level=args.log_level) as local:
        procs = local.procs
        net = LoadNetwork(local, args)
        result["startup_s"] = net.start()
        # each combiner without clients, then holding them (all active, before any round)
        result["combiners_idle"] = net.combiners_idle
        result["combiners_held"] = net.combiners_held
        watcher = Watcher(net)
        result["rss_before_mib"] = {n: v / MiB for n, v in watcher.rss().items()}
        result["threads_before"] = watcher.threads()
        watcher.poll_combiners()
        watcher.take_window()
        body = {"rounds": args.rounds, "clients_required": args.clients, "round_timeout": args.round_timeout,
                "wait_for_clients": 60, "validate": args.validate, "helper": "numpy"}
        reply = requests.post(net.url + "/start", json=body, timeout=30)
        if reply.status_code != 201:
            raise RuntimeError(f"/start refused: {reply.status_code} {reply.text[:500]}")
        session_id = reply.json()["session_id"]
        print(f"session {session_id}: {args.rounds} rounds, {args.clients} clients in {args.swarms} swarms, "
              f"{args.combiners} combiners; logs in {procs.log_dir}", flush=True)

        records: list[dict[str, Any]] = []
        done: set[str] = set()
        deadline = time.monotonic() + args.rounds * (args.round_timeout + 120)
        last_reducer_poll = 0.0
        session: dict[str, Any] = {}
        while time.monotonic() < deadline:
            procs.check_alive()
            watcher.poll_combiners()
            watcher.rss()
            if time.monotonic() - last_reducer_poll >= 2.0:
                watcher.poll_reducer()
                last_reducer_poll = time.monotonic()
            # the session lists a round once it is over; fetching only those keeps each poll the
            # same size (a growing /api/v1/rounds answer would grow the reducer's RSS it measures)
            session = net.get(f"/api/v1/sessions/{session_id}")
            for round_id in session.get("round_ids", []):
                if round_id in done:
                    continue
                done.add(round_id)
                doc = net.get(f"/api/v1/rounds/{round_id}")
                validations = len(net.get("/api/v1/validations", round_id=doc["id"])) if args.validate else None
                record = round_record(doc, watcher.take_window(), watcher.rss(), validations, args.clients)
                record["threads"] = watcher.threads()
                records.append(record)
                print(row_line(record), flush=True)
            if session["status"] != "running":
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the session did not end in time; logs in {procs.log_dir}")

        result["session"] = {k: session.get(k) for k in ("status", "rounds_requested", "rounds_succeeded",
                                                          "rounds_failed")}
        result["trail_length"] = len(net.get("/api/v1/models"))
        result["rounds"] = records
        result["peak_rss_mib"] = {n: v / MiB for n, v in watcher.peak_rss.items()}
        result["inactive_observations"] = watcher.total_inactive
        result["reducer_inactive_observations"] = watcher.total_reducer_inactive
        result["status_polls"] = watcher.status_polls
        result["status_unanswered"] = watcher.status_unanswered
        for name, proc in procs.procs.items():  # a swarm writes its final stats when it stops
            if name.startswith("swarm-"):
                proc.terminate()
        for name, proc in procs.procs.items():
            if name.startswith("swarm-"):
                proc.wait(60)
        result["swarms"] = [s["totals"] | {"connects_per_client": sorted({c["connects"] for c in s["clients"].values()})}
                            for s in net.read_swarm_stats()]
        result["work_dir"] = str(work)
    if getattr(args, "trace_combiners", False):
        result["python_heap_mib"] = {name: python_heaps(work / "logs" / f"{name}.log")
                                     for name in result["rss_before_mib"] if name.startswith("combiner")}
    result["summary"] = summarize(result, args)
    return result


HEAP_LINE = re.compile(r"round (\S+): Python heap ([0-9.]+) MiB after the round")


def python_heaps(log: Path) -> list[float]:
    """The combiner's Python heap after each round (MiB), from its log (``--trace-combiners``)."""
    if not log.is_file():
        return []
    return [float(m.group(2)) for m in HEAP_LINE.finditer(log.read_text(errors="replace"))
            if not m.group(1).endswith(".validate")]


def row_line(r: dict[str, Any]) -> str:
    combiners = [v for k, v in r["rss_mib"].items() if k.startswith("combiner")]
    return (f"round {r['round']:>3} {r['status']:<8} updates {r['participants']:>4}  examples "
            f"{r['examples_aggregated']}/{r['examples_reported']}  time {r['round_time_s']:6.2f}s  "
            f"RSS reducer {r['rss_mib'].get('reducer', 0):6.1f} MiB combiners "
            + "/".join(f"{v:.1f}" for v in combiners)
            + f" MiB  inactive {r['heartbeat']['inactive']}"
            f"  max heartbeat gap {r['heartbeat']['max_gap_s']:.2f}s")


def growth(records: list[dict[str, Any]], name: str) -> dict[str, float]:
    values = [r["rss_mib"].get(name, 0.0) for r in records]
    if not values:
        return {}
    return {"first_mib": values[0], "last_mib": values[-1], "last_minus_first_mib": values[-1] - values[0],
            "max_growth_mib": max(values) - values[0],
            "max_growth_after_round_2_mib": (max(values[1:]) - values[1]) if len(values) > 1 else 0.0}


def summarize(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    records = result["rounds"]
    names = list(result["rss_before_mib"])
    lost = [r["round"] for r in records
            if r["status"] != "success" or r["participants"] != args.clients
            or r["distinct_participants"] != args.clients
            or not r["examples_aggregated"] == r["examples_reported"] == r["examples_expected"]
            or (r["validations"] is not None and r["validations"] != args.clients)]
    reconnects = sum(s.get("reconnected", 0) for s in result["swarms"])
    times = [r["round_time_s"] for r in records]
    checks = {
        "all_rounds_succeeded": len(records) == args.rounds and result["session"]["rounds_succeeded"] == args.rounds,
        "no_update_lost": not lost,
        "trail_length_is_rounds_plus_one": result["trail_length"] == args.rounds + 1,
        "combiners_answered_status": result.get("status_unanswered", 0) == 0,
        "no_client_inactive": result["inactive_observations"] == 0 and result["reducer_inactive_observations"] == 0,
        "no_reconnect": reconnects == 0,
    }
    return {
        "checks": checks, "ok": all(checks.values()), "rounds_with_problems": lost,
        "round_time_s": common.summarize(times),
        "max_heartbeat_gap_s": max((r["heartbeat"]["max_gap_s"] for r in records), default=0.0),
        "reconnects": reconnects,
        "rss_growth": {n: growth(records, n) for n in names},
    }


def print_report(result: dict[str, Any], args: argparse.Namespace) -> None:
    records = result["rounds"]
    names = list(result["rss_before_mib"])
    headers = ["round", "status", "updates", "examples agg/reported", "time s", "reducer MiB",
               *[n.replace("combiner-", "c") + " MiB" for n in names if n.startswith("combiner")],
               "inactive obs", "max hb gap s"]
    rows = [[r["round"], r["status"], r["participants"], f"{r['examples_aggregated']}/{r['examples_reported']}",
             r["round_time_s"], r["rss_mib"].get("reducer", 0.0),
             *[r["rss_mib"][n] for n in names if n.startswith("combiner")],
             r["heartbeat"]["inactive"], r["heartbeat"]["max_gap_s"]] for r in records]
    common.print_table(f"Load: {args.clients} clients ({args.swarms} swarms), {args.combiners} combiners, "
                       f"{common.human_count(args.params)}-parameter model", headers, rows)
    s = result["summary"]
    print_rows = [[n, g["first_mib"], g["last_mib"], g["last_minus_first_mib"], g["max_growth_mib"],
                   g["max_growth_after_round_2_mib"], result["peak_rss_mib"][n]]
                  for n, g in s["rss_growth"].items() if g]
    common.print_table("RSS (end of round)", ["process", "round 1 MiB", "last MiB", "last - first", "max growth",
                                              "max growth after round 2", "peak MiB"], print_rows)
    print(f"\nstartup (all clients active): {result['startup_s']:.1f}s; threads per swarm process: "
          + ", ".join(str(v) for k, v in result["threads_before"].items() if k.startswith("swarm")))
    for name, held in result["combiners_held"].items():
        idle = result["combiners_idle"][name]
        per_client = (held["rss_mib"] - idle["rss_mib"]) * 1024 / held["clients"] if held["clients"] else 0.0
        print(f"{name}: {held['clients']} clients, {held['threads']} threads ({idle['threads']} without clients), "
              f"RSS {held['rss_mib']:.1f} MiB ({idle['rss_mib']:.1f} without clients: {per_client:.1f} KiB a client)")
    print(f"round time: median {s['round_time_s']['median']:.2f}s, min {s['round_time_s']['min']:.2f}s, "
          f"max {s['round_time_s']['max']:.2f}s")
    print(f"heartbeats: {result['status_polls']} status polls ({result['status_unanswered']} unanswered), "
          f"{result['inactive_observations']} inactive "
          f"observations (combiners), {result['reducer_inactive_observations']} (reducer), largest gap "
          f"{s['max_heartbeat_gap_s']:.2f}s; reconnects {s['reconnects']}")
    for name, heaps in result.get("python_heap_mib", {}).items():
        if heaps:
            print(f"{name} Python heap after each training round (tracemalloc, MiB): first {heaps[0]:.2f}, "
                  f"after round 2 {heaps[min(1, len(heaps) - 1)]:.2f}, last {heaps[-1]:.2f}, max {max(heaps):.2f}")
    print("checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in s["checks"].items()))
    print(common.machine_line(result["machine"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200, help="virtual clients in all (default 200)")
    parser.add_argument("--swarms", type=int, default=4, help="swarm processes they are shared out to (default 4)")
    parser.add_argument("--combiners", type=int, default=2, help="combiner processes (default 2)")
    parser.add_argument("--rounds", type=int, default=20, help="rounds in the one session (default 20)")
    parser.add_argument("--params", type=common.parse_count, default=100_000,
                        help="float32 values in the model (default 100k: 400 KB)")
    parser.add_argument("--validate", action=argparse.BooleanOptionalAction, default=True,
                        help="validate each new global model on the clients (default: yes)")
    parser.add_argument("--round-timeout", type=float, default=300.0, help="seconds per round (default 300)")
    parser.add_argument("--heartbeat-interval", type=float, default=0.0,
                        help="combiner --heartbeat-interval (default: the combiner's own default)")
    parser.add_argument("--heartbeat-timeout", type=float, default=0.0,
                        help="combiner --heartbeat-timeout (default: the combiner's own default)")
    parser.add_argument("--liveness", choices=("stream", "heartbeat"), default=None,
                        help="combiner --liveness (default: the combiner's own, stream)")
    parser.add_argument("--max-clients", type=int, default=0,
                        help="combiner --max-clients (default: the combiner's own)")
    parser.add_argument("--task-slots", type=int, default=8,
                        help="fedtier swarm --task-slots: tasks at once per swarm process (default 8; 0: no limit)")
    parser.add_argument("--trace-combiners", action="store_true",
                        help="run the combiners under tracemalloc and report their Python heap after each "
                             "round (slower; tells a leak of Python objects from the allocator keeping memory)")
    parser.add_argument("--log-level", default="WARNING", help="of the processes started (default WARNING)")
    parser.add_argument("--work-dir", default="", help="stores and logs (default: a new temporary folder)")
    parser.add_argument("--json", default="", help="write every figure to this JSON file")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.swarms < 1 or args.combiners < 1 or args.rounds < 1 or args.swarms > args.clients:
        parser.error("--clients, --swarms, --combiners and --rounds must be positive, --swarms at most --clients")
    result = run(args)
    print_report(result, args)
    common.write_json(args.json, result)
    return 0 if result["summary"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
