"""The network page at the scale of the lab: a thousand virtual clients, measured in Chromium.

    .venv/bin/python bench/network_page.py [--clients 1000] [--combiners 2] [--swarms 4] [--rounds 1]
                                           [--polls 3] [--json page.json]
    .venv/bin/python bench/network_page.py --smoke

One network on loopback, as bench/load.py runs it: a reducer, ``--combiners`` combiners and
``fedtier swarm`` processes of virtual clients (each its own gRPC channel, heartbeat and task
stream). A session of ``--rounds`` validated rounds requires every client, so every client has a
history. Then headless Chromium (Debian's, driven by Playwright, as tests/test_ui.py does)
opens the network page, a client's page and the trail, and for each reports the HTML's bytes,
the JSON bytes of one poll (the median over ``--polls``) and the time from navigation until
the page shows its data.

The budget is the one tests/test_ui_clients.py holds the page to at a thousand clients, where
980 of them are records written into the store: the network page's HTML under 64 KiB, a poll
under 48 KiB, shown within 5 s. The exit status is 0 when the network page is within it.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import load  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
HTML_BUDGET = 64 * 1024
POLL_BUDGET = 48 * 1024
RENDER_BUDGET_S = 5.0
# the API calls one poll of each page makes (reducer/static/*.js)
CALLS_PER_POLL = {"network": 4, "client": 2, "trail": 1}

_API_ENTRIES = """(after) => performance.getEntriesByType("resource")
    .filter((e) => e.startTime > after && e.name.includes("/api/v1/") && e.responseEnd > 0)
    .map((e) => [e.name, e.encodedBodySize])"""


def measure(page: Any, url: str, calls: int, polls: int) -> dict[str, Any]:
    """HTML bytes, the time until ``body[data-loaded]``, and the JSON bytes of each poll."""
    page.goto(url)
    page.wait_for_selector("body[data-loaded=true]", timeout=60_000)
    shown_ms = page.evaluate("performance.now()")
    html = page.evaluate("performance.getEntriesByType('navigation')[0].encodedBodySize")
    sizes = []
    after = 0.0
    for _ in range(polls):
        page.wait_for_function(f"({_API_ENTRIES})({after}).length >= {calls}", timeout=30_000)
        entries = page.evaluate(f"({_API_ENTRIES})({after})")[:calls]
        sizes.append(sum(size for _, size in entries))
        after = page.evaluate("performance.now()")
    return {"html_bytes": html, "shown_s": shown_ms / 1000, "poll_bytes": common.summarize(sizes)}


def run(options: argparse.Namespace) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    work = Path(options.work_dir or tempfile.mkdtemp(prefix="fedtier-network-page-"))
    args = argparse.Namespace(clients=options.clients, swarms=options.swarms, combiners=options.combiners,
                              rounds=options.rounds, params=options.params, validate=True, round_timeout=300.0,
                              heartbeat_interval=0.0, heartbeat_timeout=0.0, task_slots=8, log_level="WARNING",
                              work_dir=str(work), json="")
    try:
        with common.Processes(work / "logs") as procs:
            net = load.LoadNetwork(procs, work, args)
            joined_s = net.start()
            started = requests.post(net.url + "/start", json={
                "rounds": options.rounds, "clients_required": options.clients, "wait_for_clients": 120,
                "round_timeout": 300, "validate": True}, timeout=30)
            started.raise_for_status()
            net.wait("the session", lambda: net.get("/api/v1/status")["state"] == "idle", 600)
            rounds = net.get("/api/v1/rounds")
            first = sorted(c["name"] for c in net.get("/api/v1/clients", limit=1))[0]
            history = net.get(f"/api/v1/clients/{first}/history")["records"]
            pages = {}
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
                for name, path in (("network", "/network"), ("client", f"/clients/{first}"), ("trail", "/trail")):
                    pages[name] = measure(page, net.url + path, CALLS_PER_POLL[name], options.polls)
                browser.close()
    finally:
        if not options.keep and not options.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    network = pages["network"]
    ok = (network["html_bytes"] < HTML_BUDGET and network["poll_bytes"]["max"] < POLL_BUDGET
          and network["shown_s"] < RENDER_BUDGET_S and all(r["status"] == "success" for r in rounds)
          and len(history) == options.rounds)
    return {"ok": ok, "clients": options.clients, "combiners": options.combiners, "joined_s": joined_s,
            "rounds": [r["status"] for r in rounds], "history_of": first, "history_records": len(history),
            "pages": pages, "budget": {"html_bytes": HTML_BUDGET, "poll_bytes": POLL_BUDGET,
                                       "shown_s": RENDER_BUDGET_S},
            "machine": common.machine()}


def report(result: dict[str, Any]) -> None:
    print(f"\n{result['clients']} virtual clients on {result['combiners']} combiners, joined in "
          f"{result['joined_s']:.1f} s; rounds {', '.join(result['rounds'])}; {result['history_of']} has "
          f"{result['history_records']} history records")
    common.print_table("Pages at the lab's scale", ["page", "HTML", "a poll (median)", "a poll (max)", "shown after"], [
        [name, f"{p['html_bytes'] / 1024:.1f} KiB", f"{p['poll_bytes']['median'] / 1024:.1f} KiB",
         f"{p['poll_bytes']['max'] / 1024:.1f} KiB", f"{p['shown_s']:.2f} s"] for name, p in result["pages"].items()])
    b = result["budget"]
    print(f"\nbudget for the network page: HTML < {b['html_bytes'] // 1024} KiB, a poll < {b['poll_bytes'] // 1024} "
          f"KiB, shown within {b['shown_s']:g} s: {'within' if result['ok'] else 'OVER'}")
    print(common.machine_line(result["machine"]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=common.parse_count, default=1000, help="virtual clients (default 1000)")
    parser.add_argument("--combiners", type=int, default=2, help="combiner processes (default 2)")
    parser.add_argument("--swarms", type=int, default=4, help="swarm processes (default 4)")
    parser.add_argument("--rounds", type=int, default=1, help="validated rounds before measuring (default 1)")
    parser.add_argument("--params", type=common.parse_count, default=1000, help="model parameters (default 1000)")
    parser.add_argument("--polls", type=int, default=3, help="polls measured per page (default 3)")
    parser.add_argument("--smoke", action="store_true", help="20 clients, 1 swarm, 1 poll: does it run")
    common.add_output_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    if options.smoke:
        options.clients, options.swarms, options.combiners, options.polls = 20, 1, 1, 1
    return common.conclude(run(options), report, options.json)


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"({time.monotonic() - started:.0f} s)")
    sys.exit(code)
