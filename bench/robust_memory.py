"""Peak memory and time of the robust strategies with many updates of a large model, against FedAvg.

    .venv/bin/python bench/robust_memory.py [--params 100M] [--updates 20,100] [--json out.json]
    .venv/bin/python bench/robust_memory.py --smoke       # tiny, for the test suite

Median, trimmed mean, Krum and Multi-Krum need every update at once; they keep the
updates on disk and read them back slice by slice (fedtier/aggregators/kept.py), so
their peak memory should be the output model plus a bounded buffer whatever the number
of updates, as FedAvg's is its running mean plus a slice. Each (strategy, updates) pair
runs in a fresh process, which adds every update (the same check FedAvg makes) and
finishes; the table shows the process's peak RSS (``VmHWM``), its RSS before the
first update, the seconds spent in ``add`` and in ``finish``, and the peak over FedAvg's
peak with the same updates.

Disk: n updates of a 400 MB model are n x 400 MB of paths, but only ``--distinct`` files
(4 by default) are written; every other update path is a hard link to one of them, so
each strategy still opens and reads n distinct paths slice by slice (from the page cache
once the files were read: the figures are memory and CPU, not disk speed). The links
make several updates identical, which changes no cost (Krum's distances are computed
all the same).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import MiB  # noqa: E402

from fedtier.aggregators import RoundContext, Update, get_strategy, kept  # noqa: E402
from fedtier.helpers import get_helper  # noqa: E402
from fedtier.helpers.format import write_model  # noqa: E402

STRATEGIES = ("fedavg", "median", "trimmed_mean", "krum", "multikrum")
TENSORS = 8


def make_distinct(folder: Path, params: int, count: int) -> list[Path]:
    """``count`` float32 models of ``params`` values in a few tensors, each different; written a
    tensor at a time' worth of memory (one tensor of random values at once)."""
    sizes = [params // TENSORS] * TENSORS
    sizes[-1] += params - sum(sizes)
    paths = []
    for i in range(count):
        rng = np.random.default_rng(i)
        path = folder / f"distinct-{i}"
        write_model(path, {f"layer{t}.weight": rng.standard_normal(n, dtype=np.float32)
                           for t, n in enumerate(sizes)}, durable=False)
        paths.append(path)
    return paths


def link_updates(folder: Path, distinct: list[Path], count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"update-{i}"
        os.link(distinct[i % len(distinct)], path)
        paths.append(path)
    return paths


def peak_rss() -> int:
    """This process's peak RSS since its exec (VmHWM). Not ``ru_maxrss``: Linux carries the
    forking parent's RSS into it across exec, so every child would report at least the
    parent's (which wrote the update files)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def child(strategy: str, reference: Path, folder: Path) -> dict[str, Any]:
    """One strategy over the updates in ``folder``, in this (fresh) process."""
    paths = sorted(folder.glob("update-*"), key=lambda p: int(p.name.split("-")[1]))
    work = folder / f"work-{strategy}"
    agg = get_strategy(strategy, get_helper("numpy"), "combiner")
    agg.start(reference, RoundContext(work_dir=work))
    before = common.rss_bytes()
    t = time.perf_counter()
    for i, path in enumerate(paths):
        agg.add(Update(path, float(10 * (i % 7 + 1))))
    add_s = time.perf_counter() - t
    out = folder / f"out-{strategy}"
    t = time.perf_counter()
    total = agg.finish(out)
    finish_s = time.perf_counter() - t
    out.unlink()
    shutil.rmtree(work, ignore_errors=True)
    return {"strategy": strategy, "updates": len(paths), "peak_rss": peak_rss(), "rss_before": before,
            "add_s": add_s, "finish_s": finish_s,
            "weight_ok": total == sum(float(10 * (i % 7 + 1)) for i in range(len(paths)))}


def run_child(strategy: str, reference: Path, folder: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--child", strategy, str(reference), str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{strategy} with {folder.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    started = time.perf_counter()
    distinct = make_distinct(scratch, args.params, args.distinct)
    model_bytes = distinct[0].stat().st_size
    rows = []
    for n in args.updates:
        folder = scratch / f"n{n}"
        link_updates(folder, distinct, n)
        by_name = {}
        for s in args.strategies:
            by_name[s] = run_child(s, distinct[0], folder)
            print(f"{s} with {n} updates: peak RSS {by_name[s]['peak_rss'] / MiB:.1f} MiB, "
                  f"finish {by_name[s]['finish_s']:.1f} s", file=sys.stderr, flush=True)  # a long run's progress
        base = by_name.get("fedavg")
        for s, r in by_name.items():
            r["over_before"] = r["peak_rss"] - r["rss_before"]
            r["ratio_vs_fedavg"] = common.ratio(r["peak_rss"], base["peak_rss"]) if base else None
            # the bound: the output model plus the work buffer plus a raw slice, over FedAvg's
            # own (its mean is one model too); 32 MiB for allocator slack
            r["bounded"] = (r["over_before"] <= model_bytes + kept.BUFFER_BYTES + 32 * MiB
                            if s != "fedavg" else True)
            rows.append(r)
        shutil.rmtree(folder)
    ok = all(r["weight_ok"] and r["bounded"] for r in rows)
    return {"params": args.params, "model_bytes": model_bytes, "updates": args.updates,
            "distinct_files": args.distinct, "buffer_bytes": kept.BUFFER_BYTES, "rows": rows, "ok": ok,
            "seconds": time.perf_counter() - started, "machine": common.machine(), "code": common.code_state()}


def report(result: dict[str, Any]) -> None:
    print(common.machine_line(result["machine"]))
    print(f"model: {common.human_count(result['params'])} float32 parameters ({result['model_bytes'] / MiB:.0f} MiB); "
          f"{result['distinct_files']} distinct update files, the other paths hard links; "
          f"work buffer bound {result['buffer_bytes'] / MiB:.0f} MiB")
    common.print_table("Peak memory and time per strategy", [
        "strategy", "updates", "peak RSS MiB", "RSS before adds MiB", "peak / fedavg", "add s", "finish s", "bounded"],
        [[r["strategy"], r["updates"], r["peak_rss"] / MiB, r["rss_before"] / MiB, r["ratio_vs_fedavg"],
          r["add_s"], r["finish_s"], r["bounded"]] for r in result["rows"]])
    print(f"\nok: {result['ok']}  ({result['seconds']:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        print(json.dumps(child(argv[1], Path(argv[2]), Path(argv[3]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=common.parse_count, default=100_000_000,
                        help="float32 parameters per model (100M: 400 MB)")
    parser.add_argument("--updates", type=common.parse_list, default=[20, 100],
                        help="comma-separated update counts (default 20,100)")
    parser.add_argument("--distinct", type=int, default=4, help="distinct update files written; the rest are links")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated strategies")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for the test suite")
    common.add_output_options(parser)
    args = parser.parse_args(argv)
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if args.smoke:
        args.params, args.updates, args.distinct = 20_000, [5], 2
    scratch = Path(args.work_dir or tempfile.mkdtemp(prefix="robust-memory-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        return common.conclude(run(args, scratch), report, args.json)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
