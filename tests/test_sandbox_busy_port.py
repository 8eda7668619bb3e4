"""A second `fedtier sandbox` on a port a running network holds must start nothing and leave it alone.

It used to take the other network's reducer for its own: it printed that dashboard, and its
combiners registered there under the running combiners' names, breaking that network for good.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from conftest import ROOT, ProcessGroup, free_port, wait_for_port

DIGITS = ROOT / "test_projects" / "digits"


@pytest.fixture(scope="module")
def first_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProcessGroup, str, dict, list]]:
    """A reducer with one registered combiner: what a first network looks like from outside.
    One for the module: every test checks it leaves the network as it found it (``untouched``)."""
    tmp_path = tmp_path_factory.mktemp("first-network")
    procs = ProcessGroup(tmp_path)
    try:
        port, combiner_port = free_port(), free_port()
        env = {"FEDTIER_DATA_DIR": str(tmp_path / "first")}
        reducer = procs.start("reducer", "reducer", "--host", "127.0.0.1", "--port", str(port), env=env)
        wait_for_port(port, proc=reducer)
        url = f"http://127.0.0.1:{port}"
        procs.start("combiner", "combiner", "--name", "combiner-0", "--host", "127.0.0.1", "--port",
                    str(combiner_port), "--reducer", url, env=env)
        wait_for_port(combiner_port)
        for _ in range(100):
            combiners = requests.get(url + "/api/v1/combiners", timeout=5).json()
            if combiners:
                break
            time.sleep(0.1)
        assert [c["name"] for c in combiners] == ["combiner-0"]
        yield procs, url, requests.get(url + "/api/v1/status", timeout=5).json(), combiners
    finally:
        procs.stop_all()


@pytest.fixture
def running_network(first_network: tuple[ProcessGroup, str, dict, list],
                    request: pytest.FixtureRequest) -> Iterator[tuple[str, dict, list]]:
    """The module's first network (url, status, combiners); its logs printed if the test fails."""
    procs, *network = first_network
    yield tuple(network)
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(procs.dump_logs())


def untouched(url: str, status: dict, combiners: list) -> None:
    after = requests.get(url + "/api/v1/status", timeout=5).json()
    assert after["instance"] == status["instance"], "another reducer now answers on the first network's port"
    assert [(c["name"], c["address"], c["port"]) for c in requests.get(url + "/api/v1/combiners", timeout=5).json()] \
        == [(c["name"], c["address"], c["port"]) for c in combiners]


def test_second_sandbox_on_a_busy_port_exits_having_started_nothing(running_network, tmp_path: Path) -> None:
    url, status, combiners = running_network
    port = url.rsplit(":", 1)[1]
    work = tmp_path / "second"
    done = subprocess.run(
        [sys.executable, "-m", "fedtier.launch.cli", "--env-file", "/nonexistent", "sandbox", "--project", str(DIGITS),
         "--combiners", "1", "--clients", "1", "--rounds", "1", "--exit-when-done", "--port", port,
         "--work-dir", str(work), "--startup-timeout", "20"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode != 0, done.stdout + done.stderr
    assert f"port {port} is in use" in done.stdout and "--port" in done.stdout, done.stdout
    assert "dashboard:" not in done.stdout  # it never names another network's dashboard as its own
    assert sorted(p.name for p in (work / "logs").iterdir()) == []  # not even its reducer was started
    untouched(url, status, combiners)


def test_sandbox_never_uses_a_reducer_it_did_not_start(running_network, tmp_path: Path, capsys,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The port check and the start of the sandbox's reducer race with other programs: the
    sandbox trusts only the reducer that reports the instance id it gave it. Here the port
    check is made to miss the running network, as a race would."""
    import fedtier.launch.network as network
    import fedtier.launch.sandbox as sandbox

    url, status, combiners = running_network
    monkeypatch.setattr(network, "port_in_use", lambda port, host="127.0.0.1": False)
    monkeypatch.delenv("FEDTIER_DATA_DIR", raising=False)
    work = tmp_path / "second"
    box = sandbox.Sandbox(sandbox.SandboxOptions(project=DIGITS, combiners=1, clients=1, rounds=1,
                                                 exit_when_done=True, port=int(url.rsplit(":", 1)[1]),
                                                 work_dir=work, startup_timeout=20))
    assert box.run() == 1
    out = capsys.readouterr().out
    assert "answered by another reducer" in out and "dashboard:" not in out, out
    assert sorted(p.name for p in (work / "logs").iterdir()) == ["reducer.log"]  # no combiner, no client
    untouched(url, status, combiners)


def test_reducer_on_a_busy_port_opens_no_store(running_network, procs: ProcessGroup, tmp_path: Path) -> None:
    """A reducer that cannot listen must change nothing: opening the stores is not harmless
    (at start the reducer closes the sessions it finds running, which on a shared data dir
    are the running reducer's), so the port is bound first."""
    url, status, combiners = running_network
    data = tmp_path / "never-created"
    second = procs.start("second", "reducer", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1],
                         env={"FEDTIER_DATA_DIR": str(data)})
    assert second.wait(60) == 1
    assert "cannot listen on 127.0.0.1:" in procs.log("second") and "--port" in procs.log("second")
    assert not data.exists(), "the reducer opened its stores before it knew it could serve"
    untouched(url, status, combiners)


def test_combiner_on_a_busy_port_exits_without_announcing(running_network, procs: ProcessGroup,
                                                          tmp_path: Path) -> None:
    """gRPC would share a port (SO_REUSEPORT) unless told not to: a second combiner on a taken
    port must fail before it announces itself, not take half of the first one's clients."""
    url, status, combiners = running_network
    second = procs.start("combiner-1", "combiner", "--name", "combiner-1", "--host", "127.0.0.1", "--port",
                         str(combiners[0]["port"]), "--reducer", url, env={"FEDTIER_DATA_DIR": str(tmp_path / "c1")})
    assert second.wait(60) != 0
    assert f"cannot listen on 127.0.0.1:{combiners[0]['port']}" in procs.log("combiner-1"), procs.log("combiner-1")
    untouched(url, status, combiners)
