// /trail: every model with its parent, round, metrics, hash and a download link; which one is
// production, and a button to promote another (admin).
import {
  $, ApiError, api, bytes, getJSON, getPage, h, live, metricsNode, primeRounds, replace, roundsById, short, showState, table, when,
} from "./app.js";

let refreshNow = () => {};

async function promote(model) {
  const box = $("#promote-error");
  box.hidden = true;
  try {
    await api("POST", `/api/v1/models/${encodeURIComponent(model.id)}/promote`, {});
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    replace(box, err.message, err.status === 401
      ? [" ", h("a", { href: `/login?next=${encodeURIComponent(location.pathname)}` }, "Log in")] : "");
    box.hidden = false;
  }
  refreshNow();
}

const SHOWN = 100;  // the newest models listed (routes/pages.py renders as many)
let models = [];   // newest first
let total = 0;     // models in the whole trail

// The newest page once, then on each poll only the models committed since the newest held: the
// status says which is the latest, so a poll with nothing new fetches no model at all.
let fetched = false;

async function newModels(latest) {
  const head = models.length ? models[0].id : null;
  if (fetched && (latest ? latest.id : null) === head) return;
  const page = await getPage(head
    ? `/api/v1/models?descending=true&limit=${SHOWN}&after=${encodeURIComponent(head)}`
    : `/api/v1/models?descending=true&limit=${SHOWN}`);
  // a full page: the one held is more than a page behind, and the page is the newest
  models = !head || page.items.length >= SHOWN ? page.items : [...page.items, ...models].slice(0, SHOWN);
  total = page.total;
  fetched = true;
}

async function refresh() {
  const [status] = await Promise.all([getJSON("/api/v1/status?brief=true"), primeRounds()]);
  await newModels(status.latest_model);
  showState(status.state);
  const rounds = await roundsById(models.filter((m) => m.round_id).map((m) => m.round_id));
  const roundById = new Map(rounds.map((r) => [r.id, r]));
  const head = status.latest_model && status.latest_model.id;
  const production = status.production_model;
  replace($("#production-line"), production
    ? ["Production: ", h("code", { class: "id", title: production.id }, short(production.id)),
      ` (round ${production.round}), promoted ${when(production.promotion.promoted_at)} by ${production.promotion.promoted_by}`,
      production.promotion.note ? ` · ${production.promotion.note}` : "", " · ",
      h("a", { href: "/api/v1/models/production/download" }, "download")]
    : "No model is production yet: promote one below.");
  const rows = models;
  replace($("#trail-summary"), `${total} model${total === 1 ? "" : "s"}${total > rows.length ? `, the newest ${rows.length} listed` : ""}`);
  const link = (id) => (id ? h("a", { href: `#model-${id}`, class: "id", title: id }, h("code", {}, short(id))) : h("span", { class: "muted" }, "none"));
  replace($("#trail"), table([
    { label: "Model", cell: (m) => [h("code", { class: "id", title: m.id }, short(m.id)), m.id === head ? [" ", h("span", { class: "pill pill-online" }, "latest")] : null,
      production && m.id === production.id ? [" ", h("span", { class: "pill pill-production", "data-production": "true" }, "production")] : null] },
    { label: "Kind", cell: (m) => m.kind },
    { label: "Round", class: "num", cell: (m) => (m.round_id
      ? h("a", { href: `/rounds/${encodeURIComponent(m.round_id)}`, title: "the round's timeline" }, m.round) : m.round) },
    { label: "Parent", cell: (m) => link(m.parent_id) },
    { label: "Metrics", cell: (m) => metricsNode((roundById.get(m.round_id) || {}).metrics) },
    { label: "sha256", class: "hash", cell: (m) => h("code", { "data-sha256": m.sha256 }, m.sha256) },
    { label: "Size", class: "num nowrap", cell: (m) => bytes(m.size) },
    { label: "Created", class: "nowrap", cell: (m) => when(m.created_at) },
    { label: "File", cell: (m) => h("a", { href: `/api/v1/models/${encodeURIComponent(m.id)}/download`, download: `${m.id}.safetensors`, class: "download" }, "download") },
    { label: "Production", cell: (m) => (production && m.id === production.id ? h("span", { class: "muted" }, "current")
      : h("button", { type: "button", class: "secondary promote", onclick: () => promote(m) }, "Promote")) },
  ], rows, {
    empty: "The trail is empty: upload a seed model first.",
    rowAttrs: (m) => ({ id: `model-${m.id}`, "data-model": m.id }),
  }));
  document.body.dataset.loaded = "true";
}

refreshNow = live(refresh, 3000);
