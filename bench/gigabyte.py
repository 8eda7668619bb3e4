"""A gigabyte model through the whole network: round time against raw gRPC, and combiner memory.

    .venv/bin/python bench/gigabyte.py [--size-mib 1024] [--clients 2,10] [--rounds 3,1]
                                       [--warmup 1,0] [--first-touch-mib 1024] [--json out.json]

For each client count, a fresh network runs on loopback: ``fedtier reducer``, one
``fedtier combiner`` and N ``fedtier client`` processes with bench/projects/noop (train
copies the model file: a client never loads the model, it streams it to disk on the
way in and from disk on the way out). The seed is a float32 model of ``--size-mib``
MiB in 8 tensors. Each round is a session of one round (``POST /start``, validation
off), and its time is the reducer's ``timings.total``.

Baseline, measured in the same run right after every round: the **raw-gRPC floor**,
bench/transfer.py's raw server (generic handlers, no serialization, no hashing, no
files) moving the bytes the round moves, one stream after another, in the same 1 MiB
chunks. A round moves the model

    reducer -> combiner (1 upload), combiner -> each client (N downloads),
    each client -> combiner (N uploads), combiner -> reducer (1 download),

so the floor moves (2N + 2) x model bytes: 6 GiB for 1 GiB and 2 clients. With one
combiner, from the second round on, the global model is the combiner's own aggregate of
the round before and the reducer does not send it back (AdoptModel; the round records
``pushed: adopted``): then the round moves, and the floor moves, (2N + 1) x model bytes.
The figure to quote is round / floor (the issue's target: at most 2).

Memory: the resident set size of the combiner (and of the reducer and of each
client) is sampled with psutil every ``--sample-ms`` during each round; the kernel's
own high-water mark (VmHWM, reset before each round through /proc/PID/clear_refs)
is read too, so a peak between two samples is not missed. The figures to quote are
the combiner's peak / model size (target: at most 3) and its peak with 10 clients /
with 2 (target: no growth, about 1).

CPU: each round's user and system seconds of every process (reducer, combiner, clients),
against the raw floor's (its server and this process), and the bytes the kernel took into
its page cache during the round. With them, ``--first-touch-mib`` measures the machine's
cost of writing into fresh memory, into the same memory again and into a new file: on a
VM that hands free memory back to its host, the first touch of a page is what a round's
files pay and the floor's reused buffers do not (docs/performance.md, issue 7, session 4).
"""
from __future__ import annotations

import argparse
import mmap
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import transfer  # noqa: E402
from common import MiB  # noqa: E402
from common import make_seed  # noqa: E402
from flower_compare import FedtierNetwork  # noqa: E402


GiB = 1 << 30
TENSOR_COUNT = 8


# ---------------------------------------------------------------- CPU and first touch
ROLES = ("reducer", "combiner", "clients")


def role(name: str) -> str:
    return "clients" if name.startswith("client-") else "combiner" if name.startswith("combiner") else name


def cpu_by_role(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, list[float]]:
    """(user, system) seconds each role used between two readings, and their total."""
    out = {r: [0.0, 0.0] for r in (*ROLES, "total")}
    for name, (user, system) in after.items():
        for key in (role(name), "total"):
            out[key][0] += user - before[name][0]
            out[key][1] += system - before[name][1]
    return out


def dirtied_bytes() -> int:
    """Pages the kernel has seen written into its page cache since boot (/proc/vmstat), in bytes."""
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("nr_dirtied "):
                    return int(line.split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        pass
    return 0


def first_touch_cost(folder: Path, size: int = GiB, settle_s: float = 3.0) -> dict[str, dict[str, float]]:
    """Wall and system seconds per GiB to write data into memory: anonymous memory mapped
    fresh, the same memory written again, and a new file (page cache).

    The raw-gRPC floor reuses its buffers; a round writes every model it moves into new
    files. On a VM whose host takes free guest memory back (Linux free page reporting: this
    machine's kernel runs with page_reporting_order=11) the first touch of such a page costs
    a fault in the host too. ``settle_s`` lets memory freed just before be taken back first,
    as it is between a round's transfers."""
    block = b"\x01" * MiB
    size -= size % MiB

    def timed(write: Any) -> dict[str, float]:
        system, t = resource.getrusage(resource.RUSAGE_SELF).ru_stime, time.perf_counter()
        write()
        wall = time.perf_counter() - t
        system = resource.getrusage(resource.RUSAGE_SELF).ru_stime - system
        return {"wall_s_per_gib": wall * GiB / size, "system_s_per_gib": system * GiB / size}

    def fill(buffer: mmap.mmap) -> None:
        for offset in range(0, size, MiB):
            buffer[offset:offset + MiB] = block

    def write_file(path: Path) -> None:
        with open(path, "wb") as f:
            for _ in range(size // MiB):
                f.write(block)

    time.sleep(settle_s)
    buffer = mmap.mmap(-1, size)
    out = {"anonymous_fresh": timed(lambda: fill(buffer)), "anonymous_again": timed(lambda: fill(buffer))}
    buffer.close()
    time.sleep(settle_s)
    path = folder / ".first-touch"
    try:
        out["new_file"] = timed(lambda: write_file(path))
    finally:
        path.unlink(missing_ok=True)
    return out


# ---------------------------------------------------------------- memory
def read_hwm(pid: int) -> int | None:
    """The kernel's peak RSS of a process (VmHWM), in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_hwm(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs); False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler(threading.Thread):
    """Samples the RSS of named processes; keeps the peak of each per window (a round)."""

    def __init__(self, pids: dict[str, int], interval: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.interval = interval
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.window: str | None = None
        self.peaks: dict[str, dict[str, int]] = {}
        self.samples: dict[str, int] = {}

    def open_window(self, label: str) -> None:
        with self.lock:
            self.window = label
            self.peaks[label] = {}
            self.samples[label] = 0

    def close_window(self) -> dict[str, int]:
        with self.lock:
            label, self.window = self.window, None
        return self.peaks.get(label or "", {})

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            with self.lock:
                window = self.window
            if window is None:
                continue
            current = {}
            for name, proc in self.procs.items():
                try:
                    current[name] = proc.memory_info().rss
                except psutil.Error:
                    pass
            with self.lock:
                peaks = self.peaks[window]
                for name, rss in current.items():
                    peaks[name] = max(peaks.get(name, 0), rss)
                self.samples[window] += 1


def rss_now(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


# ---------------------------------------------------------------- one network
def run_clients(work: Path, seed: Path, clients: int, rounds: int, warmup: int, raw: transfer.RawClient,
                raw_pid: int, sample_interval: float) -> dict[str, Any]:
    size = seed.stat().st_size
    net = FedtierNetwork(work, 1, clients)
    records: list[dict[str, Any]] = []
    started = time.monotonic()
    sampler: RssSampler | None = None
    try:
        net.start(seed)
        startup = time.monotonic() - started
        names = ["reducer", "combiner-0"] + [f"client-{i}" for i in range(clients)]
        pids = {name: net.pid(name) for name in names}
        sampler = RssSampler(pids, sample_interval)
        sampler.start()
        hwm_ok = True
        for number in range(warmup + rounds):
            before = {name: rss_now(pid) for name, pid in pids.items()}
            hwm_ok &= all(reset_hwm(pid) for pid in pids.values())
            sampler.open_window(str(number))
            cpu_before, dirtied = {name: common.cpu_times(pid) for name, pid in pids.items()}, dirtied_bytes()
            t = time.perf_counter()
            (doc,) = net.run_session(1, validate=False)
            wall = time.perf_counter() - t
            cpu = cpu_by_role(cpu_before, {name: common.cpu_times(pid) for name, pid in pids.items()})
            dirtied = dirtied_bytes() - dirtied
            peaks = sampler.close_window()
            hwm = {name: read_hwm(pid) for name, pid in pids.items()}
            pushed = set((doc.get("pushed") or {}).values())
            raw_cpu, own_cpu = common.cpu_times(raw_pid), resource.getrusage(resource.RUSAGE_SELF)
            floor = transfer.raw_round_floor(raw, size, clients, push=pushed != {"adopted"})
            raw_after, own_after = common.cpu_times(raw_pid), resource.getrusage(resource.RUSAGE_SELF)
            floor_cpu = [raw_after[0] - raw_cpu[0] + own_after.ru_utime - own_cpu.ru_utime,
                         raw_after[1] - raw_cpu[1] + own_after.ru_stime - own_cpu.ru_stime]
            combiner = (doc.get("combiners") or [{}])[0]
            updates = combiner.get("updates") or []
            client_rss = [peaks.get(f"client-{i}", 0) for i in range(clients)]
            client_hwm = [hwm.get(f"client-{i}") or 0 for i in range(clients)]
            records.append({
                "round": number, "warmup": number < warmup, "status": doc["status"], "error": doc.get("error"),
                "round_s": doc["timings"].get("total", 0.0), "session_wall_s": wall, "raw_floor_s": floor,
                "cpu": cpu, "floor_cpu": floor_cpu, "dirtied_bytes": dirtied,
                "pushed": sorted(pushed), "bytes_moved": (2 * clients + (1 if pushed == {"adopted"} else 2)) * size,
                "reducer_phases": {**doc["timings"], "other": doc["timings"].get("total", 0.0) - sum(
                    doc["timings"].get(k, 0.0) for k in ("wait_clients", "transfer", "training", "aggregation",
                                                         "validation"))},  # the commit, mostly
                "combiner_phases": combiner.get("timings", {}),
                "client_phases": {p: statistics.median(u["timings"].get(p, 0.0) for u in updates) if updates
                                  else 0.0 for p in ("download", "train", "upload")},
                "updates": len(updates),
                "rss_before": before,
                "rss_peak_sampled": {"combiner": peaks.get("combiner-0", 0), "reducer": peaks.get("reducer", 0),
                                     "client_max": max(client_rss)},
                "rss_peak_hwm": {"combiner": hwm.get("combiner-0"), "reducer": hwm.get("reducer"),
                                 "client_max": max(client_hwm)} if hwm_ok else None,
                "samples": sampler.samples.get(str(number), 0),
            })
            r = records[-1]
            print(f"  {clients} clients, round {number}{' (warm-up)' if r['warmup'] else ''}: {r['status']} "
                  f"{r['round_s']:.2f} s, raw floor {floor:.2f} s, combiner peak "
                  f"{r['rss_peak_sampled']['combiner'] / MiB:,.0f} MiB sampled"
                  + (f" / {r['rss_peak_hwm']['combiner'] / MiB:,.0f} MiB VmHWM" if r["rss_peak_hwm"] else ""),
                  flush=True)
    finally:
        if sampler is not None:
            sampler.stop.set()
        net.stop()
    timed = [r for r in records if not r["warmup"] and r["status"] == "success"]
    memory_source = "rss_peak_hwm" if timed and timed[0]["rss_peak_hwm"] else "rss_peak_sampled"
    all_ok = [r for r in records if r["status"] == "success"]  # warm-up rounds count for memory peaks
    out: dict[str, Any] = {
        "clients": clients, "startup_s": startup, "records": records,
        "rounds": len(records), "rounds_succeeded": len(all_ok), "rounds_timed": len(timed),
        "round_s": common.summarize(r["round_s"] for r in timed),
        "raw_floor_s": common.summarize(r["raw_floor_s"] for r in timed),
        "ratio_vs_raw_floor": common.summarize(r["round_s"] / r["raw_floor_s"] for r in timed),
        "bytes_per_round": statistics.median(r["bytes_moved"] for r in timed) if timed else (2 * clients + 2) * size,
        "rounds_adopted": sum(1 for r in timed if r["pushed"] == ["adopted"]),
        "reducer_phases": {p: common.summarize(r["reducer_phases"].get(p, 0.0) for r in timed)
                           for p in sorted({k for r in timed for k in r["reducer_phases"]})},
        "combiner_phases": {p: common.summarize(r["combiner_phases"].get(p, 0.0) for r in timed)
                            for p in sorted({k for r in timed for k in r["combiner_phases"]})},
        "client_phases": {p: common.summarize(r["client_phases"][p] for r in timed)
                          for p in ("download", "train", "upload")},
        "memory_source": memory_source,
        "cpu": {key: [common.summarize(r["cpu"][key][i] for r in timed)["median"] for i in (0, 1)]
                for key in (*ROLES, "total")} if timed else {},
        "floor_cpu": [common.summarize(r["floor_cpu"][i] for r in timed)["median"] for i in (0, 1)] if timed else [],
        "dirtied_bytes": statistics.median(r["dirtied_bytes"] for r in timed) if timed else 0,
    }
    for who in ("combiner", "reducer", "client_max"):
        sampled = max((r["rss_peak_sampled"][who] for r in all_ok), default=0)
        hwm = max(((r["rss_peak_hwm"] or {}).get(who) or 0 for r in all_ok), default=0)
        out[f"{who}_peak_sampled_bytes"] = sampled
        out[f"{who}_peak_hwm_bytes"] = hwm or None
        out[f"{who}_peak_bytes"] = max(sampled, hwm)
    out["combiner_peak_vs_model"] = out["combiner_peak_bytes"] / size
    out["combiner_rss_between_rounds_bytes"] = max((r["rss_before"]["combiner-0"] for r in records), default=0)
    return out


# ---------------------------------------------------------------- the run
def per_count(values: list[int], counts: list[int], what: str) -> list[int]:
    if len(values) == 1:
        return values * len(counts)
    if len(values) != len(counts):
        raise SystemExit(f"--{what} needs one value or one per --clients entry")
    return values


def run(options: argparse.Namespace) -> dict[str, Any]:
    work = Path(options.work_dir or tempfile.mkdtemp(prefix="fedtier-bench-gigabyte-"))
    work.mkdir(parents=True, exist_ok=True)
    rounds = per_count(options.rounds, options.clients, "rounds")
    warmups = per_count(options.warmup, options.clients, "warmup")
    size_bytes = options.size_mib * MiB
    params = size_bytes // 4
    result: dict[str, Any] = {"benchmark": "gigabyte", "machine": common.machine(), "size_mib": options.size_mib,
                              "params": params, "runs": [], "errors": []}
    try:
        t = time.perf_counter()
        seed = make_seed(work / "seed", params)
        result["model_bytes"] = seed.stat().st_size
        print(f"seed: {params:,} float32 parameters, {result['model_bytes'] / MiB:,.1f} MiB, made in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        with common.Processes(work / "logs") as procs:
            raw_port = common.free_port()
            raw_proc = procs.start("raw", [sys.executable, str(Path(transfer.__file__).resolve()),
                                           "--serve-raw", str(raw_port)])
            common.wait_for_port(raw_port, proc=raw_proc)
            raw = transfer.RawClient(f"127.0.0.1:{raw_port}")
            touch = [first_touch_cost(work, options.first_touch_mib * MiB, options.settle_s)] \
                if options.first_touch_mib > 0 else []
            result["first_touch"] = touch
            try:
                for clients, n_rounds, warmup in zip(options.clients, rounds, warmups):
                    print(f"network: reducer + 1 combiner + {clients} clients, {warmup}+{n_rounds} rounds",
                          flush=True)
                    folder = work / f"net-{clients}"
                    try:
                        result["runs"].append(run_clients(folder, seed, clients, n_rounds, warmup, raw,
                                                          raw_proc.pid, options.sample_ms / 1e3))
                    except Exception as exc:  # noqa: BLE001 - reported; the next client count still runs
                        traceback.print_exc()
                        result["errors"].append(f"{clients} clients: {exc}")
                    finally:
                        if not options.keep:
                            shutil.rmtree(folder / "data", ignore_errors=True)
                if touch:
                    touch.append(first_touch_cost(work, options.first_touch_mib * MiB, options.settle_s))
            finally:
                raw.close()
    finally:
        if not options.work_dir and not options.keep:
            shutil.rmtree(work, ignore_errors=True)
    runs = {r["clients"]: r for r in result["runs"]}
    counts = sorted(runs)
    if len(counts) >= 2:
        low, high = runs[counts[0]], runs[counts[-1]]
        result["combiner_peak_growth"] = common.ratio(high["combiner_peak_bytes"], low["combiner_peak_bytes"])
        result["combiner_peak_growth_clients"] = [counts[0], counts[-1]]
    result["machine_after"] = {"loadavg_1m": round(os.getloadavg()[0], 2),
                               "mem_available_gib": round(psutil.virtual_memory().available / GiB, 1)}
    result["ok"] = not result["errors"] and all(
        r["rounds_succeeded"] == r["rounds"] and r["rounds_timed"] >= 1 for r in result["runs"])
    return result


def report(result: dict[str, Any]) -> None:
    size = result.get("model_bytes", result["size_mib"] * MiB)
    rows = []
    for r in result["runs"]:
        rows.append([r["clients"], f"{r['rounds_succeeded']}/{r['rounds']}", r["rounds_timed"],
                     r.get("rounds_adopted", 0),
                     r["round_s"]["median"], r["round_s"]["min"], r["round_s"]["max"],
                     r["bytes_per_round"] / MiB, r["raw_floor_s"]["median"],
                     r["bytes_per_round"] / MiB / r["raw_floor_s"]["median"] if r["rounds_timed"] else "-",
                     r["ratio_vs_raw_floor"]["median"]])
    common.print_table(f"Round time, {size / MiB:,.0f} MiB model, reducer + 1 combiner + N clients (s); "
                       f"floor = raw gRPC moving the round's bytes ((2N+2) x model, (2N+1) when the push "
                       f"was adopted) one stream after another, after each round",
                       ["clients", "ok", "timed", "timed with push adopted", "round median s", "min", "max", "MiB moved", "raw floor s",
                        "raw MiB/s", "round / floor (target <= 2)"], rows)
    rows = []
    for r in result["runs"]:
        red, comb, cl = r["reducer_phases"], r["combiner_phases"], r["client_phases"]
        med = lambda d, k: d[k]["median"] if k in d else 0.0  # noqa: E731
        rows.append([r["clients"], med(red, "total"), med(red, "wait_clients"), med(red, "transfer"),
                     med(red, "training"), med(red, "aggregation"),
                     med(red, "other"),  # per round, then the median (a difference of medians can be < 0)
                     med(comb, "tasks"), med(comb, "aggregation"), med(cl, "download"), med(cl, "train"),
                     med(cl, "upload")])
    common.print_table("Where the round's time goes (medians, s): reducer phases | combiner phases | per client",
                       ["clients", "round", "wait_clients", "transfer (trail + push + fetch)", "training",
                        "aggregation", "other (commit)", "combiner tasks", "combiner aggregation",
                        "client download", "client train (copy)", "client upload"], rows)
    rows = []
    for r in result["runs"]:
        if not r.get("cpu"):
            continue
        cpu = r["cpu"]
        rows.append([r["clients"], *(f"{cpu[k][0]:.2f} + {cpu[k][1]:.2f}" for k in (*ROLES, "total")),
                     f"{r['floor_cpu'][0]:.2f} + {r['floor_cpu'][1]:.2f}",
                     common.ratio(sum(cpu["total"]), sum(r["floor_cpu"])), r["dirtied_bytes"] / GiB])
    common.print_table("CPU per round (medians, user + system s, all processes of each role) against the "
                       "raw floor's (its server and client), and GiB written into the page cache (/proc/vmstat)",
                       ["clients", "reducer", "combiner", "clients", "total", "raw floor", "total / floor",
                        "GiB written to files"], rows)
    rows = [[when, *(f"{t[k]['wall_s_per_gib']:.2f} ({t[k]['system_s_per_gib']:.2f})"
                     for k in ("anonymous_fresh", "anonymous_again", "new_file"))]
            for when, t in zip(("before the networks", "after them"), result.get("first_touch", []))]
    common.print_table("This machine's cost of writing 1 GiB into memory, s per GiB wall (system): memory "
                       "mapped fresh, the same memory again, a new file",
                       ["measured", "fresh memory", "the same memory again", "new file (page cache)"], rows)
    rows = []
    for r in result["runs"]:
        rows.append([r["clients"], r["combiner_peak_sampled_bytes"] / MiB,
                     (r["combiner_peak_hwm_bytes"] or 0) / MiB or "-", r["combiner_peak_vs_model"],
                     r["combiner_rss_between_rounds_bytes"] / MiB, r["reducer_peak_bytes"] / MiB,
                     r["client_max_peak_bytes"] / MiB])
    common.print_table(f"Peak RSS during the rounds, warm-up included (MiB; model {size / MiB:,.0f} MiB)",
                       ["clients", "combiner sampled", "combiner VmHWM", "combiner peak / model (target <= 3)",
                        "combiner between rounds", "reducer peak", "largest client peak"], rows)
    if "combiner_peak_growth" in result:
        low, high = result["combiner_peak_growth_clients"]
        print(f"\ncombiner peak with {high} clients / with {low} = {result['combiner_peak_growth']:.2f} "
              f"(target: no growth, ~1)")
    for error in result["errors"]:
        print(f"  error: {error[:500]}")
    print("\n" + common.machine_line(result["machine"]) +
          f"; after: load {result['machine_after']['loadavg_1m']}, "
          f"{result['machine_after']['mem_available_gib']} GiB available")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Figures are ratios against baselines measured in the same run.")
    p.add_argument("--size-mib", type=int, default=1024, help="model size in MiB of float32 (default 1024)")
    p.add_argument("--clients", type=lambda s: common.parse_list(s, int), default=[2, 10],
                   help="client counts, one network each (default 2,10)")
    p.add_argument("--rounds", type=lambda s: common.parse_list(s, int), default=[3, 1],
                   help="timed rounds, one value or one per client count (default 3,1)")
    p.add_argument("--warmup", type=lambda s: [int(v) for v in s.split(",")], default=[1, 0],
                   help="untimed rounds first, one value or one per client count (default 1,0)")
    p.add_argument("--sample-ms", type=float, default=50.0, help="RSS sampling interval in ms (default 50)")
    p.add_argument("--first-touch-mib", type=int, default=1024,
                   help="MiB written to measure the machine's cost of fresh memory, before and after the "
                        "networks (default 1024; 0 skips it)")
    p.add_argument("--settle-s", type=float, default=3.0,
                   help="seconds to wait before each first-touch measurement, so memory freed just before "
                        "is taken back by the host first (default 3)")
    common.add_output_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # clean up on SIGTERM too
    if options.size_mib < 1 or any(c < 1 for c in options.clients) or any(r < 1 for r in options.rounds):
        raise SystemExit("--size-mib, --clients and --rounds must be at least 1")
    return common.conclude(run(options), report, options.json)


if __name__ == "__main__":
    sys.exit(main())
