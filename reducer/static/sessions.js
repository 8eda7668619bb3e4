// /sessions: each session's settings and outcome.
import {
  $, getJSON, h, idCode, live, metricsNode, pill, primeRounds, replace, roundsById, seconds, showState, table, when,
} from "./app.js";

const SHOWN = ["clients_required", "clients_requested", "round_timeout", "wait_for_clients", "aggregator", "validate", "helper",
  "weight_cap_median", "weight_cap"];

function settings(config) {
  const chips = SHOWN.filter((k) => k in config).map((k) => h("span", { class: "chip" }, h("b", {}, k), ` ${config[k]}`));
  for (const k of ["aggregation", "task", "aggregator_kwargs"]) {
    if (config[k] && Object.keys(config[k]).length) chips.push(h("span", { class: "chip" }, h("b", {}, k), ` ${JSON.stringify(config[k])}`));
  }
  return h("div", { class: "chips" }, chips);
}

async function refresh() {
  const [sessions, status] = await Promise.all([getJSON("/api/v1/sessions"), getJSON("/api/v1/status"), primeRounds()]);
  showState(status.state);
  const bySession = new Map();
  for (const s of sessions) bySession.set(s.id, await roundsById(s.round_ids || []));
  const rows = [...sessions].sort((a, b) => b.started_at - a.started_at);
  replace($("#sessions-summary"), `${sessions.length} session${sessions.length === 1 ? "" : "s"}`);
  replace($("#sessions"), table([
    { label: "Session", cell: (s) => idCode(s.id) },
    { label: "Outcome", cell: (s) => [pill(s.status),
      s.stop_requested ? h("div", { class: "muted" }, s.stop_requested === "abort" ? "aborted" : "after a round") : null] },
    { label: "Rounds", cell: (s) => [h("span", { class: "nowrap" }, `${s.rounds_succeeded} of ${s.rounds_requested} succeeded`),
      s.rounds_failed ? h("div", { class: "bad-text" }, `${s.rounds_failed} failed`) : null,
      s.rounds_stopped ? h("div", { class: "muted" }, `${s.rounds_stopped} stopped`) : null] },
    { label: "Final metrics", cell: (s) => {
      const good = (bySession.get(s.id) || []).filter((r) => r.status === "success");
      return metricsNode(good.length ? good[good.length - 1].metrics : {});
    } },
    { label: "Settings", cell: (s) => settings(s.config || {}) },
    { label: "Data", class: "nowrap", cell: (s) => [
      h("a", { href: `/?session=${encodeURIComponent(s.id)}`, "data-charts": s.id }, "charts"), " · ",
      h("a", { href: `/api/v1/rounds.csv?session_id=${encodeURIComponent(s.id)}` }, "CSV")] },
    { label: "Started", class: "nowrap", cell: (s) => when(s.started_at) },
    { label: "Duration", class: "nowrap", cell: (s) => (s.finished_at ? seconds(s.finished_at - s.started_at) : "running") },
  ], rows, {
    empty: "No session yet: start one on the Start page.",
    rowAttrs: (s) => ({ "data-session": s.id, "data-status": s.status }),
  }));
  document.body.dataset.loaded = "true";
}

live(refresh, 3000);
