// /trail: every model with its parent, round, metrics, hash and a download link.
import {
  $, bytes, getJSON, h, live, metricsNode, primeRounds, replace, roundsById, short, showState, table, when,
} from "./app.js";

async function refresh() {
  const [models, status] = await Promise.all([getJSON("/api/v1/models"), getJSON("/api/v1/status"), primeRounds()]);
  showState(status.state);
  const rounds = await roundsById(models.filter((m) => m.round_id).map((m) => m.round_id));
  const roundById = new Map(rounds.map((r) => [r.id, r]));
  const head = status.latest_model && status.latest_model.id;
  const rows = [...models].sort((a, b) => b.created_at - a.created_at);
  replace($("#trail-summary"), `${models.length} model${models.length === 1 ? "" : "s"}`);
  const link = (id) => (id ? h("a", { href: `#model-${id}`, class: "id", title: id }, h("code", {}, short(id))) : h("span", { class: "muted" }, "none"));
  replace($("#trail"), table([
    { label: "Model", cell: (m) => [h("code", { class: "id", title: m.id }, short(m.id)), m.id === head ? [" ", h("span", { class: "pill pill-online" }, "latest")] : null] },
    { label: "Kind", cell: (m) => m.kind },
    { label: "Round", class: "num", cell: (m) => m.round },
    { label: "Parent", cell: (m) => link(m.parent_id) },
    { label: "Metrics", cell: (m) => metricsNode((roundById.get(m.round_id) || {}).metrics) },
    { label: "sha256", class: "hash", cell: (m) => h("code", { "data-sha256": m.sha256 }, m.sha256) },
    { label: "Size", class: "num nowrap", cell: (m) => bytes(m.size) },
    { label: "Created", class: "nowrap", cell: (m) => when(m.created_at) },
    { label: "File", cell: (m) => h("a", { href: `/api/v1/models/${encodeURIComponent(m.id)}/download`, download: `${m.id}.safetensors`, class: "download" }, "download") },
  ], rows, {
    empty: "The trail is empty: upload a seed model first.",
    rowAttrs: (m) => ({ id: `model-${m.id}`, "data-model": m.id }),
  }));
  document.body.dataset.loaded = "true";
}

live(refresh, 3000);
