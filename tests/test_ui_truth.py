"""The web UI tells the truth when something is wrong (issue 18).

- Colours: every status pill and text colour meets WCAG AA (4.5:1), computed from app.css.
- Network: an offline combiner says where it was called, what it got and since when; a client
  why it is not active.
- Rounds: two rounds that fail (no client anywhere) keep distinct numbers (``seq``), in the
  API and on the page, and a restart goes on counting; ``/start`` says there are too few
  clients when it starts them, not only after they fail.
- Without JavaScript: the pages list their rounds, models and sessions; every link on every
  page leads somewhere; a form posted by a browser lands on a page saying what happened; an
  unknown page is an HTML 404 for a browser and JSON for the API.
- Login: a labelled field, the header says who is logged in, and logs out.
- In Chromium: every page at desktop and 390 px wide with no sideways scroll and no serious
  axe-core violation (axe-core comes from npm into .venv/node: see the Makefile), the start
  page's warning before starting with no active client, and the reducer-down state: the pill,
  the live label and the buttons stop claiming a live reducer, and come back when it answers.

The reducer here is the Flask app on a werkzeug server in a thread (no combiner, no client):
what is tested is the reducer's own pages and API, and "reducer down" is that server shut down.
"""
from __future__ import annotations

import io
import re
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from werkzeug.serving import make_server

from conftest import ROOT, free_port
from fedtier.config import Settings
from fedtier.helpers import get_helper
from fedtier.identity import generate_keypair
from fedtier.reducer.app import create_app
from test_ui import DESKTOP, NARROW, PAGES, Console, chromium, shot  # noqa: F401 (fixture)

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
AXE = ROOT / ".venv" / "node" / "node_modules" / "axe-core" / "axe.min.js"
CSS = ROOT / "reducer" / "static" / "app.css"


# ---------------------------------------------------------------- colours
def _luminance(hex_colour: str) -> float:
    """WCAG 2 relative luminance of #rrggbb."""
    channels = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    light, dark = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_contrast_function_matches_known_ratios() -> None:
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)  # the classic just-fails grey


def test_status_pills_and_text_colours_meet_wcag_aa() -> None:
    css = re.sub(r"/\*.*?\*/", "", CSS.read_text(), flags=re.S)
    colours = dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{6})\s*;", css))
    six = lambda c: "#" + "".join(d * 2 for d in c[1:]) if len(c) == 4 else c  # noqa: E731  #fff -> #ffffff
    resolve = lambda value: colours[value[6:-1]] if value.startswith("var(") else six(value)  # noqa: E731
    pairs: dict[str, tuple[str, str]] = {}
    colour = r"(var\(--[\w-]+\)|#[0-9a-fA-F]{6}|#[0-9a-fA-F]{3})\s*;"
    for selectors, body in re.findall(r"([^{}]+)\{([^{}]*)\}", css):
        bg = re.search(r"background:\s*" + colour, body)
        fg = re.search(r"(?<![-\w])color:\s*" + colour, body)
        if bg and fg:
            pairs[selectors.strip()] = (resolve(fg.group(1)), resolve(bg.group(1)))
    pills = [s for s in pairs if ".pill" in s]
    assert len(pills) >= 6 and any("pill-unreachable" in s for s in pills), pills
    assert any(".banner.warn" in s for s in pairs) and any(".top" == s for s in pairs)
    # text on the page's backgrounds, not given as one rule
    for name in ("muted", "ink", "accent", "bad"):
        for ground in ("bg", "panel"):
            pairs[f"--{name} on --{ground}"] = (colours[name], colours[ground])
    pairs["muted on idle-bg"] = (colours["muted"], colours["idle-bg"])
    pairs["header text"] = ("#c9d2e3", "#1c2333")
    low = {s: round(contrast(fg, bg), 2) for s, (fg, bg) in pairs.items() if contrast(fg, bg) < 4.5}
    assert not low, f"below WCAG AA 4.5:1: {low}"


# ---------------------------------------------------------------- a reducer with two failed rounds
def seed_bytes() -> bytes:
    return get_helper("numpy").to_bytes({"w": np.ones(3, np.float32)})


def wait_idle(web, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while web.get("/api/v1/status").get_json()["state"] != "idle":
        assert time.monotonic() < deadline, "the session did not end"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reducer")


@pytest.fixture(scope="module")
def app(data_dir: Path) -> Iterator[object]:
    """Seeded, with a session of two rounds that failed: no client is there."""
    app = create_app(Settings(data_dir=data_dir), helper="numpy", poll_interval_s=None)
    web = app.test_client()
    assert web.post("/seed", data={"seed": (io.BytesIO(seed_bytes()), "seed")},
                    content_type="multipart/form-data").status_code == 201
    started = web.post("/start", json={"rounds": 2, "wait_for_clients": 0.3})
    assert started.status_code == 201
    app.config["test.started"] = started.get_json()
    wait_idle(web)
    yield app
    app.extensions["fedtier"].close()


def test_start_says_when_too_few_clients_are_active(app) -> None:
    warnings = app.config["test.started"].get("warnings")
    assert warnings and "Only 0 clients active now, 1 required" in warnings[0], warnings


def test_failed_rounds_keep_distinct_numbers(app, data_dir: Path) -> None:
    web = app.test_client()
    rounds = web.get("/api/v1/rounds").get_json()
    assert [r["status"] for r in rounds] == ["failed", "failed"]
    assert [r["round"] for r in rounds] == [1, 1]  # neither built a model: the model's number is shared
    assert [r["seq"] for r in rounds] == [1, 2]  # the rounds' own numbers are not
    page = web.get("/", headers=BROWSER).get_data(as_text=True)
    assert ">#1<" in page and ">#2<" in page


def test_round_numbers_go_on_after_a_restart(tmp_path: Path) -> None:
    for restart in range(2):
        app = create_app(Settings(data_dir=tmp_path), helper="numpy", poll_interval_s=None)
        try:
            web = app.test_client()
            if restart == 0:
                web.post("/seed", data={"seed": (io.BytesIO(seed_bytes()), "seed")}, content_type="multipart/form-data")
            assert web.post("/start", json={"rounds": 1, "wait_for_clients": 0.2}).status_code == 201
            wait_idle(web)
        finally:
            app.extensions["fedtier"].close()
    rounds = create_app(Settings(data_dir=tmp_path), helper="numpy", poll_interval_s=None)
    try:
        found = rounds.test_client().get("/api/v1/rounds").get_json()
        assert [(r["round"], r["seq"]) for r in found] == [(1, 1), (1, 2)]
    finally:
        rounds.extensions["fedtier"].close()


def test_pages_are_true_without_javascript(app) -> None:
    web = app.test_client()
    dashboard = web.get("/", headers=BROWSER).get_data(as_text=True)
    assert "No rounds yet" not in dashboard and dashboard.count("data-round-id=") == 2
    assert "only 0 of 1 required clients active" in dashboard  # the failed rounds say why
    trail = web.get("/trail", headers=BROWSER).get_data(as_text=True)
    assert trail.count("data-model=") == 1 and 'class="download"' in trail
    sessions = web.get("/sessions", headers=BROWSER).get_data(as_text=True)
    assert 'data-status="failed"' in sessions and "0 of 2 succeeded" in sessions
    assert "Loading…" not in trail + sessions + web.get("/network", headers=BROWSER).get_data(as_text=True)


def test_every_link_on_every_page_leads_somewhere(app) -> None:
    web = app.test_client()
    seen: set[str] = set()
    for path in [*PAGES.values(), "/plot", "/models", "/login"]:
        html = web.get(path, headers=BROWSER).get_data(as_text=True)
        for href in re.findall(r'href="([^"#][^"]*)"', html):
            href = href.replace("&amp;", "&")
            if href in seen:
                continue
            seen.add(href)
            reply = web.get(href, headers=BROWSER)
            assert reply.status_code < 400, f"{path} links to {href}: {reply.status_code}"
            reply.close()
    assert {"/api/v1/rounds", "/api/v1/combiners", "/api/v1/clients", "/api/v1/sessions"} <= seen


def test_forms_posted_without_javascript_land_on_a_page(app) -> None:
    web = app.test_client()
    posts = [("/start", {"rounds": "0"}, "/start", "rounds: must be an integer"),
             ("/stop", {"mode": "abort"}, "/start", "no session is running"),
             ("/seed", {"seed": (io.BytesIO(seed_bytes()), "seed")}, "/seed", "seed")]
    for path, form, lands, says in posts:
        reply = web.post(path, data=form, headers=BROWSER)
        assert reply.status_code == 303 and reply.headers["Location"] == lands, (path, reply.status_code)
        page = web.get(lands, headers=BROWSER)
        assert page.mimetype == "text/html"
        flash = re.search(r'data-flash="error">([^<]*)<', page.get_data(as_text=True))
        assert flash and says in flash.group(1), (path, flash)
    # the same post from a script or an API client keeps its JSON
    for headers in ({"Accept": "application/json"}, {}):
        reply = web.post("/start", data={"rounds": "0"}, headers=headers)
        assert reply.status_code == 400 and reply.get_json()["field"] == "rounds"
    # a browser that came from the dashboard goes back there
    reply = web.post("/stop", data={"mode": "abort"}, headers={**BROWSER, "Referer": "http://localhost/"})
    assert reply.status_code == 303 and reply.headers["Location"] == "/"


def test_unknown_pages_answer_html_to_browsers_and_json_to_the_api(app) -> None:
    web = app.test_client()
    page = web.get("/no-such-page", headers=BROWSER)
    assert page.status_code == 404 and page.mimetype == "text/html" and b"Page not found" in page.data
    assert b'href="/"' in page.data
    for path, headers in (("/api/v1/no-such", BROWSER), ("/no-such-page", {}),
                          ("/no-such-page", {"Accept": "application/json"})):
        reply = web.get(path, headers=headers)
        assert reply.status_code == 404 and reply.mimetype == "application/json", (path, headers)


def test_login_page_has_a_label_and_the_header_says_who(tmp_path: Path) -> None:
    signing, verify = generate_keypair(tmp_path / "keys")
    admin = "admin-token-for-the-ui-test"
    app = create_app(Settings(data_dir=tmp_path / "data", admin_auth_token=admin, token_signing_key=str(signing),
                              token_verify_key=str(verify)), helper="numpy", poll_interval_s=None)
    try:
        web = app.test_client()
        login = web.get("/login?next=/sessions").get_data(as_text=True)
        field = re.search(r'<input id="([^"]+)" type="password" name="token"', login)
        assert field and f'<label for="{field.group(1)}">Admin token</label>' in login
        assert 'action="/login?next=/sessions"' in login  # a login keeps where it was going
        assert 'id="login-link"' in web.get("/").get_data(as_text=True)  # not logged in: a way to log in
        wrong = web.post("/login", data={"token": "nope"})
        assert wrong.status_code == 401 and b'aria-invalid="true"' in wrong.data
        assert b"not the admin token" in wrong.data
        assert web.post("/login?next=/sessions", data={"token": admin}).headers["Location"] == "/sessions"
        for path in PAGES.values():
            page = web.get(path).get_data(as_text=True)
            assert "Logged in as admin" in page and 'action="/logout"' in page, path
        assert web.post("/logout").status_code == 302
        page = web.get("/").get_data(as_text=True)
        assert "Logged in as admin" not in page and 'id="login-link"' in page
    finally:
        app.extensions["fedtier"].close()


# ---------------------------------------------------------------- in the browser
class Served:
    """The app on a real socket, that can go away and come back on the same port."""

    def __init__(self, app: object) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = None
        self.up()

    def up(self) -> None:
        self.server = make_server("127.0.0.1", self.port, self.app, threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def axe_serious(page) -> list[str]:
    page.add_script_tag(path=str(AXE))
    found = page.evaluate("""async () => (await axe.run(document, {resultTypes: ["violations"]})).violations
        .filter((v) => v.impact === "serious" || v.impact === "critical")
        .map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(" ")).slice(0, 3).join(", ")}`)""")
    return found


def test_ui_pages_fit_pass_axe_warn_and_show_the_reducer_down(chromium, app) -> None:
    served = Served(app)
    console = Console()
    try:
        # ---- every page, desktop and 390 px: no sideways scroll; desktop: no serious axe violation
        audited = AXE.exists()
        for viewport, label in ((DESKTOP, "desktop"), (NARROW, "narrow")):
            context = chromium.new_context(viewport=viewport)
            page = context.new_page()
            console.watch(page)
            for name, path in [*PAGES.items(), ("login", "/login")]:
                page.goto(served.url + path)
                if path not in ("/seed", "/start", "/login"):
                    page.wait_for_selector("body[data-loaded=true]")
                overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
                assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at {viewport['width']}px"
                if audited and label == "desktop":
                    assert not axe_serious(page), f"{path}: {axe_serious(page)}"
                shot(page, f"truth-{name}-{label}")
            context.close()
        console.assert_clean()

        context = chromium.new_context(viewport=DESKTOP)
        context.set_default_timeout(15_000)
        start = context.new_page()
        dashboard = context.new_page()

        # ---- no active client: the start page warns, and the first click only warns
        # (each tab is brought to the front before it is used: a background tab draws no
        # frames, so clicks and waits there took ~2 s each)
        start.bring_to_front()
        start.goto(served.url + "/start")
        start.wait_for_function("!document.querySelector('#start-button').disabled")
        assert "Only 0 clients active now, 1 required" in start.inner_text("#clients-warning")
        sessions_before = len(app.test_client().get("/api/v1/sessions").get_json())
        start.fill("#f-rounds", "1")
        start.click("#start-button")
        start.wait_for_function("document.querySelector('#start-button').textContent === 'Start anyway'")
        assert "Start again to start anyway" in start.inner_text("#clients-warning")
        time.sleep(0.3)
        assert len(app.test_client().get("/api/v1/sessions").get_json()) == sessions_before  # nothing was posted

        # ---- the reducer goes away: nothing keeps claiming an idle, live reducer
        dashboard.bring_to_front()
        dashboard.goto(served.url + "/")
        dashboard.wait_for_selector("body[data-loaded=true]")
        assert dashboard.inner_text("#updated").startswith("live")
        served.down()
        for page in (start, dashboard):
            page.bring_to_front()
            page.wait_for_function("document.querySelector('[data-bind=state]').textContent === 'unreachable'")
            assert re.search(r"not answering since \d\d:\d\d:\d\d", page.inner_text("#offline"))
            assert page.is_visible("#offline")
        assert start.is_disabled("#start-button") and "not answering" in start.inner_text("#start-reason")
        assert dashboard.is_disabled("#stop-after-button") and dashboard.is_disabled("#abort-button")
        assert dashboard.inner_text("#updated").startswith("not live · reducer not answering since")
        colour = "getComputedStyle(document.querySelector('[data-bind=state]')).backgroundColor"
        assert dashboard.evaluate(colour) != "rgb(227, 244, 232)"  # not the idle green
        shot(dashboard, "truth-dashboard-unreachable-desktop")

        # ---- it answers again: the pages say so within a poll or two
        served.up()
        for page in (start, dashboard):
            page.bring_to_front()
            page.wait_for_function("document.querySelector('[data-bind=state]').textContent === 'idle'")
            page.wait_for_selector("#offline", state="hidden")
        start.bring_to_front()
        start.wait_for_function("!document.querySelector('#start-button').disabled")
        assert dashboard.inner_text("#updated").startswith("live")
        context.close()
    finally:
        served.down()
    if not audited:
        pytest.skip(f"axe-core is missing at {AXE} (make venv installs it from npm): the pages were not audited")


def test_network_page_says_why_a_combiner_or_client_is_offline(tmp_path: Path) -> None:
    """A combiner registered at a port where nothing listens (a real socket, refused): the
    network records the address, the error and since when; the page and the API show them;
    its client says its combiner is offline, another client since when its heartbeat is silent."""
    app = create_app(Settings(data_dir=tmp_path), helper="numpy", poll_interval_s=None)
    try:
        reducer = app.extensions["fedtier"]
        port = free_port()  # nothing listens there
        reducer.network.add_combiner("c0", "127.0.0.1", port)
        reducer.state.update("combiners", "c0", {"last_seen": time.time() - 60})  # silent for a minute
        reducer.state.upsert("clients", "a", {"name": "a", "combiner": "c0", "active": True, "last_heartbeat": 1.0})
        reducer.state.upsert("clients", "b", {"name": "b", "combiner": "gone", "active": False,
                                              "last_heartbeat": 1_700_000_000.0})
        before = time.time()
        reducer.network.refresh()
        web = app.test_client()
        combiner = web.get("/api/v1/combiners").get_json()[0]
        assert combiner["online"] is False and combiner["last_error"].startswith("UNAVAILABLE")
        assert before <= combiner["unreachable_since"] <= time.time()
        page = web.get("/network", headers=BROWSER).get_data(as_text=True)
        why = re.findall(r"<div class=\"muted wrap\" data-why>([^<]*)</div>", page)
        assert why[0].startswith(f"unreachable at 127.0.0.1:{port} since ") and "(UNAVAILABLE" in why[0], why
        assert why[1:] == ["its combiner c0 is offline", "heartbeat silent since 2023-11-14 22:13:20 UTC"], why
        since = combiner["unreachable_since"]
        reducer.network.refresh()  # still failing the same way: "since" stays the first failure
        assert web.get("/api/v1/combiners").get_json()[0]["unreachable_since"] == since
    finally:
        app.extensions["fedtier"].close()


# ---------------------------------------------------------------- charts across rounds and sessions
def test_charts_reach_old_rounds_overlay_sessions_log_smooth_and_export(chromium, tmp_path: Path) -> None:
    """Issue 18, across rounds and sessions, on 120 round records written straight into the
    state store (two sessions, 70 and 50 rounds): the latest 50 first with the session's start
    marked; a range older than those; the log scale and the smoothing redraw the loss; an
    overlay of the two sessions; the CSV of a chart is what it draws, and the API's values."""
    import csv

    from test_reducer_api import seed_rounds

    app = create_app(Settings(data_dir=tmp_path), helper="numpy", poll_interval_s=None)
    docs = seed_rounds(app, {"s-a": 70, "s-b": 50})
    served = Served(app)
    console = Console()
    context = chromium.new_context(viewport=DESKTOP, accept_downloads=True)
    context.set_default_timeout(15_000)
    page = context.new_page()
    console.watch(page)
    requested: list[str] = []
    page.on("request", lambda r: "/api/v1/rounds" in r.url and "/rounds/current" not in r.url and requested.append(r.url))
    try:
        page.goto(served.url + "/")
        page.wait_for_selector("#chart-loss circle.pt")
        loss_pts = "#chart-loss circle.pt[data-series=loss]"
        rounds = sorted(int(x) for x in page.eval_on_selector_all(loss_pts, "els => els.map(e => e.dataset.round)"))
        assert rounds == list(range(71, 121))  # the latest 50
        assert page.locator("#chart-accuracy line.boundary[data-session=s-b]").count() == 1  # where s-b starts
        assert "rounds 71–120 of 120" in page.inner_text("#range-summary")
        # polls fetch only new or running rounds: after the first page, one round past the end
        page.wait_for_event("request", lambda r: "/api/v1/rounds?" in r.url, timeout=5_000)  # the next poll
        assert requested[0].endswith("/api/v1/rounds?last=50&view=summary"), requested
        assert all("offset=120" in u for u in requested[1:]), requested

        # a range older than the latest 50, both sessions and their boundary in it
        page.fill("#range-from", "1")
        page.fill("#range-to", "80")
        page.click("#range-form [type=submit]")
        page.wait_for_selector(f"{loss_pts}[data-round='1']")
        assert page.locator(loss_pts).count() == 80 and "from=1&to=80" in page.url
        assert page.locator("#chart-loss line.boundary[data-session=s-b]").count() == 1
        assert page.is_disabled("#range-older") and page.is_enabled("#range-newer")  # round 1 is the oldest

        # the log scale and the smoothing each redraw the loss line
        path = "document.querySelector('#chart-loss path.line').getAttribute('d')"
        linear = page.evaluate(path)
        page.check("#loss-log")
        page.wait_for_function(f"{path} !== {linear!r}")
        logged = page.evaluate(path)
        assert "log scale" in page.inner_text("#chart-loss")
        page.select_option("#loss-smooth", "0.9")
        page.wait_for_function(f"{path} !== {logged!r}")
        with page.expect_download() as info:
            page.click("button[data-csv=loss]")
        rows = list(csv.reader(Path(info.value.path()).read_text().splitlines()))
        assert info.value.suggested_filename == "fedtier-loss-all-sessions-rounds-1-80.csv"
        assert rows[0] == ["round", "loss (log scale)", "loss EMA 0.9 (log scale)"]
        first_80 = app.test_client().get("/api/v1/rounds?offset=0&limit=80").get_json()
        api = {d["seq"]: d["metrics"]["loss"] for d in first_80}
        assert [int(r[0]) for r in rows[1:]] == list(range(1, 81))
        assert [float(r[1]) for r in rows[1:]] == [api[i] for i in range(1, 81)]
        assert float(rows[2][2]) != float(rows[2][1])  # smoothed: not the raw value

        # one session against another, by round within the session; the CSV says which is which
        page.select_option("#view-session", "s-b")
        page.select_option("#view-compare", "s-a")
        page.wait_for_selector("#chart-loss path.line[data-series='B:loss']")
        assert page.locator("#chart-loss path.line[data-series='A:loss']").count() == 1
        assert page.get_attribute("#chart-loss path.line[data-series='B:loss']", "stroke-dasharray")
        shot(page, "charts-compare-desktop")
        if AXE.exists():
            assert not axe_serious(page), axe_serious(page)
        with page.expect_download() as info:
            page.click("button[data-csv=accuracy]")
        rows = list(csv.reader(Path(info.value.path()).read_text().splitlines()))
        assert rows[0] == ["round in session", "A s-b accuracy", "B s-a accuracy"]
        assert [int(r[0]) for r in rows[1:]] == list(range(21, 71))  # the latest 50 places of the longer session
        by_seq = {d["seq"]: d["metrics"]["accuracy"] for d in docs}
        assert [(float(r[1]) if r[1] else None, float(r[2])) for r in rows[1:]] == [
            (by_seq[70 + i] if i <= 50 else None, by_seq[i]) for i in range(21, 71)]
        assert "(the compared session has 70)" in page.inner_text("#range-summary")

        narrow = chromium.new_context(viewport=NARROW)
        phone = narrow.new_page()
        console.watch(phone)
        phone.goto(page.url)
        phone.wait_for_selector("#chart-loss path.line")
        overflow = phone.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"the dashboard scrolls sideways by {overflow}px at {NARROW['width']}px"
        shot(phone, "charts-compare-narrow")
        narrow.close()
        console.assert_clean()
    finally:
        context.close()
        served.down()
        app.extensions["fedtier"].close()
