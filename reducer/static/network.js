// /network: combiners and clients, each client with its latest validation; every 2 s.
import {
  $, ago, getJSON, h, live, metricsNode, now, num, pill, replace, roundIds, roundsById, showState, table, validationsOf,
  when,
} from "./app.js";

const LOOK_BACK = 10;  // rounds searched for each client's latest validation

function clientState(c) {
  if (c.active === true) return ["online", "online"];
  if (c.active === false) return ["offline", "offline"];
  return ["connecting", "waiting"];  // assigned a combiner, not yet seen on it
}

// Why a combiner is offline, or not answering yet: the address the reducer calls, what the call
// got and since when (reducer/network.py records it).
function combinerWhy(c) {
  if (!c.unreachable_since) return c.online ? null : `not seen since ${when(c.last_seen)}`;
  return [`unreachable at ${c.address}:${c.port} since ${when(c.unreachable_since)}`,
    c.last_error ? ` (${c.last_error})` : "", c.last_error_hint ? `; ${c.last_error_hint}` : ""].join("");
}

function clientWhy(c, combiners) {
  if (c.active === true) return null;
  const home = combiners.find((x) => x.name === c.combiner);
  if (home && !home.online) return `its combiner ${home.name} is offline`;
  if (!c.last_heartbeat) return c.combiner ? `assigned to ${c.combiner}, no heartbeat yet` : "no heartbeat yet";
  return `heartbeat silent since ${when(c.last_heartbeat)}`;
}

const why = (text) => (text ? h("div", { class: "muted wrap", "data-why": "" }, text) : null);

async function refresh() {
  const [combinerList, clientList, status, sessions] = await Promise.all([
    getJSON("/api/v1/combiners"), getJSON("/api/v1/clients"), getJSON("/api/v1/status"), getJSON("/api/v1/sessions")]);
  showState(status.state);
  const t = now();
  const latest = (await roundsById(roundIds(sessions).slice(-LOOK_BACK))).reverse();  // newest first
  const lastValidation = new Map();
  for (const v of await validationsOf(latest)) if (!lastValidation.has(v.client)) lastValidation.set(v.client, v);
  const combiners = [...combinerList].sort((a, b) => a.name.localeCompare(b.name));
  const clients = clientList.map((c) => ({ ...c, last_validation: lastValidation.get(c.name) || null }))
    .sort((a, b) => a.name.localeCompare(b.name));
  const online = combiners.filter((c) => c.online).length;
  const active = clients.filter((c) => c.active).length;
  replace($("#combiners-count"), `${online} of ${combiners.length} online`);
  replace($("#clients-count"), `${active} of ${clients.length} online`);
  replace($("#network-summary"), `${online}/${combiners.length} combiners · ${active}/${clients.length} clients online`);

  replace($("#combiners"), table([
    { label: "Name", cell: (c) => h("strong", {}, c.name) },
    { label: "Address", cell: (c) => h("code", {}, `${c.address}:${c.port}`) },
    { label: "Status", cell: (c) => [c.online ? pill("online") : pill("offline"), why(combinerWhy(c))] },
    { label: "Active clients", class: "num", cell: (c) => num(c.active_clients || 0) },
    { label: "Round", cell: (c) => (c.round_in_progress ? pill("running") : h("span", { class: "muted" }, "idle")) },
    { label: "Last seen", cell: (c) => ago(c.last_seen, t) },
  ], combiners, {
    empty: "No combiner has announced itself yet (fedtier combiner --reducer URL).",
    rowAttrs: (c) => ({ "data-combiner": c.name, "data-online": String(Boolean(c.online)) }),
  }));

  replace($("#clients"), table([
    { label: "Name", cell: (c) => h("strong", {}, c.name) },
    { label: "Combiner", cell: (c) => c.combiner || "–" },
    { label: "Status", cell: (c) => [pill(...clientState(c)), why(clientWhy(c, combiners))] },
    { label: "Last heartbeat", cell: (c) => ago(c.last_heartbeat, t) },
    { label: "Rounds joined", class: "num", cell: (c) => num(c.rounds_joined || 0) },
    { label: "Last metrics", cell: (c) => (c.last_validation
      ? [metricsNode(c.last_validation.metrics), h("span", { class: "muted" }, ` (round ${c.last_validation.round})`)]
      : h("span", { class: "muted" }, "none yet")) },
  ], clients, {
    empty: "No client has connected yet (fedtier client --reducer URL).",
    rowAttrs: (c) => ({ "data-client": c.name, "data-online": String(c.active === true) }),
  }));
  document.body.dataset.loaded = "true";
}

live(refresh, 2000);
