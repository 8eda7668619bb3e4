"""fedtier.launch.network: the one launcher refuses to start parts before its own reducer serves.

The whole-network paths (reducer, combiners, clients, a session) run in tests/test_sandbox*.py
and the benchmarks' smoke tests, which all start their networks with it; these check the
refusals and the failure report, which need no network.
"""
from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from fedtier.launch.network import LaunchError, LocalNetwork, PortInUse, Processes


def test_nothing_starts_before_the_networks_own_reducer_serves(tmp_path: Path) -> None:
    net = LocalNetwork(tmp_path)
    for start in (lambda: net.start_combiners(1), lambda: net.start_clients(1, tmp_path),
                  lambda: net.spawn("swarm-0", "swarm"), lambda: net.seed(tmp_path / "seed")):
        with pytest.raises(LaunchError, match="own reducer is not serving"):
            start()
    assert net.procs.procs == {} and list(net.logs.iterdir()) == []


def test_a_taken_port_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        net = LocalNetwork(tmp_path, port=port)
        with pytest.raises(PortInUse, match=f"port {port} is in use"):
            net.start_reducer()
    assert net.procs.procs == {} and not net.serving


def test_a_process_that_exits_is_named_with_its_log(tmp_path: Path) -> None:
    with Processes(tmp_path / "logs") as procs:
        procs.start("broken", [sys.executable, "-c", "print('cannot open the store'); raise SystemExit(3)"])
        procs.procs["broken"].wait(30)
        with pytest.raises(LaunchError) as failure:
            procs.check_alive()
    message = str(failure.value)
    assert "broken exited with code 3" in message and str(tmp_path / "logs" / "broken.log") in message
    assert "cannot open the store" in message  # the log's tail, so a failure report says why
