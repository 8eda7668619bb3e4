// /network: combiners with their clients counted by state, and one page of clients (the search in
// the page's address: q, state, combiner, offset); every 2 s. At a thousand clients a poll moves
// the counts and one page, never the whole list (routes/pages.py CLIENTS_PAGE).
import { $, ago, getPage, getJSON, h, live, now, num, pill, replace, showState, table } from "./app.js";

const PAGE = 50;
const params = new URLSearchParams(location.search);
const query = {};
for (const key of ["q", "state", "combiner"]) if (params.get(key)) query[key] = params.get(key);
const offset = Math.max(0, Number.parseInt(params.get("offset") || "0", 10) || 0);
const limit = Math.min(100, Math.max(1, Number.parseInt(params.get("limit") || String(PAGE), 10) || PAGE));

function clientState(c) {
  if (c.active === true) return ["online", "online"];
  if (c.active === false) return ["offline", "offline"];
  return ["connecting", "waiting"];  // assigned a combiner, not yet seen on it
}

// why a combiner or client is not online: the reducer writes it (reducer/network.py)
const why = (text) => (text ? h("div", { class: "muted wrap", "data-why": "" }, text) : null);
const pageHref = (to) => `/network?${new URLSearchParams({ ...query, offset: String(to), limit: String(limit) })}`;

async function refresh() {
  const search = new URLSearchParams({ ...query, offset: String(offset), limit: String(limit) });
  const [combinerList, summary, page, status] = await Promise.all([
    getJSON("/api/v1/combiners"), getJSON("/api/v1/clients/summary"), getPage(`/api/v1/clients?${search}`),
    getJSON("/api/v1/status?brief=true")]);
  showState(status.state);
  const t = now();
  const combiners = [...combinerList].sort((a, b) => a.name.localeCompare(b.name));
  const online = combiners.filter((c) => c.online).length;
  replace($("#combiners-count"), `${online} of ${combiners.length} online`);
  replace($("#clients-count"), `${summary.total} in all: `, h("a", { href: "/network?state=active" }, `${summary.active} active`),
    " · ", h("a", { href: "/network?state=inactive" }, `${summary.inactive} inactive`));
  replace($("#network-summary"), `${online}/${combiners.length} combiners · ${summary.active}/${summary.total} clients online`);

  const counts = (c) => summary.by_combiner[c.name] || { active: 0, inactive: 0 };
  replace($("#combiners"), table([
    { label: "Name", cell: (c) => h("a", { href: `/network?${new URLSearchParams({ combiner: c.name })}` }, h("strong", {}, c.name)) },
    { label: "Address", cell: (c) => h("code", {}, `${c.address}:${c.port}`) },
    { label: "Status", cell: (c) => [c.online ? pill("online") : pill("offline"), why(c.why)] },
    { label: "Clients active", class: "num", cell: (c) => num(counts(c).active) },
    { label: "Inactive", class: "num", cell: (c) => num(counts(c).inactive) },
    { label: "Round", cell: (c) => (c.round_in_progress ? pill("running") : h("span", { class: "muted" }, "idle")) },
    { label: "Last seen", cell: (c) => ago(c.last_seen, t) },
  ], combiners, {
    empty: "No combiner has announced itself yet (fedtier combiner --reducer URL).",
    rowAttrs: (c) => ({ "data-combiner": c.name, "data-online": String(Boolean(c.online)) }),
  }));

  replace($("#clients"), table([
    { label: "Name", cell: (c) => h("a", { href: `/clients/${encodeURIComponent(c.name)}` }, h("strong", {}, c.name)) },
    { label: "Combiner", cell: (c) => c.combiner || "–" },
    { label: "Status", cell: (c) => [pill(...clientState(c)), why(c.why)] },
    { label: "Last heartbeat", cell: (c) => ago(c.last_heartbeat, t) },
    { label: "Rounds joined", class: "num", cell: (c) => num(c.rounds_joined || 0) },
  ], page.items, {
    empty: summary.total ? "No client matches this search." : "No client has connected yet (fedtier client --reducer URL).",
    rowAttrs: (c) => ({ "data-client": c.name, "data-online": String(c.active === true) }),
  }));
  const shown = page.items.length;
  replace($("#clients-pager"),
    h("span", { class: "muted", "data-bind": "clients-range" }, shown ? `${offset + 1}–${offset + shown} of ${page.total}` : `0 of ${page.total}`),
    offset > 0 ? [" ", h("a", { href: pageHref(Math.max(0, offset - limit)), rel: "prev", "data-page": "prev" }, "Previous")] : null,
    offset + limit < page.total ? [" ", h("a", { href: pageHref(offset + limit), rel: "next", "data-page": "next" }, "Next")] : null);
  document.body.dataset.loaded = "true";
}

live(refresh, 2000);
