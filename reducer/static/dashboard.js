// The dashboard: /api/v1/status, the sessions and their rounds every 2 s, drawn into the cards, charts and tables.
import {
  $, getJSON, h, idCode, live, metricKeys, metricsNode, now, num, pill, replace, roundIds, roundsById, seconds,
  showState, stopControls, table, validationsOf, when,
} from "./app.js";
import { boxPlot, lineChart, stackedBars } from "./charts.js";
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

function renderRound(rounds, status, now, current) {
  const last = rounds[rounds.length - 1];
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
    ? `took ${seconds(last.timings.total)} · ${plural((last.participants || []).length, "client")} · finished ${when(last.finished_at)}`
    : last.error || "");
}

function renderModel(rounds, status) {
  const model = status.latest_model;
  const good = rounds.filter((r) => r.status === "success" && r.model_out === (model && model.id));
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

function renderCharts(rounds, validations) {
  const done = rounds.filter((r) => r.status === "success" && r.metrics && Object.keys(r.metrics).length);
  const keys = metricKeys(done.map((r) => r.metrics));
  const colors = colorFor(keys);
  const series = (list) => list.map((k) => ({
    key: k, label: k, color: colors[k],
    points: done.filter((r) => typeof r.metrics[k] === "number").map((r) => ({ x: r.round, y: r.metrics[k] })),
  }));
  const acc = keys.filter((k) => /acc/i.test(k));
  const loss = keys.filter((k) => /loss/i.test(k));
  const other = keys.filter((k) => !acc.includes(k) && !loss.includes(k));
  const none = done.length ? "The project reports no such metric." : "No validated rounds yet.";
  lineChart($("#chart-accuracy"), { title: "Global accuracy per round", series: series(acc), emptyText: none });
  lineChart($("#chart-loss"), { title: "Global loss per round", series: series(loss), emptyText: none });
  $("#panel-other").hidden = !other.length;
  if (other.length) lineChart($("#chart-other"), { title: "Other metrics per round", series: series(other) });

  const finished = rounds.filter((r) => r.status !== "running" && r.timings && r.timings.total);
  stackedBars($("#chart-phases"), {
    title: "Round time by phase",
    parts: PHASES,
    bars: finished.map((r) => {
      const parts = {};
      let known = 0;
      for (const p of PHASES) {
        if (p.key !== "other" && r.timings[p.key]) { parts[p.key] = r.timings[p.key]; known += r.timings[p.key]; }
      }
      if (r.timings.total - known > 0.001) parts.other = r.timings.total - known;
      return { label: `#${roundNo(r)}`, note: r.status === "success" ? "" : ` (${r.status})`, parts };
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
  for (const r of rounds) byRound.set(r.id, { label: r.round, values: [] });
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
      ? current.total : (r.participants || []).length) },
    { label: "Model", cell: (r) => idCode(r.model_out) },
    { label: "Started", class: "nowrap", cell: (r) => when(r.started_at) },
  ], rows, { empty: "No rounds yet.", rowAttrs: (r) => ({ "data-round-id": r.id }) }));
}

const ROUNDS_DRAWN = 50;   // the charts and the table show the latest rounds
const ROUNDS_BOXED = 25;   // the per-client box plot, fewer: a box needs room

async function refresh() {
  const [status, sessions, current] = await Promise.all([getJSON("/api/v1/status"), getJSON("/api/v1/sessions"),
    getJSON(liveQuery())]);
  const ids = roundIds(sessions).slice(-ROUNDS_DRAWN);
  const rounds = await roundsById(ids);
  const last = status.last_round;
  if (last && !ids.includes(last.id)) rounds.push(last);  // running, or just finished
  const validations = await validationsOf(rounds.slice(-ROUNDS_BOXED));
  const session = status.session || [...sessions].sort((a, b) => a.started_at - b.started_at).pop() || null;
  const t = now();
  showState(status.state);
  syncStop(status.state);
  renderSession(session, status);
  renderRound(rounds, status, t, current);
  renderLive(current, () => tick());
  renderModel([...rounds].reverse(), status);
  renderNetwork(status);
  renderCharts(rounds, validations);
  renderClientTable(rounds, validations);
  renderRoundTable(rounds, t, current);
  $("#updated").textContent = `live · updated ${when(t).slice(11)}`;
  document.body.dataset.loaded = "true";
}

const syncStop = stopControls(() => tick());
const tick = live(refresh, 2000);
watchLiveFilter(() => tick());
$("#client-metric").addEventListener("change", (event) => {
  chosenMetric = event.target.value;
  tick();
});
