"""Shared plumbing for the benchmarks: statistics, tables, JSON, machine facts, processes.

Benchmarks print figures, they are not tests. The machine they run on is usually
shared and noisy, so every figure is reported next to a baseline measured in the same
run, and as a ratio to it; absolute times are printed for context only.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from fedtier.launch.network import Processes as _Processes
from fedtier.launch.network import free_port, wait_for_port  # noqa: F401 (the benchmarks use them from here)
from fedtier.memory import tune_allocator
from fedtier.transport.streams import sha256_file  # noqa: F401 (the benchmarks import it from here)

# fedtier's processes tune glibc's malloc at start (launch/cli.py, fedtier/memory.py); the
# baselines and drivers that run in bench processes get the same settings, so a ratio
# compares code with code, not one allocator setting with another
tune_allocator()

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
NOOP_PROJECT = BENCH / "projects" / "noop"
MiB = 1 << 20


# ---------------------------------------------------------------- numbers
def summarize(values: Iterable[float]) -> dict[str, float]:
    """median/min/max/mean of a sample (the median is the figure to quote)."""
    data = [float(v) for v in values]
    if not data:
        return {"n": 0, "median": math.nan, "min": math.nan, "max": math.nan, "mean": math.nan}
    return {"n": len(data), "median": statistics.median(data), "min": min(data), "max": max(data),
            "mean": statistics.fmean(data)}


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline else math.inf


def parse_count(text: str) -> int:
    """'10M' -> 10_000_000, '1.5k' -> 1500, '4096' -> 4096 (decimal multiples: parameter counts)."""
    text = text.strip()
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(text[-1:].lower(), 1)
    number = float(text[:-1] if scale != 1 else text)
    value = int(round(number * scale))
    if value < 1:
        raise ValueError(f"expected a positive count, got {text!r}")
    return value


def parse_list(text: str, parse=parse_count) -> list:
    return [parse(part) for part in text.split(",") if part.strip()]


def human_count(n: int) -> str:
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size and n % (size // 10 or 1) == 0:
            return f"{n / size:g}{unit}"
    return str(n)


def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value == 0:
            return "0"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:.1f}"
        return f"{value:.{digits}g}" if magnitude < 1 else f"{value:.{digits - 1}f}"
    return str(value)


# ---------------------------------------------------------------- output
def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table (pastes straight into docs/performance.md)."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    print(f"\n### {title}\n")
    print(table(headers, rows), flush=True)


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """--json, --work-dir and --keep, as every benchmark takes them."""
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    parser.add_argument("--work-dir", default="", help="scratch directory (default: a temporary one, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs)")


def conclude(result: dict[str, Any], report: Callable[[dict[str, Any]], None], json_path: str) -> int:
    """Print the tables, write the JSON, and the exit status: 0 only if the run's checks held."""
    report(result)
    write_json(json_path, result)
    return 0 if result["ok"] else 1


def write_json(path: str | os.PathLike | None, data: Any) -> None:
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, default=str, allow_nan=True) + "\n")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    """Facts to print next to figures: they mean little without them."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "grpcio": _version("grpcio"), "protobuf": _version("protobuf"), "numpy": _version("numpy"),
        "torch": _version("torch"), "loadavg_1m": round(os.getloadavg()[0], 2), "code": code_state(),
    }
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        info["mem_total_gib"] = round(int(fields["MemTotal"].split()[0]) / (1 << 20), 1)
        info["mem_available_gib"] = round(int(fields["MemAvailable"].split()[0]) / (1 << 20), 1)
    except (OSError, KeyError, ValueError):
        pass
    return info


CODE_PATHS = ("fedtier", "combiner", "client", "helpers", "reducer", "proto", "launch", "datatools")


def code_state() -> dict[str, Any]:
    """The commit measured, and which of the measured source files differ from it."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    changed = [line.split(maxsplit=1)[1] for line in git("status", "--porcelain", "--", *CODE_PATHS).splitlines()
               if line.endswith(".py")]
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted_source_files": changed}


def machine_line(info: dict[str, Any] | None = None) -> str:
    m = info or machine()
    return (f"machine: {m['nproc']} cores, {m.get('mem_total_gib', '?')} GiB, load {m['loadavg_1m']}; "
            f"python {m['python']}, grpcio {m['grpcio']}, protobuf {m['protobuf']}, numpy {m['numpy']}, "
            f"torch {m['torch']}; code {m['code']['commit']}"
            + (f" + {len(m['code']['uncommitted_source_files'])} uncommitted source files"
               if m["code"]["uncommitted_source_files"] else ""))


def rss_bytes() -> int:
    """Current resident set size of this process (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a process has used so far (Linux /proc), (0, 0) once it is gone.

    Split because on a VM the system share tells memory first-touch and page-cache costs
    apart from the process's own work (bench/gigabyte.py)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (Linux /proc), 0.0 once it is gone."""
    return sum(cpu_times(pid))


# ---------------------------------------------------------------- models
def make_seed(path: Path, params: int) -> Path:
    """The no-op project's seed model: its seed.py, imported from the file (no interpreter start-up)."""
    spec = importlib.util.spec_from_file_location("noop_seed", NOOP_PROJECT / "seed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make_seed(str(path), params)
    return path


# ---------------------------------------------------------------- processes
class Processes(_Processes):
    """``fedtier`` (or any argv) children with logs in files, all stopped on exit; fedtier's at WARNING."""

    def __init__(self, log_dir: Path, **kwargs: Any) -> None:
        super().__init__(log_dir, **{"log_level": "WARNING", **kwargs})

    def stop_all(self, timeout: float = 20.0) -> None:
        super().stop_all(timeout)
