"""Shared fixtures: real fedtier processes on loopback, cleaned up whatever happens."""
from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
TEST_PROJECTS = Path(__file__).resolve().parent / "projects"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before opening port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def code_of(call: Callable[[], Any]) -> grpc.StatusCode | None:
    """The gRPC status a call ends with (None: it succeeded), for tests of who is refused how."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return None


# ---------------------------------------------------------------- the benchmarks' smoke tests
BENCH = ROOT / "bench"


def run_bench(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """A bench/ script run as a person would type it; fails the test with its output if it fails."""
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def stats_ok(stats: dict[str, Any]) -> bool:
    """A common.summarize() result from at least one sample, with finite positive figures."""
    return stats["n"] >= 1 and all(positive(stats[k]) for k in ("median", "min", "max"))


class ProcessGroup:
    """Starts ``python -m fedtier.launch.cli ...`` processes with logs in files; kills all at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.Popen([sys.executable, "-m", "fedtier.launch.cli", "--env-file", "/nonexistent", *args],
                                stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=self.log_dir)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.kill()
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def dump_logs(self) -> str:
        return "\n".join(f"----- {n}\n{self.log(n)[-3000:]}" for n in self.procs)


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ProcessGroup]:
    group = ProcessGroup(tmp_path)
    yield group
    group.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(group.dump_logs())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
