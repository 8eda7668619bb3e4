"""Which host a combiner announces, and what the reducer says when it cannot reach that host.

A combiner bound to every interface used to announce its --name, which outside compose
resolves nowhere: clients never connected and the reducer only said "offline (UNAVAILABLE)".
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

import fedtier.combiner.server as server
from conftest import free_port
from fedtier.reducer.network import Network
from fedtier.storage.sqlite import SQLiteStateStore


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The host names this (pretend) machine resolves; its own name is 'box'."""
    known = {"localhost", "box", "combiner.example"}
    monkeypatch.setattr(server, "resolves", lambda host: host in known)
    monkeypatch.setattr(server.socket, "gethostname", lambda: "box")
    return known


def test_explicit_and_concrete_hosts_are_announced_as_given(names: set[str]) -> None:
    assert server.advertised_host("0.0.0.0", "combiner.example", "c0") == "combiner.example"
    assert server.advertised_host("127.0.0.1", "", "c0") == "127.0.0.1"
    assert server.advertised_host("10.1.2.3", "", "c0") == "10.1.2.3"


def test_all_interfaces_announce_a_name_that_resolves(names: set[str]) -> None:
    names.add("combiner-0")  # a compose service name
    assert server.advertised_host("0.0.0.0", "", "combiner-0") == "combiner-0"
    assert server.advertised_host("[::]", "", "c9") == "box"  # c9 resolves nowhere: the machine's name


def test_without_any_name_that_resolves_only_loopback_is_left(names: set[str],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    names.discard("box")
    with caplog.at_level(logging.WARNING):
        assert server.advertised_host("0.0.0.0", "", "c0") == "127.0.0.1"
    assert "only clients on this machine" in caplog.text and "--advertise-host" in caplog.text


def test_an_advertised_name_that_does_not_resolve_is_warned_about_at_start(
        names: set[str], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert server.advertised_host("0.0.0.0", "c0.internal", "c0") == "c0.internal"  # obeyed, but said
    assert "--advertise-host c0.internal does not resolve on this machine" in caplog.text


def test_reducer_says_why_a_registered_combiner_is_unreachable(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    network = Network(SQLiteStateStore(tmp_path / "state.sqlite"), offline_after_s=0.0)
    port = free_port()
    network.add_combiner("c0", "c0.invalid", port)  # .invalid never resolves (RFC 2606)
    try:
        with caplog.at_level(logging.WARNING):
            network.refresh()
    finally:
        network.close()
    assert f"combiner c0 registered at c0.invalid:{port} is unreachable (UNAVAILABLE" in caplog.text
    assert "c0.invalid does not resolve here: start the combiner with --advertise-host" in caplog.text
    assert network.state.get("combiners", "c0")["online"] is False
