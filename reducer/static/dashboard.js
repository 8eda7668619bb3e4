// The dashboard: /api/v1/status, the sessions and the rounds in the range shown every 2 s, drawn
// into the cards, charts and tables. The charts show every session (with a line where each
// starts), one session, or two overlaid by round within the session; any range of rounds (the
// latest 50 by default), fetched once: a poll asks only for rounds that are new or still running.
// The view lives in the URL (?session=&compare=&from=&to=&log=&smooth=), so it can be linked to.
import {
  $, getJSON, getPage, h, idCode, live, metricKeys, metricsNode, now, num, pill, replace, seconds,
  showState, short, stopControls, table, validationsOf, when,
} from "./app.js";
import { boxPlot, downloadCsv, lineChart, stackedBars } from "./charts.js";
import { liveQuery, renderLive, watchLiveFilter } from "./live.js";

const PALETTE = ["#2f63d6", "#e8590c", "#2b8a3e", "#9c36b5", "#0b7285", "#c2255c", "#5c940d", "#862e9c"];
const PHASES = [
  { key: "wait_clients", label: "Waiting for clients", color: "#a5afbd" },
  { key: "transfer", label: "Transfer", color: "#4c8bf5" },
  { key: "training", label: "Training", color: "#2fa45a" },
  { key: "aggregation", label: "Aggregation", color: "#f0a020" },
  { key: "validation", label: "Validation", color: "#9b59d0" },
  { key: "other", label: "Other", color: "#dde1e7" },
];
const PHASE_OF_STATE = {
  instructing: "waiting for clients, pushing the model",
  monitoring: "combiners training",
};

let chosenMetric = null;

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function colorFor(keys) {
  const map = {};
  keys.forEach((k, i) => { map[k] = PALETTE[i % PALETTE.length]; });
  return map;
}

function renderSession(session, status) {
  const statusEl = $("#session-status");
  const bar = $("#progress");
  if (!session) {
    replace(statusEl, h("span", { class: "muted" }, "none yet"));
    replace($("#session-progress"), status.state === "setup" ? h("a", { href: "/seed" }, "Seed the network")
      : h("a", { href: "/start" }, "Start a session"));
    bar.querySelector("span").style.width = "0";
    return;
  }
  const stopped = session.rounds_stopped || 0;
  const done = session.rounds_succeeded + session.rounds_failed + stopped;
  const requested = session.rounds_requested;
  replace(statusEl, pill(session.status), h("small", {}, idCode(session.id)));
  bar.querySelector("span").style.width = `${Math.min(100, (100 * done) / Math.max(1, requested))}%`;
  bar.setAttribute("aria-valuemax", requested);
  bar.setAttribute("aria-valuenow", done);
  bar.classList.toggle("done", session.status === "succeeded");
  bar.classList.toggle("failed", session.status === "failed" || session.status === "interrupted");
  const took = session.finished_at ? ` · took ${seconds(session.finished_at - session.started_at)}` : "";
  replace($("#session-progress"),
    h("span", { id: "rounds-done" }, `${done} / ${requested} rounds`),
    ` · ${session.rounds_succeeded} succeeded, ${session.rounds_failed} failed`,
    stopped ? `, ${stopped} stopped` : "", took);
}

// A round's own number (distinct, failed rounds too); older records have only the model's.
const roundNo = (r) => (Number.isInteger(r.seq) ? r.seq : r.round);

function renderRound(status, now, current) {
  const last = status.last_round;
  if (!last) {
    replace($("#round-status"), h("span", { class: "muted" }, "none yet"));
    replace($("#round-detail"));
    return;
  }
  if (last.status === "running") {
    const phase = PHASE_OF_STATE[status.state] || status.state;
    replace($("#round-status"), `Round #${roundNo(last)}`, pill("running"));
    const tasks = current.round && current.round.id === last.id && current.total
      ? ` · ${current.counts.reported + current.counts.capped} of ${current.total} clients reported` : "";
    replace($("#round-detail"), `${phase} · ${seconds(now - last.started_at)} so far${tasks}`);
    return;
  }
  replace($("#round-status"), `Round #${roundNo(last)}`, pill(last.status));
  replace($("#round-detail"), last.status === "success"
    ? `took ${seconds(last.timings.total)} · ${plural(last.participants_count ?? (last.participants || []).length, "client")} · finished ${when(last.finished_at)}`
    : last.error || "");
}

function renderModel(rounds, status) {
  const model = status.latest_model;
  const good = [status.last_round, ...rounds].filter((r) => r && r.status === "success" && r.model_out === (model && model.id));
  const metrics = good.length ? good[0].metrics || {} : {};
  const keys = metricKeys([metrics]);
  if (!model) {
    replace($("#model-metrics"), h("span", { class: "muted" }, "not seeded"));
    replace($("#model-detail"), h("a", { href: "/seed" }, "Upload a seed model"));
    return;
  }
  if (keys.length) {
    replace($("#model-metrics"), num(metrics[keys[0]]), h("small", {}, keys[0]));
  } else {
    replace($("#model-metrics"), model.kind === "seed" ? "seed" : `round ${model.round}`);
  }
  const rest = keys.slice(1, 3).map((k) => `${k} ${num(metrics[k])}`).join(" · ");
  replace($("#model-detail"), rest ? `${rest} · ` : "", idCode(model.id),
    model.kind === "seed" ? " (seed)" : ` (round ${model.round})`, " · ", h("a", { href: "/trail" }, "trail"));
  const production = status.production_model;
  replace($("#model-production"), production
    ? [pill("production", "online"), " ", idCode(production.id), ` (round ${production.round}) · promoted ${when(production.promotion.promoted_at)}`]
    : h("span", { class: "muted" }, "no production model yet: promote one on the trail"));
}

function renderNetwork(status) {
  replace($("#network-summary"), `${status.clients_active}`, h("small", {}, `of ${status.clients} clients active`));
  const sub = $("#card-network .kpi-sub");
  replace(sub, `${status.combiners_online} of ${status.combiners} combiners online · `,
    h("a", { href: "/network" }, "details"));
}

const SESSION_DASH = [false, true];  // the compared session's lines are dashed

// Points of one metric: x is the round's place (in all rounds, or in its session), and each
// line series is one metric of one session shown.
function renderCharts(views, validations) {
  const primary = views[0];
  const done = (v) => v.rounds.filter((r) => r.round.status === "success" && r.round.metrics && Object.keys(r.round.metrics).length);
  const keys = metricKeys(views.flatMap((v) => done(v).map((r) => r.round.metrics)));
  const colors = colorFor(keys);
  const compare = views.length > 1;
  const series = (list) => views.flatMap((v, i) => list.map((k) => ({
    key: compare ? `${i ? "B" : "A"}:${k}` : k,
    label: compare ? `${i ? "B" : "A"} ${short(v.session)} ${k}` : k,
    color: i ? PALETTE[(keys.indexOf(k) + keys.length) % PALETTE.length] : colors[k], dash: SESSION_DASH[i],
    points: done(v).filter((r) => typeof r.round.metrics[k] === "number")
      .map((r) => ({ x: r.x, y: r.round.metrics[k], note: ` (#${roundNo(r.round)})` })),
  })));
  const acc = keys.filter((k) => /acc/i.test(k));
  const loss = keys.filter((k) => /loss/i.test(k));
  const other = keys.filter((k) => !acc.includes(k) && !loss.includes(k));
  const none = views.some((v) => done(v).length) ? "The project reports no such metric." : "No validated rounds in this range.";
  const common = { marks: view.session ? [] : sessionMarks(primary.rounds), domain: [view.from, view.to],
    xTitle: view.session ? "round in session" : "round" };
  lineChart($("#chart-accuracy"), { title: "Global accuracy per round", series: series(acc), emptyText: none, ...common });
  lineChart($("#chart-loss"), { title: "Global loss per round", series: series(loss), emptyText: none, ...common,
    log: view.log, smooth: view.smooth });
  $("#panel-other").hidden = !other.length;
  if (other.length) lineChart($("#chart-other"), { title: "Other metrics per round", series: series(other), ...common });

  $("#phases-scope").textContent = compare ? `seconds · session A (${short(primary.session)})` : "seconds";
  const finished = primary.rounds.filter((r) => r.round.status !== "running" && r.round.timings && r.round.timings.total);
  stackedBars($("#chart-phases"), {
    title: "Round time by phase",
    parts: PHASES,
    bars: finished.map(({ round: r, x }) => {
      const parts = {};
      let known = 0;
      for (const p of PHASES) {
        if (p.key !== "other" && r.timings[p.key]) { parts[p.key] = r.timings[p.key]; known += r.timings[p.key]; }
      }
      if (r.timings.total - known > 0.001) parts.other = r.timings.total - known;
      return { label: view.session ? String(x) : `#${roundNo(r)}`, note: r.status === "success" ? "" : ` (${r.status})`,
        parts, session: r.session_id, status: r.status };
    }),
  });

  const clientKeys = metricKeys(validations.map((v) => v.metrics));
  const select = $("#client-metric");
  if (!clientKeys.includes(chosenMetric)) chosenMetric = clientKeys.includes("accuracy") ? "accuracy" : clientKeys[0] || null;
  if (select.dataset.keys !== clientKeys.join(",")) {
    select.dataset.keys = clientKeys.join(",");
    replace(select, clientKeys.map((k) => h("option", { value: k, selected: k === chosenMetric }, k)));
  }
  select.disabled = !clientKeys.length;
  const byRound = new Map();
  for (const { round: r, x } of primary.rounds) {
    byRound.set(r.id, { label: view.session ? x : `#${roundNo(r)}`, session: r.session_id, values: [] });
  }
  for (const v of validations) {
    const value = v.metrics && v.metrics[chosenMetric];
    if (typeof value === "number" && Number.isFinite(value) && byRound.has(v.round_id)) {
      byRound.get(v.round_id).values.push({ v: value, label: v.client });
    }
  }
  const groups = [...byRound.values()].filter((g) => g.values.length);
  groups.forEach((g) => g.values.sort((a, b) => a.label.localeCompare(b.label)));
  boxPlot($("#chart-clients"), { title: `Per-client ${chosenMetric} per round`, metric: chosenMetric || "", groups });
}

// Where a session starts among the rounds shown (all sessions): its first round's x.
function sessionMarks(rounds) {
  const marks = [];
  rounds.forEach(({ round: r, x }, i) => {
    const before = i ? rounds[i - 1].round.session_id : null;
    if (r.session_id && r.session_id !== before && (i || x === 1 || firstOfSession.has(r.id))) {
      marks.push({ x, label: short(r.session_id), session: r.session_id });
    }
  });
  return marks;
}

function renderClientTable(rounds, validations) {
  const lastRound = [...rounds].reverse().find((r) => validations.some((v) => v.round_id === r.id));
  if (!lastRound) {
    replace($("#clients-round"));
    replace($("#client-table"), h("p", { class: "empty" }, "No validation yet."));
    return;
  }
  const rows = validations.filter((v) => v.round_id === lastRound.id).sort((a, b) => a.client.localeCompare(b.client));
  const keys = metricKeys(rows.map((v) => v.metrics));
  replace($("#clients-round"), `round ${lastRound.round}`);
  replace($("#client-table"), table([
    { label: "Client", cell: (v) => v.client },
    { label: "Combiner", cell: (v) => v.combiner },
    { label: "Examples", class: "num", cell: (v) => num(v.num_examples) },
    ...keys.map((k) => ({ label: k, class: "num", cell: (v) => num(v.metrics[k]) })),
  ], rows));
}

function renderRoundTable(rounds, now, current) {
  const rows = [...rounds].reverse();
  replace($("#round-table"), table([
    { label: "Round", class: "num", cell: (r) => h("a", { "data-seq": roundNo(r), href: `/rounds/${encodeURIComponent(r.id)}`,
      title: "the round's timeline" }, `#${roundNo(r)}`) },
    { label: "Model round", class: "num", cell: (r) => (r.status === "success" ? r.round : h("span", { class: "muted" }, "–")) },
    { label: "Status", cell: (r) => [pill(r.status), r.error ? h("div", { class: "muted wrap" }, r.error) : null] },
    { label: "Metrics", cell: (r) => metricsNode(r.metrics) },
    { label: "Time", class: "num nowrap", cell: (r) => (r.status === "running" ? `${seconds(now - r.started_at)}…` : seconds(r.timings.total)) },
    { label: "Clients", class: "num", cell: (r) => (r.status === "running" && current.round && current.round.id === r.id
      ? current.total : r.participants_count ?? (r.participants || []).length) },
    { label: "Model", cell: (r) => idCode(r.model_out) },
    { label: "Started", class: "nowrap", cell: (r) => when(r.started_at) },
  ], rows, { empty: "No rounds yet.", rowAttrs: (r) => ({ "data-round-id": r.id }) }));
}

const ROUNDS_DRAWN = 50;   // the range shown at first: the latest rounds
const ROUNDS_MAX = 1000;  // the widest range: what one request to /api/v1/rounds returns at most
const ROUNDS_TABLED = 50; // the table lists the newest rounds of the range
const ROUNDS_BOXED = 25;  // the per-client box plot, fewer: a box needs room
const SMOOTHING = [0, 0.5, 0.8, 0.9, 0.95];

// What the charts show; `latest` follows the newest rounds, else from..to (1-based, inclusive).
const view = { session: "", compare: "", latest: true, size: ROUNDS_DRAWN, from: 1, to: ROUNDS_DRAWN, log: false, smooth: 0 };
let firstOfSession = new Set();

function readURL() {
  const q = new URLSearchParams(location.search);
  const int = (k) => (/^\d{1,9}$/.test(q.get(k) || "") ? Number(q.get(k)) : null);
  view.session = q.get("session") || "";
  view.compare = view.session ? q.get("compare") || "" : "";
  const from = int("from");
  const to = int("to");
  if (from && to && to >= from) Object.assign(view, { latest: false, from, to: Math.min(to, from + ROUNDS_MAX - 1) });
  view.size = view.latest ? ROUNDS_DRAWN : view.to - view.from + 1;
  view.log = q.get("log") === "1";
  const smooth = Number(q.get("smooth"));
  view.smooth = SMOOTHING.includes(smooth) ? smooth : 0;
}

function writeURL() {
  const q = new URLSearchParams();
  if (view.session) q.set("session", view.session);
  if (view.compare) q.set("compare", view.compare);
  if (!view.latest) { q.set("from", view.from); q.set("to", view.to); }
  if (view.log) q.set("log", "1");
  if (view.smooth) q.set("smooth", view.smooth);
  const text = q.toString();
  history.replaceState(null, "", text ? `?${text}` : location.pathname);
}

// ---- rounds by place: one cache per filter ("" = all rounds, else a session id)

const caches = new Map();  // filter -> {total, rounds: [] (index = place - 1)}
const settled = (r) => r && r.status !== "running";

function cacheOf(filter) {
  if (!caches.has(filter)) caches.set(filter, { total: null, rounds: [] });
  return caches.get(filter);
}

async function fetchInto(cache, filter, params) {
  const q = new URLSearchParams(params);
  if (filter) q.set("session_id", filter);
  q.set("view", "summary");  // no per-client lists: the same size at ten clients or a thousand
  const page = await getPage(`/api/v1/rounds?${q}`);
  page.items.forEach((r, i) => { cache.rounds[page.offset + i] = r; });
  cache.total = page.total;
}

// The rounds at places start..end-1 of `filter`, fetching only what is missing or still
// running: following the latest (end = null), everything from the first such place on (new
// rounds included); for a fixed range, that span only (or one round past it, to learn whether
// there are newer ones, when `probe`).
async function fill(filter, start, end, probe = true) {
  const cache = cacheOf(filter);
  const stop = end === null ? cache.total : end;
  let a = start;
  while (a < stop && settled(cache.rounds[a])) a += 1;
  let b = stop;
  while (b > a && settled(cache.rounds[b - 1])) b -= 1;
  if (end === null) await fetchInto(cache, filter, { offset: a < b ? a : stop });
  else if (a < b) await fetchInto(cache, filter, { offset: a, limit: b - a });
  else if (probe) await fetchInto(cache, filter, { offset: stop, limit: 1 });
  return cache;
}

async function latestOf(filter) {
  const cache = cacheOf(filter);
  if (cache.total === null) await fetchInto(cache, filter, { last: view.size });
  else await fill(filter, Math.max(0, cache.total - view.size), null);
  return cache;
}

// Fetch what the view needs; returns per session shown {session, total, rounds: [{round, x}]}.
// A compared session is read over the same places (round n of one against round n of the
// other); following the latest, the range ends at the longer session's newest round.
async function load() {
  const filters = [view.session, ...(view.compare ? [view.compare] : [])];
  let shown;
  if (view.latest) {
    shown = await Promise.all(filters.map(latestOf));
    const total = Math.max(0, ...shown.map((c) => c.total || 0));
    view.to = Math.max(total, 1);
    view.from = Math.max(1, total - view.size + 1);
    await Promise.all(filters.map((f, i) => fill(f, view.from - 1, Math.min(view.to, shown[i].total || 0), false)));
  } else {
    shown = await Promise.all(filters.map((f) => fill(f, view.from - 1, view.to)));
  }
  return filters.map((session, i) => ({
    session,
    total: shown[i].total || 0,
    rounds: shown[i].rounds.slice(view.from - 1, view.to).map((round, j) => ({ round, x: view.from + j })).filter((r) => r.round),
  }));
}

// ---- the controls

function sessionLabel(s) {
  return `${short(s.id)} · ${when(s.started_at).slice(0, 16)} · ${s.status} · ${(s.round_ids || []).length} rounds`;
}

function renderControls(sessions, views) {
  const sorted = [...sessions].sort((a, b) => b.started_at - a.started_at);
  const key = sorted.map((s) => `${s.id}:${s.status}:${(s.round_ids || []).length}`).join(",") + `|${view.session}|${view.compare}`;
  const pick = $("#view-session");
  const other = $("#view-compare");
  if (pick.dataset.key !== key) {
    pick.dataset.key = key;
    replace(pick, h("option", { value: "", selected: !view.session }, "All sessions"),
      sorted.map((s) => h("option", { value: s.id, selected: s.id === view.session }, sessionLabel(s))));
    replace(other, h("option", { value: "", selected: !view.compare }, "none"),
      sorted.filter((s) => s.id !== view.session).map((s) => h("option", { value: s.id, selected: s.id === view.compare }, sessionLabel(s))));
  }
  other.disabled = !view.session;
  const total = views[0].total;
  if (document.activeElement !== $("#range-from") && document.activeElement !== $("#range-to")) {
    $("#range-from").value = view.from;
    $("#range-to").value = view.to;
  }
  replace($("#range-summary"), total
    ? `${view.session ? "rounds in session" : "rounds"} ${Math.min(view.from, total)}–${Math.min(view.to, total)} of ${total}`
      + `${views[1] ? ` (the compared session has ${views[1].total})` : ""}${view.latest ? " · following the latest" : ""}`
    : "no rounds yet");
  $("#range-older").disabled = view.from <= 1;
  $("#range-newer").disabled = view.latest;
  $("#range-latest").disabled = view.latest;
  $("#loss-log").checked = view.log;
  $("#loss-smooth").value = String(view.smooth);
  const csv = new URLSearchParams({ offset: view.from - 1, limit: Math.max(1, view.to - view.from + 1) });
  if (view.session) csv.set("session_id", view.session);
  $("#rounds-csv").href = `/api/v1/rounds.csv?${csv}`;
}

function setRange(from, to, total) {
  const size = Math.max(1, Math.min(ROUNDS_MAX, to - from + 1));
  from = Math.max(1, from);
  to = from + size - 1;
  if (total !== null && to >= total) {
    Object.assign(view, { latest: true, size });
  } else {
    Object.assign(view, { latest: false, size, from, to });
  }
  writeURL();
  tick();
}

function totalShown() {
  const known = [view.session, ...(view.compare ? [view.compare] : [])].map((f) => caches.get(f)).filter((c) => c && c.total !== null);
  return known.length ? Math.max(...known.map((c) => c.total)) : null;
}

function wireControls() {
  $("#view-controls").hidden = false;  // without JavaScript they could do nothing
  $("#view-session").addEventListener("change", (e) => {
    view.session = e.target.value;
    if (view.compare === view.session || !view.session) view.compare = "";
    Object.assign(view, { latest: true, size: ROUNDS_DRAWN });
    writeURL();
    tick();
  });
  $("#view-compare").addEventListener("change", (e) => { view.compare = e.target.value; writeURL(); tick(); });
  $("#range-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const from = Number($("#range-from").value);
    const to = Number($("#range-to").value);
    if (!(Number.isInteger(from) && Number.isInteger(to) && from >= 1 && to >= from)) {
      $("#range-error").textContent = "From and to are round numbers, from 1, with to not below from.";
      $("#range-error").hidden = false;
      return;
    }
    $("#range-error").hidden = true;
    setRange(from, to, totalShown());
  });
  const width = () => view.to - view.from + 1;
  $("#range-older").addEventListener("click", () => setRange(view.from - width(), view.from - 1, totalShown()));
  $("#range-newer").addEventListener("click", () => setRange(view.to + 1, view.to + width(), totalShown()));
  $("#range-in").addEventListener("click", () => setRange(view.to - Math.max(1, Math.floor(width() / 2)) + 1, view.to, totalShown()));
  $("#range-out").addEventListener("click", () => {
    const w = Math.min(ROUNDS_MAX, width() * 2);
    setRange(Math.max(1, view.to - w + 1), Math.max(view.to, w), totalShown());
  });
  $("#range-latest").addEventListener("click", () => { Object.assign(view, { latest: true, size: width() }); writeURL(); tick(); });
  $("#loss-log").addEventListener("change", (e) => { view.log = e.target.checked; writeURL(); tick(); });
  $("#loss-smooth").addEventListener("change", (e) => { view.smooth = Number(e.target.value); writeURL(); tick(); });
  for (const button of document.querySelectorAll("button[data-csv]")) {
    button.addEventListener("click", () => {
      const chart = button.dataset.csv;
      const who = view.session ? `session-${short(view.session)}${view.compare ? `-vs-${short(view.compare)}` : ""}` : "all-sessions";
      downloadCsv($(`#chart-${chart}`), `fedtier-${chart}-${who}-rounds-${view.from}-${view.to}`);
    });
  }
}

async function refresh() {
  const [status, sessions, current] = await Promise.all([getJSON("/api/v1/status"), getJSON("/api/v1/sessions"),
    getJSON(liveQuery())]);
  firstOfSession = new Set(sessions.map((s) => (s.round_ids || [])[0]).filter(Boolean));
  const known = (id) => sessions.some((s) => s.id === id);
  if (view.session && !known(view.session)) Object.assign(view, { session: "", compare: "" });
  if (view.compare && (!known(view.compare) || view.compare === view.session)) view.compare = "";
  const views = await load();
  const rounds = views[0].rounds.map((r) => r.round);
  const validations = await validationsOf(rounds.slice(-ROUNDS_BOXED));
  const session = status.session || [...sessions].sort((a, b) => a.started_at - b.started_at).pop() || null;
  const t = now();
  showState(status.state);
  syncStop(status.state);
  renderSession(session, status);
  renderRound(status, t, current);
  renderLive(current, () => tick());
  renderModel([...rounds].reverse(), status);
  renderNetwork(status);
  renderControls(sessions, views);
  renderCharts(views, validations);
  renderClientTable(rounds, validations);
  renderRoundTable(rounds.slice(-ROUNDS_TABLED), t, current);
  $("#updated").textContent = `live · updated ${when(t).slice(11)}`;
  document.body.dataset.loaded = "true";
}

readURL();
const syncStop = stopControls(() => tick());
wireControls();
const tick = live(refresh, 2000);
watchLiveFilter(() => tick());
$("#client-metric").addEventListener("change", (event) => {
  chosenMetric = event.target.value;
  tick();
});
