"""The reducer's web UI in a real headless Chromium, against a live network.

A reducer (PyTorch helper), two combiners and two `digits` clients run as real
processes. The browser seeds the network through the upload form (a bad file first:
the API's message shows inline), starts two rounds through the settings form (a bad
setting first: the message shows next to that field), watches the dashboard's accuracy
plot gain its points as the rounds finish without a reload, stops a second session,
checks the network page, downloads a model from the trail and checks its hash, and
saves a screenshot of every page at desktop and phone widths in $FEDTIER_UI_SCREENSHOTS
(default: a folder in the system's temporary directory, never tracked, so a test run leaves the work tree
as it was; FEDTIER_UI_SCREENSHOTS=docs/screenshots refreshes the committed ones).
Any console error or uncaught page error that the test did not provoke fails it.

The browser is Debian's `chromium`, driven by Playwright's driver (never
`playwright install`); the `chromium` fixture apt-installs it when it is missing.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from conftest import ROOT, ProcessGroup, free_port, wait_for_port
from fedtier.reducer.routes.dashboard import LATEST as LATEST_ROUNDS_WITHOUT_JS

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DIGITS = ROOT / "test_projects" / "digits"
SHOTS = Path(os.environ.get("FEDTIER_UI_SCREENSHOTS") or Path(tempfile.gettempdir()) / "fedtier-ui-screenshots")
DESKTOP = {"width": 1280, "height": 900}
NARROW = {"width": 390, "height": 844}
PAGES = {"dashboard": "/", "seed": "/seed", "start": "/start", "network": "/network", "trail": "/trail",
         "sessions": "/sessions", "schedules": "/schedules"}
BAD_REQUEST = "the server responded with a status of 400"


def _install_chromium() -> str | None:
    """apt-get the browser; None when done, else why it could not be."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not root, so apt-get cannot install it"
    if shutil.which("apt-get") is None:
        return "apt-get is not available on this machine"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            return f"{' '.join(cmd)} failed: {(done.stderr or done.stdout).strip()[-500:]}"
    return None if CHROMIUM.exists() else "apt-get finished but /usr/bin/chromium is still missing"


def launch_chromium() -> Iterator[object]:
    """A headless Chromium (Debian's package) under Playwright; installed with apt when missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install -e '.[dev]'")
    if not CHROMIUM.exists():
        why = _install_chromium()
        if why:
            pytest.skip(f"/usr/bin/chromium is missing and could not be installed: {why}")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def chromium(chromium_session: object) -> object:
    """The session's browser (conftest.py): the UI test files share one launch; each test makes its own
    contexts, so nothing but the process is shared."""
    return chromium_session


class Console:
    """Console errors and page errors of every page; the test consumes the ones it provokes."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page) -> None:
        page.on("console", lambda msg: msg.type == "error" and self.errors.append(f"{page.url}: {msg.text}"))
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: uncaught {exc}"))

    def consume(self, fragment: str) -> None:
        matching = [e for e in self.errors if fragment in e]
        assert matching, f"expected a console error containing {fragment!r}; got {self.errors}"
        self.errors.remove(matching[0])

    def assert_clean(self) -> None:
        assert not self.errors, "console or page errors:\n" + "\n".join(self.errors)


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def open_page(page, url: str, path: str) -> None:
    page.goto(url + path)
    if path not in ("/seed", "/start"):
        page.wait_for_selector("body[data-loaded=true]")


def bring_up(procs: ProcessGroup, tmp_path: Path) -> tuple[str, Path, str]:
    """Reducer, 2 combiners, 2 digits clients, all starting at once (clients retry until a
    combiner is there); returns the reducer URL, the digits seed file and its sha256: the
    committed seed (test_seeds.py checks digits/seed.py writes exactly it), which saves a
    torch import while the network starts."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"FEDTIER_DATA_DIR": str(tmp_path / "data")}
    seed = ROOT / "seeds" / "digits.safetensors"
    reducer = procs.start("reducer", "reducer", "--host", "127.0.0.1", "--port", str(port), "--helper", "pytorch",
                          env=env)
    for i in range(2):
        procs.start(f"combiner-{i}", "combiner", "--name", f"combiner-{i}", "--host", "127.0.0.1",
                    "--port", str(free_port()), "--reducer", url, "--heartbeat-interval", "0.5",
                    "--heartbeat-timeout", "10", env=env)
        procs.start(f"client-{i}", "client", "--reducer", url, "--project", str(DIGITS), "--name", f"client-{i}",
                    "--partition", f"{i}/2", env=env)
    wait_for_port(port, proc=reducer)
    return url, seed, hashlib.sha256(seed.read_bytes()).hexdigest()


def test_ui_seeds_starts_watches_and_inspects_a_live_network(chromium, procs: ProcessGroup, tmp_path: Path) -> None:
    url, seed_file, seed_sha = bring_up(procs, tmp_path)
    console = Console()
    context = chromium.new_context(viewport=DESKTOP, accept_downloads=True)
    context.set_default_timeout(30_000)
    page = context.new_page()
    console.watch(page)

    # ---- seed: a bad file is refused with the API's message under the input; the real one is shown with its hash
    open_page(page, url, "/seed")
    assert page.inner_text("[data-bind=state]") == "setup"
    bad = tmp_path / "not-a-model.bin"
    bad.write_bytes(b"this is not a model")
    page.set_input_files("#seed-file", str(bad))
    page.click("#seed-form [type=submit]")
    page.wait_for_selector("#error-seed:not([hidden])")
    assert "not a valid model" in page.inner_text("#error-seed")
    assert page.get_attribute("#seed-file", "aria-invalid") == "true"
    console.consume(BAD_REQUEST)
    shot(page, "seed-error-desktop")
    page.set_input_files("#seed-file", str(seed_file))
    page.click("#seed-form [type=submit]")
    page.wait_for_selector("#seed-info:not([hidden])")
    assert page.inner_text("[data-bind=seed-sha256]") == seed_sha
    assert page.is_hidden("#error-seed") and page.is_hidden("#seed-upload")
    assert page.inner_text("[data-bind=state]") == "idle"
    shot(page, "seed-desktop")

    # ---- network: both combiners and both clients come online
    open_page(page, url, "/network")
    page.wait_for_function("document.querySelectorAll('[data-client][data-online=true]').length === 2", timeout=60_000)
    assert page.locator("[data-combiner][data-online=true]").count() == 2

    # ---- the dashboard in a second tab, loaded before any round: no points yet
    dashboard = context.new_page()
    console.watch(dashboard)
    open_page(dashboard, url, "/")
    points = dashboard.locator("#chart-accuracy circle.pt[data-series=accuracy]")
    assert points.count() == 0

    # ---- start: a bad combination is named next to its field; then 2 rounds
    # (each tab is brought to the front before it is used, as a person would look at it: a
    # background tab draws no frames, so every click and screenshot there waited for one)
    page.bring_to_front()
    open_page(page, url, "/start")
    page.wait_for_function("!document.querySelector('#start-button').disabled")
    assert page.is_disabled("#stop-after-button") and page.is_disabled("#abort-button")
    page.fill("#f-clients_required", "2")
    page.fill("#f-clients_requested", "1")
    page.click("#start-button")
    page.wait_for_selector("#error-clients_requested:not([hidden])")
    assert "below clients_required" in page.inner_text("#error-clients_requested")
    assert page.get_attribute("#f-clients_requested", "aria-invalid") == "true"
    console.consume(BAD_REQUEST)
    shot(page, "start-error-desktop")
    page.fill("#f-clients_requested", "0")
    page.fill("#f-rounds", "2")
    page.fill("#f-task", '{"epochs": 10}')  # the task settings reach the project's train()
    page.click("#start-button")
    page.wait_for_selector("#started:not([hidden])")
    assert page.is_hidden("#error-clients_requested")
    assert page.is_disabled("#start-button") and page.is_enabled("#stop-after-button")  # a session is running
    assert page.is_enabled("#abort-button")

    # ---- the dashboard gains its points as rounds finish, without a reload (how many at a
    # time depends on how fast the rounds are against its 2 s refresh)
    dashboard.bring_to_front()
    seen = [0]
    deadline = time.monotonic() + 90
    while seen[-1] < 2 and time.monotonic() < deadline:
        count = points.count()
        if count != seen[-1]:
            seen.append(count)
        time.sleep(0.1)
    assert seen[-1] == 2 and seen == sorted(seen), seen
    dashboard.wait_for_function("document.querySelector('#rounds-done')?.textContent.startsWith('2 / 2')")
    dashboard.wait_for_selector("#chart-phases rect[data-phase=training]")
    dashboard.wait_for_selector("#chart-clients circle.client-pt")
    assert dashboard.locator("#chart-loss circle.pt[data-series=loss]").count() == 2
    assert dashboard.locator("#round-table tbody tr").count() == 2
    dashboard.wait_for_function("document.querySelector('[data-bind=state]').textContent === 'idle'")
    shot(dashboard, "dashboard-desktop")

    # ---- stop: a long session started from the form ends as 'stopped' after "Stop after this
    # round"; the round in progress finishes (no round fails) and only "Abort now" is left meanwhile
    page.bring_to_front()
    page.wait_for_function("!document.querySelector('#start-button').disabled")
    page.fill("#f-rounds", "500")
    page.fill("#f-task", '{"epochs": 200}')  # rounds long enough to watch the stop being waited for
    page.click("#start-button")
    page.wait_for_function("!document.querySelector('#stop-after-button').disabled")
    shot(page, "start-desktop")
    page.click("#stop-after-button")
    page.wait_for_function("document.querySelector('#stop-reason').textContent.startsWith('Stopping after')")
    page.wait_for_function("document.querySelector('[data-bind=state]').textContent === 'idle'", timeout=60_000)
    sessions = requests.get(f"{url}/api/v1/sessions", timeout=5).json()
    assert [s["status"] for s in sessions] == ["succeeded", "stopped"], sessions
    assert sessions[1]["rounds_failed"] == 0 and sessions[1]["stop_requested"] == "after_round", sessions

    # ---- sessions history
    open_page(page, url, "/sessions")
    assert page.locator("tr[data-session]").count() == 2
    assert page.locator("tr[data-status=stopped]").count() == 1
    assert page.locator("tr[data-status=succeeded] .pill-succeeded").count() == 1
    colour = "(s) => getComputedStyle(document.querySelector(s)).backgroundColor"
    assert page.evaluate(colour, "tr[data-status=succeeded] .pill") != page.evaluate(colour, "tr[data-status=stopped] .pill")
    assert "of 500 succeeded" in page.inner_text("tr[data-status=stopped]")
    assert page.locator("tr[data-session] a[data-charts]").count() == 2  # each session's charts, one click away
    shot(page, "sessions-desktop")

    # ---- the dashboard overlays the two sessions by round within the session, and the CSV of
    # the chart holds the numbers the API gives for each session's rounds
    first, second = (s["id"] for s in sessions)
    dashboard.bring_to_front()
    dashboard.select_option("#view-session", first)
    dashboard.select_option("#view-compare", second)
    dashboard.wait_for_selector("#chart-accuracy circle.pt[data-series='B:accuracy']")
    assert dashboard.locator("#chart-accuracy circle.pt[data-series='A:accuracy']").count() == 2
    shot(dashboard, "dashboard-compare-desktop")
    with dashboard.expect_download() as info:
        dashboard.click("button[data-csv=accuracy]")
    rows = list(csv.reader(Path(info.value.path()).read_text().splitlines()))
    header = rows[0]  # one column per metric drawn (the project reports test_accuracy too) and session
    assert header[0] == "round in session" and {f"A {first[:8]} accuracy", f"B {second[:8]} accuracy"} <= set(header)
    by_session = [[r["metrics"]["accuracy"] for r in requests.get(f"{url}/api/v1/rounds", params={"session_id": sid},
                                                                     timeout=5).json() if r["status"] == "success"]
                  for sid in (first, second)]
    width = max(map(len, by_session))
    assert [int(r[0]) for r in rows[1:]] == list(range(1, width + 1))
    for column, values in ((header.index(f"A {first[:8]} accuracy"), by_session[0]),
                           (header.index(f"B {second[:8]} accuracy"), by_session[1])):
        assert [float(r[column]) for r in rows[1:] if r[column]] == values

    # ---- network again: everyone online; a client's page has its rounds, local against global
    page.bring_to_front()
    open_page(page, url, "/network")
    page.wait_for_function("document.querySelectorAll('[data-client][data-online=true]').length === 2")
    shot(page, "network-desktop")
    page.click("tr[data-client=client-0] a")
    page.wait_for_selector("body[data-loaded=true]")
    reported = page.locator("tr[data-outcome=reported]")
    assert reported.count() >= 2  # the first session's two rounds, and the stopped one's if it ran
    assert "train_loss" in reported.first.inner_text() and "accuracy" in reported.first.inner_text()
    assert page.locator("#client-loss circle[data-series='train_metrics.train_loss']").count() >= 2
    shot(page, "client-desktop")

    # ---- the trail: download the latest model; its bytes hash to what the page shows
    open_page(page, url, "/trail")
    models = requests.get(f"{url}/api/v1/models", timeout=5).json()
    assert page.locator("tr[data-model]").count() == len(models) >= 3
    newest = page.locator("tr[data-model]").first
    shown_hash = newest.locator("[data-sha256]").inner_text()
    with page.expect_download() as info:
        newest.locator("a.download").click()
    data = Path(info.value.path()).read_bytes()
    assert re.fullmatch(r"[0-9a-f]{64}", shown_hash) and hashlib.sha256(data).hexdigest() == shown_hash
    seed_row = page.locator(f"tr[data-model] [data-sha256='{seed_sha}']")
    assert seed_row.count() == 1  # the seed is in the trail with the uploaded file's hash
    shot(page, "trail-desktop")

    # ---- every page at phone width: no sideways scrolling, then a screenshot
    narrow = chromium.new_context(viewport=NARROW, device_scale_factor=1)
    phone = narrow.new_page()
    console.watch(phone)
    for name, path in PAGES.items():
        open_page(phone, url, path)
        if name == "dashboard":
            phone.wait_for_selector("#chart-accuracy circle.pt")
        overflow = phone.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at {NARROW['width']}px"
        shot(phone, f"{name}-narrow")
    narrow.close()

    # ---- without JavaScript the forms still post, and the browser lands on a page saying what happened
    plain = chromium.new_context(viewport=DESKTOP, java_script_enabled=False)
    no_js = plain.new_page()
    no_js.goto(url + "/start")
    no_js.fill("#f-rounds", "0")
    with no_js.expect_navigation():
        no_js.click("#start-button")
    assert no_js.url == f"{url}/start"
    assert "rounds: must be an integer" in no_js.inner_text("[data-flash=error]")
    no_js.goto(url + "/")  # the rounds are listed without JavaScript too
    rounds = len(requests.get(f"{url}/api/v1/rounds", timeout=5).json())  # the page lists the newest of them
    assert no_js.locator("#round-table tr[data-round-id]").count() == min(rounds, LATEST_ROUNDS_WITHOUT_JS)
    plain.close()

    context.close()
    console.assert_clean()


def test_pages_render_with_local_assets_only(tmp_path: Path) -> None:
    """Every page renders, names only same-origin assets, and every script and style it
    names is served (as JavaScript / CSS): the UI works with no internet. Every request
    the scripts make goes through the one `api` function (where auth plugs in)."""
    from fedtier.config import Settings
    from fedtier.reducer.app import create_app

    app = create_app(Settings(data_dir=tmp_path), helper="numpy", poll_interval_s=None)
    client = app.test_client()
    try:
        for path in [*PAGES.values(), "/plot", "/models"]:
            reply = client.get(path)
            assert reply.status_code == 200 and b"Reducer state" in reply.data, path
            html = reply.get_data(as_text=True)
            assert not re.search(r"(src|href)=\"(https?:)?//", html), f"{path} names an external asset"
            for asset in re.findall(r"(?:src|href)=\"(/static/[^\"]+)\"", html):
                served = client.get(asset)
                assert served.status_code == 200, asset
                if asset.endswith(".js"):
                    assert served.mimetype in ("text/javascript", "application/javascript"), asset
                if asset.endswith(".css"):
                    assert served.mimetype == "text/css", asset
                served.close()
    finally:
        app.extensions["fedtier"].close()
    static = ROOT / "reducer" / "static"
    scripts = {f.name: f.read_text() for f in static.glob("*.js")}
    for name, text in {**scripts, "app.css": (static / "app.css").read_text()}.items():
        text = text.replace('"http://www.w3.org/2000/svg"', "")  # the SVG namespace is a name, not a fetch
        assert not re.search(r"https?://", text), f"{name} refers to the internet"
        assert "@import" not in text and "url(" not in text.replace("url(#", ""), f"{name} loads something"
    calls = {name: len(re.findall(r"\b(fetch|XMLHttpRequest)\b\s*\(", text)) for name, text in scripts.items()}
    assert calls == {**{name: 0 for name in scripts}, "app.js": 1}, calls


def test_ui_promotes_a_model_and_manages_schedules(chromium, tmp_path: Path) -> None:
    """The trail marks the production model and promotes another with a click; the dashboard
    names it; the schedules page adds a schedule through its form (a bad setting first: the
    message shows at the settings box), pauses, resumes and deletes it."""
    import io
    import threading

    import numpy as np
    from werkzeug.serving import make_server

    from fedtier.config import Settings
    from fedtier.helpers import get_helper
    from fedtier.reducer.app import create_app

    app = create_app(Settings(data_dir=tmp_path), helper="numpy", poll_interval_s=None)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    context = chromium.new_context(viewport=DESKTOP)
    page = context.new_page()
    console = Console()
    console.watch(page)
    page.on("dialog", lambda dialog: dialog.accept())
    page.set_default_timeout(15_000)
    try:
        seed = get_helper("numpy").to_bytes({"w": np.zeros((2, 2), np.float32)})
        assert requests.post(f"{url}/seed", files={"seed": ("s", io.BytesIO(seed))}, timeout=10).status_code == 201
        r = app.extensions["fedtier"]
        first = r.trail.latest()
        (tmp_path / "m").write_bytes(seed)
        second = r.trail.commit(tmp_path / "m", parent_id=first["id"], round_number=1)
        assert requests.post(f"{url}/api/v1/models/{first['id']}/promote", json={"note": "baseline"},
                             timeout=10).status_code == 201

        open_page(page, url, "/trail")
        assert page.locator(f"tr[data-model='{first['id']}'] [data-production]").count() == 1
        assert "baseline" in page.inner_text("#production-line")
        page.click(f"tr[data-model='{second['id']}'] button.promote")
        page.wait_for_selector(f"tr[data-model='{second['id']}'] [data-production]")
        assert page.locator("[data-production]").count() == 1
        assert requests.get(f"{url}/api/v1/models/production", timeout=5).json()["id"] == second["id"]
        shot(page, "trail-production-desktop")
        open_page(page, url, "/")
        page.wait_for_function(f"document.querySelector('#model-production').textContent.includes('{second['id'][:8]}')")

        open_page(page, url, "/schedules")
        page.fill("#s-name", "nightly")
        page.fill("#s-cron", "0 2 * * *")
        page.fill("#s-settings", '{"rounds": 0}')
        page.click("#schedule-button")
        page.wait_for_selector("#error-settings:not([hidden])")
        assert "rounds" in page.inner_text("#error-settings")
        console.consume(BAD_REQUEST)
        page.fill("#s-settings", '{"rounds": 2}')
        page.click("#schedule-button")
        page.wait_for_selector("tr[data-schedule][data-state=active]")
        assert "0 2 * * *" in page.inner_text("tr[data-schedule]")
        shot(page, "schedules-desktop")
        page.click("tr[data-schedule] [data-action=pause]")
        page.wait_for_selector("tr[data-schedule][data-state=paused]")
        page.click("tr[data-schedule] [data-action=resume]")
        page.wait_for_selector("tr[data-schedule][data-state=active]")
        page.click("tr[data-schedule] [data-action=delete]")
        page.wait_for_selector("#schedules .empty")
        assert requests.get(f"{url}/api/v1/schedules", timeout=5).json() == []
        console.assert_clean()
    finally:
        context.close()
        server.shutdown()
        app.extensions["fedtier"].close()


def test_ui_shows_a_round_live_client_by_client_then_its_timeline(chromium, procs: ProcessGroup,
                                                                   tmp_path: Path) -> None:
    """Issue 18, the round in progress: a reducer, a combiner and two `numpy_shift` clients as
    real processes; client-1 trains longer. At phone width, the dashboard's live view shows both
    clients training, then client-0 reported while the round waits for client-1 still training,
    its counts always those of its list; the API pages its clients. Once done, the round's
    timeline (linked from the rounds table, drawn without JavaScript) has a bar per client for
    download, train and upload, the slowest named."""
    import io

    import numpy as np

    from conftest import TEST_PROJECTS
    from fedtier.helpers import get_helper
    from test_ui_truth import AXE, axe_serious as audit

    def axe_serious(page) -> list[str]:  # no serious accessibility violation, where axe-core is installed
        return audit(page) if AXE.exists() else []

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"FEDTIER_DATA_DIR": str(tmp_path / "data")}
    reducer = procs.start("reducer", "reducer", "--host", "127.0.0.1", "--port", str(port), "--helper", "numpy",
                          env=env)
    procs.start("combiner", "combiner", "--name", "combiner-0", "--host", "127.0.0.1", "--port", str(free_port()),
                "--reducer", url, "--heartbeat-interval", "0.5", "--heartbeat-timeout", "10", env=env)
    for i in range(2):
        procs.start(f"client-{i}", "client", "--reducer", url, "--project", str(TEST_PROJECTS / "numpy_shift"),
                    "--name", f"client-{i}", "--partition", f"{i}/2", env=env)
    wait_for_port(port, proc=reducer)
    seed = get_helper("numpy").to_bytes({"w": np.ones(4, np.float32)})
    assert requests.post(f"{url}/seed", files={"seed": ("seed", io.BytesIO(seed))}, timeout=10).status_code == 201
    deadline = time.monotonic() + 60
    while requests.get(f"{url}/api/v1/status", timeout=5).json()["clients_active"] < 2:
        assert time.monotonic() < deadline, "the two clients did not become active"
        time.sleep(0.2)

    console = Console()
    context = chromium.new_context(viewport=NARROW, device_scale_factor=1)
    context.set_default_timeout(30_000)
    page = context.new_page()
    console.watch(page)
    open_page(page, url, "/")
    assert page.get_attribute("#live-round", "data-running") == "false"
    # every drawing of the live view, as it was drawn: its counts, its list, who it waits for
    page.evaluate("""() => {
        window.drawn = [];
        new MutationObserver(() => window.drawn.push({
            counts: Object.fromEntries([...document.querySelectorAll('#live-counts [data-count]')]
                .map((li) => [li.dataset.count, Number(li.textContent.trim().split(' ').pop())])),
            rows: Object.fromEntries([...document.querySelectorAll('#live-clients tr[data-live-client]')]
                .map((tr) => [tr.dataset.liveClient, tr.dataset.state])),
            waiting: [...document.querySelectorAll('#live-waiting [data-waiting]')].map((s) => s.dataset.waiting)}))
            .observe(document.querySelector('#live-body'), {childList: true, subtree: true});
    }""")
    # client-0 trains 3 s, client-1 7 s: the API asks the combiner again once its answer is a
    # second old and the page polls every 2 s, so each state below is drawn at least once
    started = requests.post(f"{url}/start", json={"rounds": 1, "clients_required": 2, "validate": False,
                                                  "task": {"sleep": 3, "sleep_by_client": {"client-1": 7}}},
                            timeout=10)
    assert started.status_code == 201, started.text

    # the API while client-0 has reported and client-1 still trains: bounded, one page of one client
    deadline = time.monotonic() + 60
    while True:
        current = requests.get(f"{url}/api/v1/rounds/current", params={"limit": 1}, timeout=5).json()
        if current["counts"]["reported"] == 1:
            break
        assert time.monotonic() < deadline, current
        time.sleep(0.2)
    assert current["total"] == current["matching"] == 2 and len(current["clients"]) == 1, current
    assert current["counts"]["training"] == 1 and current["waiting_total"] == 1, current
    assert [c["client"] for c in current["waiting_for"]] == ["client-1"]
    assert current["combiners"][0]["name"] == "combiner-0" and current["combiners"][0]["total"] == 2
    assert requests.get(f"{url}/api/v1/rounds/current", params={"state": "sleeping"},
                        timeout=5).json()["field"] == "state"
    page.wait_for_function("document.querySelector('#live-clients tr[data-live-client]') || "
                           "document.querySelector('#live-round').dataset.running === 'false'")
    assert not axe_serious(page), axe_serious(page)
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the live view scrolls sideways by {overflow}px at {NARROW['width']}px"
    shot(page, "dashboard-live-narrow")
    page.wait_for_function("document.querySelector('#live-round').dataset.running === 'false'", timeout=60_000)

    # what the page drew: its counts always those of its list, and the states in their order
    drawn = [d for d in page.evaluate("window.drawn") if d["rows"]]
    for view in drawn:
        by_state: dict[str, int] = {}
        for state in view["rows"].values():
            by_state[state] = by_state.get(state, 0) + 1
        assert view["counts"] == by_state, view  # two clients: the whole list is on the page
    both = next(i for i, d in enumerate(drawn) if d["rows"].get("client-0") == "training")
    assert set(drawn[both]["waiting"]) == {"client-0", "client-1"}, drawn[both]
    one_left = next(i for i, d in enumerate(drawn) if d["rows"] == {"client-0": "reported", "client-1": "training"})
    assert both < one_left and drawn[one_left]["waiting"] == ["client-1"], drawn
    # the list by state asks the API for that state only
    with page.expect_request(lambda request: "/api/v1/rounds/current" in request.url and "state=failed" in request.url):
        page.select_option("#live-state", "failed")

    # ---- done: the timeline, reached from the rounds table
    page.wait_for_selector("#round-table a[data-seq]")
    with page.expect_navigation():
        page.click("#round-table a[data-seq]")
    assert "/rounds/" in page.url
    rows = page.locator("#timeline .tl-row")
    assert rows.count() == 2
    for name in ("client-0", "client-1"):
        row = page.locator(f"#timeline .tl-row[data-client='{name}'][data-state=reported]")
        for phase in ("download", "train", "upload"):
            assert row.locator(f".tl-bar[data-phase={phase}]").count() == 1, (name, phase)
    width = "(el) => el.getBoundingClientRect().width"
    train = {n: page.locator(f".tl-row[data-client='{n}'] .tl-bar[data-phase=train]").evaluate(width)
             for n in ("client-0", "client-1")}
    assert train["client-1"] > 1.5 * train["client-0"], train  # the straggler's bar is the long one (7 s to 3 s)
    assert "client-1" in page.inner_text("#slowest")
    assert not axe_serious(page), axe_serious(page)
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the timeline scrolls sideways by {overflow}px at {NARROW['width']}px"
    shot(page, "round-timeline-narrow")
    timeline_url = page.url
    context.close()

    plain = chromium.new_context(viewport=DESKTOP, java_script_enabled=False)
    no_js = plain.new_page()
    no_js.goto(timeline_url)
    assert no_js.locator("#timeline .tl-row .tl-bar[data-phase=train]").count() == 2
    plain.close()
    console.assert_clean()
