// The round in progress on the dashboard, from /api/v1/rounds/current: counts per state for
// each combiner, who the round waits for, and one page of its clients. The counts and the
// list come from the same answer, so they always agree.
import { $, h, pill, replace, seconds } from "./app.js";

export const LIVE_PAGE = 25;  // clients per page of the list
const OPEN = ["chosen", "downloading", "training", "uploading", "validating"];
const SHOWN_STATES = [...OPEN, "reported", "failed", "capped"];
let offset = 0;

// The query of the next refresh: the page the user is on, of the clients in the state chosen.
export function liveQuery() {
  const state = $("#live-state") ? $("#live-state").value : "";
  return `/api/v1/rounds/current?offset=${offset}&limit=${LIVE_PAGE}${state ? `&state=${encodeURIComponent(state)}` : ""}`;
}

// A new state filter starts at the first page.
export function watchLiveFilter(onChange) {
  const select = $("#live-state");
  if (select) select.addEventListener("change", () => { offset = 0; onChange(); });
}

function counts(map, total, attrs = {}) {
  return h("ul", { class: "live-counts", ...attrs },
    SHOWN_STATES.filter((s) => map[s]).map((s) => h("li", { "data-count": s }, pill(`${s} ${map[s]}`, s))),
    h("li", { class: "muted" }, `of ${total}`));
}

function clientRow(c) {
  return h("tr", { "data-live-client": c.client, "data-state": c.state },
    h("td", { "data-label": "Client" }, h("div", { class: "cell wrap" }, c.client)),
    h("td", { "data-label": "Combiner" }, h("div", { class: "cell" }, c.combiner)),
    h("td", { "data-label": "State" }, h("div", { class: "cell" }, pill(c.state),
      c.detail ? h("div", { class: "muted wrap" }, c.detail) : null)),
    h("td", { class: "num nowrap", "data-label": "For" }, h("div", { class: "cell" }, seconds(c.state_for_s))));
}

// Draw `current` (the API's answer) into #live-round; `onPage` refreshes after a page change.
export function renderLive(current, onPage) {
  const panel = $("#live-round");
  if (!panel) return;
  const round = current.round;
  panel.dataset.running = round ? "true" : "false";
  if (!round) {
    offset = 0;
    replace($("#live-body"), h("p", { class: "empty" }, "No round is running."));
    replace($("#live-title-note"));
    return;
  }
  replace($("#live-title-note"), `#${round.seq ?? round.round} · ${round.phase} · ${seconds(round.elapsed_s)} so far · `,
    h("a", { href: `/rounds/${encodeURIComponent(round.id)}`, id: "live-timeline-link" }, "timeline"));
  if (!current.total) {
    replace($("#live-body"), h("p", { class: "empty" }, round.phase === "instructing"
      ? "Waiting for clients and pushing the model; no tasks sent yet." : "No tasks sent yet."));
    return;
  }
  if (offset >= current.matching && offset > 0) offset = Math.max(0, current.matching - LIVE_PAGE);
  const waiting = current.waiting_for;
  const last = Math.min(current.offset + current.clients.length, current.matching);
  const page = (delta) => () => { offset = Math.max(0, offset + delta); onPage(); };
  replace($("#live-body"),
    counts(current.counts, current.total, { id: "live-counts", "aria-label": "Tasks by state" }),
    h("div", { class: "live-combiners" }, current.combiners.map((c) => h("div", { "data-live-combiner": c.name },
      h("strong", {}, c.name), ` · ${c.kind}${c.finished ? ", done" : ""} · ${seconds(c.elapsed_s)}`,
      counts(c.counts, c.total)))),
    h("p", { id: "live-waiting" }, current.waiting_total
      ? [h("strong", {}, `Waiting for ${current.waiting_total}: `), waiting.map((c, i) => [i ? ", " : "",
        h("span", { "data-waiting": c.client }, `${c.client} (${c.state} ${seconds(c.state_for_s)})`)]),
      current.waiting_total > waiting.length ? ` and ${current.waiting_total - waiting.length} more` : ""]
      : "Every task has ended."),
    current.matching ? null : h("p", { class: "empty" }, "No client in that state."),
    h("div", { class: "table-wrap" }, h("table", { class: "table", id: "live-clients" },
      h("thead", {}, h("tr", {}, ["Client", "Combiner", "State", "For"].map((l, i) =>
        h("th", { scope: "col", class: i === 3 ? "num" : null }, l)))),
      h("tbody", {}, current.clients.map(clientRow)))),
    current.matching > LIVE_PAGE ? h("div", { class: "pager" },
      h("button", { type: "button", class: "secondary", id: "live-prev", disabled: current.offset === 0,
        onclick: page(-LIVE_PAGE) }, "Previous"),
      h("span", { class: "muted" }, `clients ${current.offset + 1}–${last} of ${current.matching}`),
      h("button", { type: "button", class: "secondary", id: "live-next", disabled: last >= current.matching,
        onclick: page(LIVE_PAGE) }, "Next")) : null);
}
