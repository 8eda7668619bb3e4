"""FedAvg cost per update vs plain numpy, and its memory as updates accumulate.

    .venv/bin/python bench/aggregation.py [--params 10M,100M] [--updates 4] [--json out.json]

For each model size, update files (float32, a few tensors) are written once and read
once so every variant below reads them from the page cache. Timed per update:
  fedavg         ``fedtier.aggregators.FedAvg.add`` (reads the file: checks it, then folds it in)
  fedavg, on arrival  what a combiner does for an upload: each 1 MiB chunk of the update is
                 copied into a receive buffer (untimed: that is the transfer's work, and on the
                 upload path the chunk was just hashed and written, so it is in the CPU cache), then
                 fed to ``FedAvg.arrival_check`` (timed); then ``FedAvg.add(..., checked=...)``,
                 which only folds (timed). The figure is the sum of the two.
  numpy, memory  ``acc += w * x`` per tensor, with the update's arrays already in memory
  numpy, blocked the same arithmetic in 2 MiB blocks through one preallocated temporary:
                 no large temporaries, so no page faults; the arithmetic floor
  numpy, files   ``acc += w * x`` with each tensor first read from the same file (``np.fromfile``)
The ratios fedavg / numpy-memory and fedavg / numpy-files separate arithmetic from I/O.
(``w * x`` on a whole tensor allocates a tensor-sized temporary; above glibc's mmap
threshold, 32 MiB at most, every such temporary is fresh memory that page-faults in.)
``finish`` (writing the aggregate) is timed once per size.

Memory: a second pass runs FedAvg under tracemalloc (numpy reports its buffers to it)
and records, per update, the allocation peak during ``add`` and the RSS after it. A
streaming mean should hold one model copy plus a bounded slice, whatever the count.
"""
from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import MiB  # noqa: E402

from fedtier.aggregators import FedAvg, Update  # noqa: E402
from fedtier.helpers import get_helper  # noqa: E402
from fedtier.helpers.format import read_header, write_model  # noqa: E402

TENSORS = 8
DISTINCT_FILES = 2  # updates cycle through this many files: disk use stays small for any --updates


def make_updates(folder: Path, params: int, count: int) -> list[Path]:
    rng = np.random.default_rng(1)
    sizes = [params // TENSORS] * TENSORS
    sizes[-1] += params - sum(sizes)
    paths = []
    for i in range(count):
        path = folder / f"update-{i}"
        write_model(path, {f"layer{t}.weight": rng.standard_normal(n, dtype=np.float32)
                           for t, n in enumerate(sizes)})
        paths.append(path)
    return paths


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 * MiB):
            pass


def weights_for(n: int) -> list[float]:
    return [float(10 * (i % 7 + 1)) for i in range(n)]


def time_fedavg(files: list[Path], n: int) -> tuple[list[float], float]:
    agg = FedAvg(get_helper("numpy"))
    agg.start(files[0])
    per_update = []
    for i, w in enumerate(weights_for(n)):
        t = time.perf_counter()
        agg.add(Update(files[i % len(files)], w))
        per_update.append(time.perf_counter() - t)
    out = files[0].parent / "aggregate"
    t = time.perf_counter()
    agg.finish(out)
    finish = time.perf_counter() - t
    out.unlink()
    return per_update, finish


ARRIVAL_CHUNK = 1 << 20  # the transfer's chunk size (fedtier.transport.streams.CHUNK_SIZE)


def time_fedavg_on_arrival(files: list[Path], n: int) -> tuple[list[float], list[float]]:
    """Per update: (check while receiving + fold, the check's part of it)."""
    received = {p: p.read_bytes() for p in files}
    buffer = bytearray(ARRIVAL_CHUNK)  # where a received chunk sits while it is hashed and written
    agg = FedAvg(get_helper("numpy"))
    agg.start(files[0])
    per_update, checks = [], []
    for i, w in enumerate(weights_for(n)):
        path = files[i % len(files)]
        data = memoryview(received[path])
        check_seconds = 0.0
        check = agg.arrival_check(len(data))
        for start in range(0, len(data), ARRIVAL_CHUNK):
            chunk = data[start:start + ARRIVAL_CHUNK]
            buffer[:len(chunk)] = chunk  # the chunk arrives (not timed)
            t = time.perf_counter()
            check.feed(memoryview(buffer)[:len(chunk)])
            check_seconds += time.perf_counter() - t
        t = time.perf_counter()
        agg.add(Update(path, w, checked=check))
        per_update.append(check_seconds + time.perf_counter() - t)
        checks.append(check_seconds)
    del received
    return per_update, checks


def time_numpy_memory(files: list[Path], n: int) -> list[float]:
    from fedtier.helpers.format import read_model
    loaded = [read_model(p) for p in files]
    acc = {k: np.zeros_like(v) for k, v in loaded[0].items()}
    for a in acc.values():
        a.fill(0)  # touch the pages now, not inside the timed updates
    per_update = []
    for i, w in enumerate(weights_for(n)):
        x = loaded[i % len(loaded)]
        t = time.perf_counter()
        for name, a in acc.items():
            a += w * x[name]
        per_update.append(time.perf_counter() - t)
    del loaded, acc
    return per_update


BLOCK = (2 << 20) // 4  # float32 elements per block: the slice size FedAvg uses


def time_numpy_blocked(files: list[Path], n: int) -> list[float]:
    from fedtier.helpers.format import read_model
    loaded = [read_model(p) for p in files]
    acc = {k: np.zeros_like(v) for k, v in loaded[0].items()}
    for a in acc.values():
        a.fill(0)  # touch the pages now, not inside the timed updates
    tmp = np.empty(BLOCK, dtype=np.float32)
    per_update = []
    for i, w in enumerate(weights_for(n)):
        x = loaded[i % len(loaded)]
        t = time.perf_counter()
        for name, a in acc.items():
            src = x[name]
            for start in range(0, a.size, BLOCK):
                stop = min(start + BLOCK, a.size)
                part = tmp[:stop - start]
                np.multiply(src[start:stop], w, out=part)
                a[start:stop] += part
        per_update.append(time.perf_counter() - t)
    del loaded, acc
    return per_update


def time_numpy_files(files: list[Path], n: int) -> list[float]:
    headers = {p: read_header(p) for p in files}
    acc = {t.name: np.zeros(t.size, dtype=t.dtype) for t in headers[files[0]].tensors}
    for a in acc.values():
        a.fill(0)
    per_update = []
    for i, w in enumerate(weights_for(n)):
        path = files[i % len(files)]
        t = time.perf_counter()
        with open(path, "rb") as f:
            for spec in headers[path].tensors:
                f.seek(spec.begin)
                x = np.fromfile(f, dtype=spec.dtype, count=spec.size)
                acc[spec.name] += w * x
        per_update.append(time.perf_counter() - t)
    del acc
    return per_update


def memory_profile(files: list[Path], n: int) -> list[dict[str, float]]:
    gc.collect()
    rows = []
    tracemalloc.start()
    try:
        agg = FedAvg(get_helper("numpy"))
        agg.start(files[0])
        for i, w in enumerate(weights_for(n)):
            tracemalloc.reset_peak()
            agg.add(Update(files[i % len(files)], w))
            current, peak = tracemalloc.get_traced_memory()
            rows.append({"update": i + 1, "traced_current_mib": current / MiB, "traced_peak_mib": peak / MiB,
                         "rss_mib": common.rss_bytes() / MiB})
        del agg
    finally:
        tracemalloc.stop()
    return rows


def run(options: argparse.Namespace) -> dict[str, Any]:
    work = Path(options.work_dir or tempfile.mkdtemp(prefix="fedtier-bench-aggregation-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"benchmark": "aggregation", "machine": common.machine(), "updates": options.updates,
                              "sizes": []}
    try:
        for params in options.params:
            files = make_updates(work, params, min(DISTINCT_FILES, options.updates))
            for f in files:
                warm(f)
            model_mib = params * 4 / MiB
            runs: dict[str, list[float]] = {"fedavg": [], "fedavg_on_arrival": [], "arrival_check": [],
                                            "numpy_memory": [], "numpy_blocked": [], "numpy_files": []}
            finishes = []
            for _ in range(options.repeats):  # interleaved, so all see the same background load
                per, fin = time_fedavg(files, options.updates)
                runs["fedavg"] += per
                finishes.append(fin)
                per, checks = time_fedavg_on_arrival(files, options.updates)
                runs["fedavg_on_arrival"] += per
                runs["arrival_check"] += checks
                runs["numpy_memory"] += time_numpy_memory(files, options.updates)
                runs["numpy_blocked"] += time_numpy_blocked(files, options.updates)
                runs["numpy_files"] += time_numpy_files(files, options.updates)
                gc.collect()
            entry: dict[str, Any] = {"params": params, "model_mib": model_mib,
                                     "finish_seconds": common.summarize(finishes)}
            for key, values in runs.items():
                entry[key] = {"seconds_per_update": common.summarize(values)}
            fed = entry["fedavg"]["seconds_per_update"]["median"]
            entry["ratio_vs_numpy_memory"] = common.ratio(fed, entry["numpy_memory"]["seconds_per_update"]["median"])
            entry["ratio_vs_numpy_blocked"] = common.ratio(fed, entry["numpy_blocked"]["seconds_per_update"]["median"])
            entry["ratio_vs_numpy_files"] = common.ratio(fed, entry["numpy_files"]["seconds_per_update"]["median"])
            entry["fedavg_mib_s"] = model_mib / fed
            arrival = entry["fedavg_on_arrival"]["seconds_per_update"]["median"]
            entry["on_arrival_ratio_vs_numpy_memory"] = common.ratio(
                arrival, entry["numpy_memory"]["seconds_per_update"]["median"])
            entry["on_arrival_ratio_vs_numpy_blocked"] = common.ratio(
                arrival, entry["numpy_blocked"]["seconds_per_update"]["median"])
            memory = memory_profile(files, options.memory_updates or options.updates)
            peaks = [r["traced_peak_mib"] for r in memory]
            entry["memory"] = {"per_update": memory, "peak_first_mib": peaks[0], "peak_last_mib": peaks[-1],
                               "peak_growth_mib": peaks[-1] - peaks[0],
                               "peak_over_model_mib": max(peaks) - model_mib,
                               "rss_growth_mib": memory[-1]["rss_mib"] - memory[0]["rss_mib"]}
            result["sizes"].append(entry)
            for f in files:
                f.unlink()
    finally:
        if not options.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return result


def report(result: dict[str, Any]) -> None:
    rows = []
    for s in result["sizes"]:
        rows.append([common.human_count(s["params"]), s["model_mib"],
                     s["fedavg"]["seconds_per_update"]["median"] * 1e3,
                     s["numpy_memory"]["seconds_per_update"]["median"] * 1e3,
                     s["numpy_blocked"]["seconds_per_update"]["median"] * 1e3,
                     s["numpy_files"]["seconds_per_update"]["median"] * 1e3,
                     s["ratio_vs_numpy_memory"], s["ratio_vs_numpy_blocked"], s["ratio_vs_numpy_files"],
                     s["fedavg_mib_s"],
                     s["finish_seconds"]["median"] * 1e3])
    common.print_table(f"FedAvg per update vs plain numpy (median over {result['updates']} updates x repeats)",
                       ["params", "model MiB", "fedavg ms", "numpy mem ms", "numpy blocked ms", "numpy files ms",
                        "fedavg / numpy mem", "fedavg / numpy blocked", "fedavg / numpy files", "fedavg MiB/s",
                        "finish ms"], rows)
    rows = []
    for s in result["sizes"]:
        for r in s["memory"]["per_update"]:
            rows.append([common.human_count(s["params"]), r["update"], r["traced_peak_mib"],
                         r["traced_peak_mib"] - s["model_mib"], r["traced_current_mib"], r["rss_mib"]])
    common.print_table("FedAvg memory per update (tracemalloc peak during add; RSS after it)",
                       ["params", "update #", "peak MiB", "peak - model MiB", "held MiB", "RSS MiB"], rows)
    rows = []
    for s in result["sizes"]:
        rows.append([common.human_count(s["params"]),
                     s["fedavg_on_arrival"]["seconds_per_update"]["median"] * 1e3,
                     s["arrival_check"]["seconds_per_update"]["median"] * 1e3,
                     s["numpy_memory"]["seconds_per_update"]["median"] * 1e3,
                     s["numpy_blocked"]["seconds_per_update"]["median"] * 1e3,
                     s["on_arrival_ratio_vs_numpy_memory"], s["on_arrival_ratio_vs_numpy_blocked"]])
    common.print_table("FedAvg as a combiner runs it: checked as the upload arrives, then folded (median)",
                       ["params", "check + fold ms", "of which check ms", "numpy mem ms", "numpy blocked ms",
                        "on arrival / numpy mem", "on arrival / numpy blocked"], rows)
    print("\n" + common.machine_line(result["machine"]))


def summary_rows(result: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for s in result["sizes"]:
        p = common.human_count(s["params"])
        rows.append(["aggregation", f"FedAvg.add {p} params", "numpy in memory (ms)",
                     s["numpy_memory"]["seconds_per_update"]["median"] * 1e3,
                     s["fedavg"]["seconds_per_update"]["median"] * 1e3, s["ratio_vs_numpy_memory"]])
        rows.append(["aggregation", f"FedAvg.add {p} params", "numpy in memory, 2 MiB blocks (ms)",
                     s["numpy_blocked"]["seconds_per_update"]["median"] * 1e3,
                     s["fedavg"]["seconds_per_update"]["median"] * 1e3, s["ratio_vs_numpy_blocked"]])
        rows.append(["aggregation", f"FedAvg checked on arrival + add {p} params", "numpy in memory (ms)",
                     s["numpy_memory"]["seconds_per_update"]["median"] * 1e3,
                     s["fedavg_on_arrival"]["seconds_per_update"]["median"] * 1e3,
                     s["on_arrival_ratio_vs_numpy_memory"]])
        rows.append(["aggregation", f"FedAvg.add {p} params", "numpy from files (ms)",
                     s["numpy_files"]["seconds_per_update"]["median"] * 1e3,
                     s["fedavg"]["seconds_per_update"]["median"] * 1e3, s["ratio_vs_numpy_files"]])
        rows.append(["aggregation", f"peak growth over {len(s['memory']['per_update'])} updates {p}",
                     "first update peak (MiB)", s["memory"]["peak_first_mib"], s["memory"]["peak_last_mib"],
                     common.ratio(s["memory"]["peak_last_mib"], s["memory"]["peak_first_mib"])])
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Figures are ratios against plain numpy measured in the same run.")
    p.add_argument("--params", type=common.parse_list, default=[10_000_000, 100_000_000],
                   help="float32 parameters per model, comma separated, k/M/G allowed (default 10M,100M)")
    p.add_argument("--updates", type=int, default=4, help="updates folded per size and repeat (default 4)")
    p.add_argument("--repeats", type=int, default=2, help="repeats of the whole timing (default 2)")
    p.add_argument("--memory-updates", type=int, default=8,
                   help="updates in the memory pass (default 8; 0: same as --updates)")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    p.add_argument("--work-dir", default="", help="scratch directory (default: a temporary one, removed)")
    return p


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    if options.updates < 1 or options.repeats < 1:
        raise SystemExit("--updates and --repeats must be at least 1")
    result = run(options)
    report(result)
    common.write_json(options.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
