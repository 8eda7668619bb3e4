"""Shared fixtures: real fedtier processes on loopback, cleaned up whatever happens."""
from __future__ import annotations

import math
import subprocess
import time
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import pytest
import requests

# one launcher for the tests, the sandbox and the benchmarks (tests import these names from here)
from fedtier.launch.network import Processes, free_port, wait_for_port  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
TEST_PROJECTS = Path(__file__).resolve().parent / "projects"


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



def wait_until(condition: Callable[[], Any], timeout: float = 60.0, what: str = "condition",
               procs: Processes | None = None, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something true (returned); a request that fails (a
    server starting, busy or restarting) means "ask again". Fail naming ``what``, with the
    processes' logs when given, once ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except requests.RequestException:
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"\n{procs.dump_logs()}" if procs else ""))

class ProcessGroup(Processes):
    """``fedtier ...`` processes with logs in files (``start(name, *args)``); all stopped at the end."""

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:  # type: ignore[override]
        return self.fedtier(name, *args, env=env)

    def stop_all(self, timeout: float = 10.0) -> None:
        super().stop_all(timeout)


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


@pytest.fixture(scope="session")
def chromium_session() -> Iterator[object]:
    """One headless Chromium for every UI test file (test_ui.py's ``chromium`` fixture): each file
    launched its own. Started the first time a UI test asks for it, closed at the session's end."""
    from test_ui import launch_chromium

    yield from launch_chromium()
