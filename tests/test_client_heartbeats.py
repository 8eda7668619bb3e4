"""A client's heartbeats against a combiner that spaces them out, is busy, or forgot it.

The combiner here is a stand-in servicer on a real gRPC server and socket, so each case can
be set exactly; the client is the real FedClient."""
from __future__ import annotations

import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT, wait_until
from fedtier.client.client import ClientSettings, FedClient
from fedtier.combiner.registry import ClientRegistry, CombinerFullError
from fedtier.combiner.servicer import HEARTBEATS_PER_SECOND, CombinerServicer
from fedtier.proto import fedtier_pb2 as pb
from fedtier.proto import fedtier_pb2_grpc as rpc

NOOP = ROOT / "bench" / "projects" / "noop"


class StandIn(rpc.CombinerServicer):
    """Connect gives ``interval``; Heartbeat answers as ``mode`` says: "spaced" (asks for
    ``spaced`` seconds), "busy" (RESOURCE_EXHAUSTED), "forgot" (known false)."""

    def __init__(self, interval: float, spaced: float) -> None:
        self.interval = interval
        self.spaced = spaced
        self.mode = "spaced"
        self.connects = 0
        self.beats: list[float] = []
        self.stop = threading.Event()

    def Connect(self, request: pb.ConnectRequest, context: Any) -> pb.ConnectResponse:  # noqa: N802
        self.connects += 1
        return pb.ConnectResponse(combiner_name="stand-in", heartbeat_interval_s=self.interval)

    def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:  # noqa: N802
        self.beats.append(time.monotonic())
        if self.mode == "busy":
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")
        return pb.HeartbeatResponse(known=self.mode != "forgot", next_interval_s=self.spaced)

    def TaskStream(self, request: pb.TaskStreamRequest, context: Any) -> Iterator[pb.Task]:  # noqa: N802
        while context.is_active() and not self.stop.wait(0.05):
            pass
        return iter(())


@pytest.fixture
def stand_in() -> Iterator[tuple[StandIn, int]]:
    servicer = StandIn(interval=0.05, spaced=0.4)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    rpc.add_CombinerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    servicer.stop.set()
    server.stop(0)


@pytest.mark.timeout(30)
def test_heartbeats_follow_the_combiner_and_only_a_forgetful_one_is_left(stand_in, tmp_path: Path) -> None:
    servicer, port = stand_in
    client = FedClient(ClientSettings(name="c", project=NOOP, combiner=f"127.0.0.1:{port}", work_dir=tmp_path,
                                      backoff_initial=0.05))
    stop = threading.Event()
    runner = threading.Thread(target=client.run, args=(stop,), daemon=True)
    runner.start()
    try:
        wait_until(lambda: len(servicer.beats) >= 3, 10, "three heartbeats")
        gaps = [b - a for a, b in zip(servicer.beats[1:], servicer.beats[2:])]
        # Connect asked for 0.05 s, each answer for 0.4 s: the answer wins
        assert all(gap > 0.3 for gap in gaps), gaps

        servicer.spaced = 0.05
        seen = len(servicer.beats)
        wait_until(lambda: len(servicer.beats) >= seen + 2, 10, "a heartbeat answered with 0.05 s")
        servicer.mode = "busy"  # every heartbeat refused: a busy combiner, its stream still open
        seen = len(servicer.beats)
        wait_until(lambda: len(servicer.beats) >= seen + 8, 10, "eight refused heartbeats")
        assert servicer.connects == 1  # three failures in a row are not enough to leave it

        servicer.mode = "forgot"
        wait_until(lambda: servicer.connects >= 2, 10, "the client to reconnect")  # known false: at once
    finally:
        stop.set()
        runner.join(10)
    assert not runner.is_alive()


def test_a_combiner_holding_many_streams_spaces_heartbeats_out() -> None:
    registry = ClientRegistry(max_streams=5000)
    servicer = CombinerServicer("c", registry, runner=None, heartbeat_interval=10.0)  # type: ignore[arg-type]
    assert servicer.interval() == 10.0
    held = int(HEARTBEATS_PER_SECOND * 40)
    for k in range(held):
        registry.connect(f"c{k}")
        registry.open_stream(f"c{k}")
    assert servicer.interval() == pytest.approx(40.0)  # together about HEARTBEATS_PER_SECOND
    heartbeat_rule = CombinerServicer("c", ClientRegistry(liveness="heartbeat"), runner=None,  # type: ignore[arg-type]
                                      heartbeat_interval=2.0)
    assert heartbeat_rule.interval() == 2.0  # FEDn's rule: the interval is the rule itself


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["connect", "open", "close", "stale-close"]),
                                st.integers(0, 5)), max_size=60))
def test_the_registry_keeps_its_count_of_open_streams_true(steps: list[tuple[str, int]]) -> None:
    """The open-stream count is kept as streams open, are replaced and close (it is what a round
    waiting for thousands reads on every wake-up): it always equals a count over every client."""
    registry = ClientRegistry(max_streams=3)  # names beyond twice this are forgotten on connect
    generations: dict[str, int] = {}
    for action, k in steps:
        name = f"c{k}"
        try:
            if action == "connect":
                registry.connect(name)
            elif action == "open":
                generations[name], _ = registry.open_stream(name)
            elif action == "close":
                registry.close_stream(name, generations.get(name, 0))
            else:  # an old stream's close after its client opened a new one changes nothing
                registry.close_stream(name, generations.get(name, 0) - 1)
        except (KeyError, CombinerFullError):
            pass
        truth = sum(1 for e in registry._clients.values() if e.stream_open)
        assert registry.counts() == (truth, truth)
        assert truth <= 3
