"""Run every core-network benchmark with small defaults and print one summary table.

    .venv/bin/python bench/run_all.py [--only round_overhead,transfer,aggregation] [--json out.json]
    .venv/bin/python bench/run_all.py --smoke     # tiny sizes: checks the benchmarks still run

Each row compares one of our figures with its baseline measured in the same run;
"ours / baseline" is the figure to quote (for throughputs below 1 means slower than the
baseline, for times above 1 means slower). Each benchmark also runs alone, with more
options and detailed tables: ``bench/<name>.py --help``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import aggregation  # noqa: E402
import common  # noqa: E402
import round_overhead  # noqa: E402
import transfer  # noqa: E402

BENCHMARKS = {"round_overhead": round_overhead, "transfer": transfer, "aggregation": aggregation}

# Small defaults: the whole run takes a minute or two on a 2-core machine.
DEFAULTS = {
    "round_overhead": ["--clients", "10", "--rounds", "5", "--params", "1M", "--sandbox", "1",
                       "--sandbox-rounds", "3"],
    "transfer": ["--sizes-mib", "64", "--repeats", "5"],
    "aggregation": ["--params", "10M", "--updates", "4", "--memory-updates", "6"],
}
SMOKE = {
    "round_overhead": ["--clients", "2", "--rounds", "1", "--warmup", "0", "--params", "10k", "--tiny-params", "100",
                       "--sandbox", "none"],
    "transfer": ["--sizes-mib", "1", "--repeats", "1"],
    "aggregation": ["--params", "10k", "--updates", "2", "--repeats", "1", "--memory-updates", "3"],
}


def run(names: list[str], smoke: bool) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": common.machine(), "smoke": smoke, "benchmarks": {}}
    for name in names:
        module = BENCHMARKS[name]
        argv = (SMOKE if smoke else DEFAULTS)[name]
        print(f"\n== {name} {' '.join(argv)}", flush=True)
        started = time.perf_counter()
        result = module.run(module.build_parser().parse_args(argv))
        result["seconds"] = time.perf_counter() - started
        result["argv"] = argv
        module.report(result)
        results["benchmarks"][name] = result
    results["rows"] = [row for name in names
                       for row in BENCHMARKS[name].summary_rows(results["benchmarks"][name])]
    results["ok"] = all(r.get("ok", True) for r in results["benchmarks"].values())
    return results


def report(results: dict[str, Any]) -> None:
    common.print_table("Summary: ours vs the baseline measured in the same run",
                       ["benchmark", "what", "baseline", "baseline value", "ours", "ours / baseline"],
                       results["rows"])
    print("\n" + common.machine_line(results["machine"]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--only", type=lambda s: [n.strip() for n in s.split(",") if n.strip()],
                   default=list(BENCHMARKS), help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: proves the benchmarks run, measures nothing")
    p.add_argument("--json", default="", help="also write every result to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    unknown = sorted(set(options.only) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    results = run(options.only, options.smoke)
    report(results)
    common.write_json(options.json, results)
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
