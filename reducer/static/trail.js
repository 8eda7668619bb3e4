// /trail: every model with its parent, round, metrics, hash and a download link; which one is
// production, and a button to promote another (admin).
import {
  $, ApiError, api, bytes, getJSON, h, live, metricsNode, primeRounds, replace, roundsById, short, showState, table, when,
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

async function refresh() {
  const [models, status] = await Promise.all([getJSON("/api/v1/models"), getJSON("/api/v1/status"), primeRounds()]);
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
  const rows = [...models].sort((a, b) => b.created_at - a.created_at);
  replace($("#trail-summary"), `${models.length} model${models.length === 1 ? "" : "s"}`);
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
