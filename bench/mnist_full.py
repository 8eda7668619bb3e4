"""Accuracy per round of the MNIST test projects on the FULL dataset, through the real sandbox.

    .venv/bin/python bench/mnist_full.py                       # both projects, IID, 5 rounds
    .venv/bin/python bench/mnist_full.py --projects mnist-pytorch --rounds 3 \\
        --partition iid --partition dirichlet:alpha=0.5        # one table per (project, partition)

Not a test: it runs ``fedtier sandbox`` (reducer, 2 combiners, 5 clients as separate
processes) on all 60000 training images (12000 per client, 9600 trained on, 2400
held out) and the whole 10000-image test set, for each project and partition, and
writes the test accuracy of the global model after every round to
``docs/mnist-accuracy.md`` (``--out``), with the command, settings and machine.

The task config defaults to ``{"epochs": 1}``: with ten times the data of the
6000-image setting the projects' defaults are tuned for, one local epoch is already
as many optimizer steps per round as their default five epochs there, and keeps a
round at seconds of CPU per client. Pass ``--task`` to change it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mnist"
DEFAULT_OUT = ROOT / "docs" / "mnist-accuracy.md"
PROJECTS = ("mnist-pytorch", "mnist-keras")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--projects", default=",".join(PROJECTS), help="comma-separated test projects (default both)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per run (default 5)")
    p.add_argument("--clients", type=int, default=5, help="clients (default 5)")
    p.add_argument("--combiners", type=int, default=2, help="combiners (default 2)")
    p.add_argument("--partition", action="append", default=None,
                   help="partition spec, repeatable (default: iid); see fedtier sandbox --help")
    p.add_argument("--task", default='{"epochs": 1}', help="task config JSON for the projects (default epochs=1)")
    p.add_argument("--data-path", default=str(DEFAULT_DATA), help=f"MNIST IDX directory (default {DEFAULT_DATA})")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="markdown report to write (default docs/mnist-accuracy.md)")
    p.add_argument("--json", default="", help="also write the raw sandbox summaries to this JSON file")
    p.add_argument("--round-timeout", type=float, default=1800.0, help="seconds per round (default 1800)")
    return p.parse_args(argv)


def run_sandbox(project: str, partition: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """One sandbox run; its progress lines are echoed, its summary JSON returned with the wall time."""
    summary_path = scratch / f"{project}-{len(list(scratch.iterdir()))}.json"
    cmd = [sys.executable, "-m", "fedtier.launch.cli", "--env-file", os.devnull, "sandbox",
           "--project", str(ROOT / "test_projects" / project), "--combiners", str(args.combiners),
           "--clients", str(args.clients), "--rounds", str(args.rounds), "--exit-when-done",
           "--summary", str(summary_path), "--data-path", args.data_path, "--task", args.task,
           "--partition", partition, "--round-timeout", str(args.round_timeout), "--startup-timeout", "600"]
    print(f"\n=== {project}, partition {partition}", flush=True)
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, text=True)
    elapsed = time.monotonic() - started
    if done.returncode != 0 or not summary_path.is_file():
        raise SystemExit(f"sandbox run for {project} ({partition}) failed with code {done.returncode}")
    summary = json.loads(summary_path.read_text())
    summary.update(project=project, partition_spec=partition, wall_time_s=round(elapsed, 1))
    return summary


def _versions() -> str:
    found = []
    for dist in ("torch", "keras", "numpy"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def _result_args(argv: list[str]) -> list[str]:
    """The command-line arguments that affect the results (not where they are written)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--out", "--json"):
            skip = True
        elif not arg.startswith(("--out=", "--json=")):
            kept.append(arg)
    return kept


def render(runs: list[dict[str, Any]], args: argparse.Namespace, argv: list[str]) -> str:
    """The markdown report: settings, machine, then one table per run and a summary table."""
    lines = [
        "# MNIST accuracy per round (full dataset)",
        "",
        "Made by `bench/mnist_full.py`; regenerate with",
        "",
        "```bash",
        " ".join([".venv/bin/python bench/mnist_full.py", *_result_args(argv)]),
        "```",
        "",
        f"The real network (`fedtier sandbox`: reducer, {args.combiners} combiners, {args.clients} clients as "
        f"separate processes on one machine) trains each project on all 60000 MNIST training images: "
        f"{60000 // args.clients} per client, of which 80% are trained on and 20% held out for the client's "
        f"validation. *Test accuracy* is the global model's accuracy on the whole 10000-image MNIST test set "
        f"after the round; *validation accuracy* is the mean over the clients' held-out splits. "
        f"Task config: `{args.task}` (the projects' other defaults: see their `entrypoints.DEFAULTS`).",
        "",
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}, "
        f"{_versions()}. Measured {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. Round times "
        f"are wall-clock on a machine shared with other work, so they are indicative only; the accuracies "
        f"are what to read.",
        "",
        "## Summary",
        "",
        "| project | partition | rounds | test accuracy after round 1 | final test accuracy | wall time |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for run in runs:
        rounds = run["rounds"]
        lines.append(f"| {run['project']} | `{run['partition_spec']}` | {len(rounds)} | "
                     f"{_fmt(rounds[0]['test_accuracy'])} | {_fmt(run['final_test_accuracy'])} | "
                     f"{run['wall_time_s']:.0f} s |")
    for run in runs:
        lines += ["", f"## {run['project']}, partition `{run['partition_spec']}`", "",
                  "| round | test accuracy | validation accuracy | validation loss | examples trained | round time |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for r in run["rounds"]:
            examples = sum((r.get("num_examples") or {}).values())
            lines.append(f"| {r['round']} | {_fmt(r['test_accuracy'])} | {_fmt(r['accuracy'])} | "
                         f"{_fmt(r['loss'])} | {examples} | {r['round_time_s']:.1f} s |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if not (Path(args.data_path) / "train-images-idx3-ubyte.gz").is_file():
        print(f"MNIST not found in {args.data_path}; pass --data-path", file=sys.stderr)
        return 2
    projects = [p.strip() for p in args.projects.split(",") if p.strip()]
    unknown = [p for p in projects if not (ROOT / "test_projects" / p / "fedn.yaml").is_file()]
    if unknown:
        print(f"unknown test project(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    partitions = args.partition or ["iid"]
    runs = []
    with tempfile.TemporaryDirectory(prefix="mnist-full-") as scratch:
        for project in projects:
            for partition in partitions:
                runs.append(run_sandbox(project, partition, args, Path(scratch)))
    report = render(runs, args, argv)
    Path(args.out).write_text(report)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    print(f"\nwrote {args.out}\n\n{report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
