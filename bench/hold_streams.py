"""Clients per combiner: what holding N connected clients costs one combiner, and how fast it lets them go.

    .venv/bin/python bench/hold_streams.py [--clients 1000,10000] [--json out.json]

One `fedtier combiner` process (default settings but ``--max-clients``), and in this process,
on one asyncio loop, N clients that each open their own TCP connection, call Connect and
open their task stream, then wait, as an idle client does. Per N it reports the combiner's
threads and RSS before any client and once all N are active (its Status), the RSS per
client, the time for all to become active, and, after this process drops every connection
at once, the time until the combiner counts none active (the open stream is what makes a
client active: combiner/registry.py).

Unlike bench/scale_out.py, the clients here are bare gRPC calls, not virtual clients running
the client's code (no heartbeats, no tasks), so the figures are the combiner's alone. No rounds run.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import MiB  # noqa: E402

from fedtier.proto import fedtier_pb2 as pb  # noqa: E402
from fedtier.proto import fedtier_pb2_grpc as rpc  # noqa: E402
from fedtier.reducer.combiner_client import CombinerClient  # noqa: E402
from fedtier.transport.channel import CHANNEL_OPTIONS  # noqa: E402

OWN_CONNECTION = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]


def figures(pid: int) -> dict[str, float]:
    proc = psutil.Process(pid)
    return {"rss_mib": proc.memory_info().rss / MiB, "threads": proc.num_threads()}


def wait_active(handle: CombinerClient, count: int, timeout: float, at_least: bool = True) -> float:
    """Seconds until the combiner counts ``count`` active clients (or at most, with at_least False)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        active = handle.status(timeout=30).active_clients
        if (active >= count) if at_least else (active <= count):
            return time.monotonic() - started
        time.sleep(0.2)
    raise RuntimeError(f"the combiner did not reach {count} active clients in {timeout:g}s (it has {active})")


async def hold(address: str, count: int, ready: asyncio.Event, release: asyncio.Event, prefix: str) -> int:
    """Open ``count`` clients, each its own channel; keep them until ``release``; returns refusals."""
    channels = [grpc.aio.insecure_channel(address, options=OWN_CONNECTION) for _ in range(count)]
    refused = 0
    streams = []

    async def one(k: int, channel: grpc.aio.Channel) -> None:
        nonlocal refused
        stub = rpc.CombinerStub(channel)
        try:
            await stub.Connect(pb.ConnectRequest(client_name=f"{prefix}-{k}"), timeout=120)
            streams.append(stub.TaskStream(pb.TaskStreamRequest(client_name=f"{prefix}-{k}")))
        except grpc.RpcError:
            refused += 1

    for start in range(0, count, 200):  # in waves: a join, not one burst of SYNs
        await asyncio.gather(*(one(k, channels[k]) for k in range(start, min(count, start + 200))))
    ready.set()
    await release.wait()
    for channel in channels:  # every connection closes at once, as when a swarm's machine goes
        await channel.close(grace=None)
    return refused


def run_size(count: int, work: Path) -> dict[str, Any]:
    port = common.free_port()
    with common.Processes(work / "logs") as procs:
        proc = procs.fedtier("combiner", "combiner", "--name", "c", "--host", "127.0.0.1",
                             "--port", str(port), "--work-dir", str(work / "c"), "--max-clients", str(count))
        common.wait_for_port(port, proc=proc)
        handle = CombinerClient(f"127.0.0.1:{port}")
        time.sleep(1.0)
        idle = figures(proc.pid)
        out: dict[str, Any] = {"clients": count, "idle": idle}

        async def main() -> int:
            ready, release = asyncio.Event(), asyncio.Event()
            holder = asyncio.create_task(hold(f"127.0.0.1:{port}", count, ready, release, "h"))
            started = time.monotonic()
            await ready.wait()
            out["join_s"] = time.monotonic() - started + await asyncio.to_thread(wait_active, handle, count, 300)
            await asyncio.sleep(2.0)  # settle before measuring
            out["held"] = figures(proc.pid)
            out["held"]["active"] = handle.status(timeout=30).active_clients
            release.set()
            refused = await holder
            out["release_s"] = await asyncio.to_thread(wait_active, handle, 0, 120, False)
            return refused

        out["refused"] = asyncio.run(main())
        handle.close()
    out["kib_per_client"] = (out["held"]["rss_mib"] - idle["rss_mib"]) * 1024 / count
    return out


def report(result: dict[str, Any]) -> None:
    rows = [[r["clients"], r["held"]["active"], r["refused"], r["idle"]["threads"], r["held"]["threads"],
             r["idle"]["rss_mib"], r["held"]["rss_mib"], r["kib_per_client"], r["join_s"], r["release_s"]]
            for r in result["runs"]]
    common.print_table("Clients held by one combiner (idle task streams, one TCP connection each)",
                       ["clients", "active", "refused", "threads before", "threads holding", "RSS before MiB",
                        "RSS holding MiB", "KiB per client", "all active after s", "none active after s"], rows)
    print("\n" + common.machine_line(result["machine"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=common.parse_list, default=[1000, 10000],
                   help="clients held, comma-separated (default 1000,10000)")
    common.add_output_options(p)
    options = p.parse_args(argv)
    if any(c < 1 for c in options.clients):
        raise SystemExit("--clients must be at least 1")
    work = Path(options.work_dir or tempfile.mkdtemp(prefix="fedtier-bench-hold-"))
    result: dict[str, Any] = {"benchmark": "hold_streams", "machine": common.machine(), "runs": []}
    try:
        for count in options.clients:
            print(f"[{count}] holding {count} clients...", flush=True)
            result["runs"].append(run_size(count, work / str(count)))
    finally:
        if not options.work_dir and not options.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["ok"] = all(r["held"]["active"] == r["clients"] and r["refused"] == 0 for r in result["runs"])
    return common.conclude(result, report, options.json)


if __name__ == "__main__":
    sys.exit(main())
