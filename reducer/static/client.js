// /clients/<name>: the client's part in each round (newest first), its state, and charts of its
// own train metrics (local) against its validation of each round's global model. The page polls
// for rounds newer than the newest it holds (`after`), never the whole history.
import { $, ago, getJSON, h, live, metricKeys, metricsNode, now, num, pill, replace, showState, table } from "./app.js";
import { lineChart } from "./charts.js";

const CHART_ROUNDS = 100;  // rounds the charts show
const TABLE_ROUNDS = 50;   // rounds the table shows (routes/pages.py renders as many)
const name = $("#client-info").dataset.client;
const older = new URLSearchParams(location.search).has("before");  // an older page: a fixed table
const base = `/api/v1/clients/${encodeURIComponent(name)}/history`;
let records = [];  // newest first
let loaded = false;

const COLORS = ["#3b6fd8", "#d8563b", "#2f9e6e", "#8a55c9", "#c9a227", "#4aa3b8"];

function outcome(r) {
  const kind = { reported: "success", failed: "failed" }[r.outcome] || "idle";
  return [pill(r.outcome, kind), r.capped ? [" ", h("span", { class: "pill pill-stopped", "data-capped": "" }, "capped")] : null,
    r.error ? h("div", { class: "muted wrap" }, r.error) : null];
}

function drawCharts() {
  const rounds = records.slice(0, CHART_ROUNDS).reverse();  // oldest first: the legend shows the newest value
  const local = metricKeys(rounds.map((r) => r.train_metrics));
  const global = metricKeys(rounds.map((r) => r.validation));
  for (const [el, pattern, what] of [[$("#client-loss"), /loss/i, "loss"], [$("#client-accuracy"), /acc/i, "accuracy"]]) {
    const keys = [...local.filter((k) => pattern.test(k)).map((k) => ["train_metrics", k, `local ${k}`]),
      ...global.filter((k) => pattern.test(k)).map((k) => ["validation", k, `global ${k}`])];
    lineChart(el, {
      title: `${what} per round, local and global`,
      series: keys.map(([field, k, label], i) => ({
        key: `${field}.${k}`, label, color: COLORS[i % COLORS.length],
        points: rounds.filter((r) => r[field] && typeof r[field][k] === "number").map((r) => ({ x: r.seq, y: r[field][k] })),
      })),
      emptyText: rounds.length ? `This client reported no ${what} metric.` : "No round has included this client yet.",
    });
  }
}

function drawInfo(info) {
  const dd = $("#client-info");
  if (!info) { replace(dd, h("p", { class: "muted" }, "No longer assigned to a combiner; its history is below.")); return; }
  const [word, kind] = info.active === true ? ["online", "online"] : info.active === false ? ["offline", "offline"] : ["connecting", "waiting"];
  const t = now();
  replace(dd, h("dl", { class: "kv" },
    h("dt", {}, "Status"), h("dd", {}, h("span", { class: `pill pill-${kind}`, "data-bind": "client-state" }, word),
      info.why ? [" ", h("span", { class: "muted", "data-why": "" }, info.why)] : null),
    h("dt", {}, "Combiner"), h("dd", {}, info.combiner || "–"),
    h("dt", {}, "Last heartbeat"), h("dd", {}, ago(info.last_heartbeat, t)),
    h("dt", {}, "Rounds joined"), h("dd", {}, num(info.rounds_joined || 0))));
}

function drawTable() {
  replace($("#history"), table([
    { label: "Round", class: "num", cell: (r) => [`#${r.seq} `, h("span", { class: "muted" }, `(model ${r.round}, ${r.round_status})`)] },
    { label: "Outcome", cell: outcome },
    { label: "Examples (used)", class: "num", cell: (r) => (r.num_examples === null ? "–" : `${r.num_examples} (${r.weight_used})`) },
    { label: "Local (train)", cell: (r) => metricsNode(r.train_metrics) },
    { label: "Global model (its validation)", cell: (r) => metricsNode(r.validation) },
    { label: "Combiner", cell: (r) => r.combiner },
  ], records.slice(0, TABLE_ROUNDS), {
    empty: "No round has included this client yet.",
    rowAttrs: (r) => ({ "data-seq": r.seq, "data-outcome": r.outcome }),
  }));
}

async function refresh() {
  const [status, reply] = await Promise.all([getJSON("/api/v1/status?brief=true"), getJSON(loaded && records.length
    ? `${base}?after=${records[0].seq}&limit=${CHART_ROUNDS}` : `${base}?limit=${CHART_ROUNDS}`)]);
  showState(status.state);
  drawInfo(reply.info);
  const fresh = reply.records.length;
  records = loaded ? [...reply.records, ...records].slice(0, CHART_ROUNDS) : reply.records;
  if (!loaded || fresh) {
    drawCharts();
    if (!older) drawTable();
    replace($("#history-count"), `${records.length} newest round${records.length === 1 ? "" : "s"} charted`);
  }
  loaded = true;
  document.body.dataset.loaded = "true";
}

live(refresh, 3000);
