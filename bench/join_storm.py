"""The join storm: a thousand clients ask the reducer for their combiner at once.

    .venv/bin/python bench/join_storm.py [--clients 1000] [--calls 1] [--repeats 3] [--json storm.json]
    .venv/bin/python bench/join_storm.py --smoke

Two reducers run as real processes on loopback, each with the embedded stores and one real
combiner announced to it: the reducer as `fedtier reducer` runs it (cheroot, reducer/serve.py)
and the baseline, the same app on Werkzeug's threaded development server (how the reducer
served before; started by this script with ``--serve-werkzeug``). Against each in turn,
``--repeats`` times, alternating so that a noisy machine weighs on both alike, ``--clients``
clients connect at once (asyncio, one connection per call, ``Connection: close``: a joining
client is a new connection) and each calls ``GET /assign?name=...`` ``--calls`` times, with
names not seen before, so every call records a new client.

Per server: answered calls per second over the storm (first connect to last answer), the
latency of a call (connect to last byte) at p50 and p99 over all repeats, errors (anything but
a 200: refused or reset connections, timeouts after ``--timeout`` s, 5xx), and the reducer's
CPU seconds per thousand calls; then each as a ratio, production over baseline. The exit
status is 0 when the production server answered every call with a 200.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import math
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SERVERS = ("werkzeug", "cheroot")  # the baseline first


# ---------------------------------------------------------------- the baseline server
def serve_werkzeug(port: int) -> None:
    """The reducer's app on Werkzeug's development server, as reducer/serve.py ran it before."""
    from werkzeug.serving import make_server

    from fedtier.config import Settings, setup_logging
    from fedtier.reducer.app import create_app

    setup_logging("WARNING", "reducer")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = make_server("127.0.0.1", port, None, threaded=True)
    server.app = create_app(Settings.from_env())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop.wait()
    server.shutdown()
    server.app.extensions["fedtier"].close()


# ---------------------------------------------------------------- the storm
async def _call(port: int, path: str, timeout: float) -> tuple[float, str]:
    """One call on a new connection: (seconds, '200' or what went wrong)."""
    start = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            reply = await reader.read()  # until the server closes
        status = reply.split(b" ", 2)[1].decode() if reply.startswith(b"HTTP/") else "no reply"
    except TimeoutError:
        status = "timeout"
    except OSError as exc:
        status = type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
    return time.perf_counter() - start, status


async def _storm(port: int, clients: int, calls: int, prefix: str, timeout: float) -> dict[str, Any]:
    async def client(k: int) -> list[tuple[float, str]]:
        return [await _call(port, f"/assign?name={prefix}-{k}-{c}", timeout) for c in range(calls)]

    start = time.perf_counter()
    results = await asyncio.gather(*(client(k) for k in range(clients)))
    wall = time.perf_counter() - start
    flat = [r for per_client in results for r in per_client]
    errors: dict[str, int] = {}
    for _, status in flat:
        if status != "200":
            errors[status] = errors.get(status, 0) + 1
    return {"wall_s": wall, "latencies_s": [s for s, _ in flat], "answered": sum(st == "200" for _, st in flat),
            "errors": errors}


def storm(port: int, clients: int, calls: int, prefix: str, timeout: float) -> dict[str, Any]:
    return asyncio.run(_storm(port, clients, calls, prefix, timeout))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# ---------------------------------------------------------------- one reducer and its combiner
def start_network(procs: common.Processes, server: str, work: Path) -> tuple[int, int]:
    """A reducer on ``server`` with one combiner online; its (port, pid)."""
    port, combiner_port = common.free_port(), common.free_port()
    env = {"FEDTIER_DATA_DIR": str(work / server), "FEDTIER_LOG_LEVEL": "WARNING"}
    if server == "cheroot":
        proc = procs.fedtier(f"reducer-{server}", "reducer", "--host", "127.0.0.1", "--port", str(port), env=env)
    else:
        proc = procs.start(f"reducer-{server}", [sys.executable, str(Path(__file__).resolve()),
                                                 "--serve-werkzeug", str(port)], env=env)
    common.wait_for_port(port, proc=proc)
    url = f"http://127.0.0.1:{port}"
    procs.fedtier(f"combiner-{server}", "combiner", "--name", "storm-combiner", "--host", "127.0.0.1", "--port",
                  str(combiner_port), "--reducer", url, env=env)
    deadline = time.monotonic() + 60
    while True:
        procs.check_alive()
        reply = requests.get(f"{url}/assign", params={"name": "warm-up"}, timeout=10)
        if reply.status_code == 200:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"no combiner online at {url} after 60 s: {reply.status_code} {reply.text}")
        time.sleep(0.2)
    return port, proc.pid


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="join-storm-"))
    result: dict[str, Any] = {"machine": common.machine(), "clients": args.clients, "calls": args.calls,
                              "repeats": args.repeats, "servers": {}}
    with common.Processes(work / "logs") as procs:
        networks = {server: start_network(procs, server, work) for server in SERVERS}
        runs: dict[str, list[dict[str, Any]]] = {server: [] for server in SERVERS}
        for repeat in range(args.repeats):
            for server in SERVERS:
                port, pid = networks[server]
                cpu_before = common.cpu_seconds(pid)
                one = storm(port, args.clients, args.calls, f"r{repeat}", args.timeout)
                one["reducer_cpu_s"] = common.cpu_seconds(pid) - cpu_before
                runs[server].append(one)
                print(f"repeat {repeat + 1}/{args.repeats} {server}: {one['answered']} answered in "
                      f"{one['wall_s']:.2f} s, errors {one['errors'] or 'none'}", flush=True)
        procs.check_alive()
    if not args.work_dir and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    for server in SERVERS:
        latencies = [s for one in runs[server] for s in one["latencies_s"]]
        calls = args.clients * args.calls * args.repeats
        errors: dict[str, int] = {}
        for one in runs[server]:
            for kind, n in one["errors"].items():
                errors[kind] = errors.get(kind, 0) + n
        result["servers"][server] = {
            "requests_per_s": common.summarize(one["answered"] / one["wall_s"] for one in runs[server]),
            "p50_ms": percentile(latencies, 0.50) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
            "max_ms": max(latencies) * 1000, "calls": calls, "errors": sum(errors.values()),
            "errors_by_kind": errors,
            "cpu_ms_per_call": sum(one["reducer_cpu_s"] for one in runs[server]) / calls * 1000,
        }
    new, old = result["servers"]["cheroot"], result["servers"]["werkzeug"]
    result["ratios"] = {
        "requests_per_s": common.ratio(new["requests_per_s"]["median"], old["requests_per_s"]["median"]),
        "p50": common.ratio(new["p50_ms"], old["p50_ms"]), "p99": common.ratio(new["p99_ms"], old["p99_ms"]),
        "cpu_per_call": common.ratio(new["cpu_ms_per_call"], old["cpu_ms_per_call"]),
    }
    result["ok"] = new["errors"] == 0
    return result


def report(result: dict[str, Any]) -> None:
    print("\n" + common.machine_line(result["machine"]))
    rows = []
    for server in SERVERS:
        s = result["servers"][server]
        label = "Werkzeug (baseline)" if server == "werkzeug" else "cheroot (fedtier reducer)"
        rows.append([label, s["requests_per_s"]["median"], s["p50_ms"], s["p99_ms"], s["max_ms"],
                     f"{s['errors']} of {s['calls']}" + (f" {s['errors_by_kind']}" if s["errors"] else ""),
                     s["cpu_ms_per_call"]])
    r = result["ratios"]
    rows.append(["ratio cheroot/Werkzeug", r["requests_per_s"], r["p50"], r["p99"], "", "", r["cpu_per_call"]])
    common.print_table(f"Join storm: {result['clients']} clients x {result['calls']} /assign at once, "
                       f"{result['repeats']} repeats",
                       ["server", "calls/s (median)", "p50 ms", "p99 ms", "max ms", "errors", "reducer CPU ms/call"],
                       rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="clients calling at once (default 1000)")
    parser.add_argument("--calls", type=int, default=1, help="/assign calls per client, one after another (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="storms per server, alternating (default 3)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a call counts as failed (default 60)")
    parser.add_argument("--smoke", action="store_true", help="a quick run: 50 clients, 1 repeat")
    parser.add_argument("--serve-werkzeug", type=int, default=0, help=argparse.SUPPRESS)
    common.add_output_options(parser)
    args = parser.parse_args(argv)
    if args.serve_werkzeug:
        serve_werkzeug(args.serve_werkzeug)
        return 0
    if args.smoke:
        args.clients, args.calls, args.repeats = 50, 1, 1
    if min(args.clients, args.calls, args.repeats) < 1 or args.timeout <= 0:
        parser.error("--clients, --calls, --repeats and --timeout must be positive")
    logging.basicConfig(level=logging.WARNING)
    return common.conclude(run(args), report, args.json)


if __name__ == "__main__":
    sys.exit(main())
