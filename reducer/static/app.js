// fedtier web UI: the shared pieces every page script imports.
//
// Every request the pages make, reads and writes, goes through `api` below: it is the
// one place to add credentials (an Authorization header, a CSRF token) or to react to
// a 401 by sending the user to /login.

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `request failed with status ${status}`);
    this.status = status;
    this.field = body && body.field;
    this.body = body;
  }
}

// api("GET", "/api/v1/status"); api("POST", "/start", formData); api("POST", "/stop")
// body: FormData (sent as multipart, exactly as the HTML form would), a plain object
// (sent as JSON) or nothing. Resolves with the JSON reply; rejects with ApiError.
export async function api(method, path, body) {
  return (await request(method, path, body)).data;
}

async function request(method, path, body) {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let reply;
  try {
    reply = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, { error: `the reducer did not answer (${err.message})` });
  }
  let data = null;
  try {
    data = await reply.json();
  } catch (_) {
    data = null;
  }
  if (!reply.ok) throw new ApiError(reply.status, data);
  return { data, reply };
}

export const getJSON = (path) => api("GET", path);
// One page of a list (/api/v1/rounds?offset=..., /api/v1/clients?q=...): {items, total, offset}
// from the API's X-Total-Count and X-Offset headers.
export async function getPage(path) {
  const { data, reply } = await request("GET", path);
  const header = (name) => Number.parseInt(reply.headers.get(name) || "", 10);
  const total = header("X-Total-Count");
  const offset = header("X-Offset");
  return { items: data, total: Number.isFinite(total) ? total : data.length, offset: Number.isFinite(offset) ? offset : 0 };
}

// ---- finished rounds never change: fetch each once

const roundCache = new Map();       // round id -> finished round document
const validationCache = new Map();  // round id -> its per-client validations (finished rounds only)

async function inBatches(items, size, fn) {
  const out = [];
  for (let i = 0; i < items.length; i += size) out.push(...await Promise.all(items.slice(i, i + size).map(fn)));
  return out;
}

// The round documents for `ids`, in that order; finished ones are cached.
export async function roundsById(ids) {
  return inBatches(ids, 6, async (id) => {
    if (roundCache.has(id)) return roundCache.get(id);
    const round = await getJSON(`/api/v1/rounds/${encodeURIComponent(id)}`);
    if (round.status !== "running") roundCache.set(id, round);
    return round;
  });
}

// Fill the cache with every round in one request, once per page (pages that show the
// whole history call this, then fetch only new rounds by id). Retried if it failed.
let primed = null;
export function primeRounds() {
  primed = primed || getJSON("/api/v1/rounds").then((rounds) => {
    for (const round of rounds) if (round.status !== "running") roundCache.set(round.id, round);
  }, (err) => {
    primed = null;
    throw err;
  });
  return primed;
}

// The per-client validations of each finished round in `rounds`, as one list.
export async function validationsOf(rounds) {
  const lists = await inBatches(rounds.filter((r) => r.status !== "running"), 6, async (r) => {
    if (validationCache.has(r.id)) return validationCache.get(r.id);
    const found = r.metrics && Object.keys(r.metrics).length
      ? await getJSON(`/api/v1/validations?round_id=${encodeURIComponent(r.id)}`) : [];
    validationCache.set(r.id, found);
    return found;
  });
  return lists.flat();
}

// Every session's round ids in the order they ran (sessions by start time).
export function roundIds(sessions) {
  return [...sessions].sort((a, b) => a.started_at - b.started_at).flatMap((s) => s.round_ids || []);
}

export const now = () => Date.now() / 1000;

// ---- DOM

// h("td", {class: "num", title: "x"}, "text", childNode, [more, children])
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

export const $ = (selector, root = document) => root.querySelector(selector);

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

// A table whose rows render as labelled cards on narrow screens (see .table in app.css).
// columns: [{label, cell: (row) => node|string, class?}]
export function table(columns, rows, { empty = "Nothing yet.", rowAttrs } = {}) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("div", { class: "table-wrap" },
    h("table", { class: "table" },
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.class, scope: "col" }, c.label)))),
      h("tbody", {}, rows.map((row) => h("tr", rowAttrs ? rowAttrs(row) : {},
        columns.map((c) => h("td", { class: c.class, "data-label": c.label }, h("div", { class: "cell" }, c.cell(row)))))))));
}

// ---- formatting

export function num(value, digits = 4) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  if (Number.isInteger(value) && Math.abs(value) < 1e6) return String(value);
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(2);
  return value.toFixed(digits);
}

export function seconds(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  if (value < 1) return `${Math.round(value * 1000)} ms`;
  if (value < 120) return `${value.toFixed(value < 10 ? 2 : 1)} s`;
  const m = Math.floor(value / 60);
  if (m < 120) return `${m} min ${Math.round(value - m * 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function ago(epoch, now) {
  if (!epoch) return "never";
  const delta = Math.max(0, now - epoch);
  if (delta < 1) return "just now";
  return `${seconds(delta).replace(/\.\d+ s$/, " s")} ago`;
}

export function when(epoch) {
  if (!epoch) return "–";
  const d = new Date(epoch * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function bytes(n) {
  if (typeof n !== "number") return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

export const short = (id) => (id ? id.slice(0, 8) : "–");

export function idCode(id) {
  return id ? h("code", { class: "id", title: id }, short(id)) : "–";
}

// "accuracy 0.9547 · loss 0.1664"; the order puts the usual suspects first.
export function metricsText(metrics) {
  const keys = metricKeys([metrics || {}]);
  if (!keys.length) return "–";
  return keys.map((k) => `${k} ${num(metrics[k])}`).join(" · ");
}

// The same as a node whose "key value" pairs never break inside (for table cells).
export function metricsNode(metrics) {
  const keys = metricKeys([metrics || {}]);
  if (!keys.length) return h("span", { class: "muted" }, "–");
  return h("span", { class: "metrics" }, keys.map((k, i) => [i ? " · " : "", h("span", { class: "metric" }, `${k} ${num(metrics[k])}`)]));
}

export function metricKeys(list) {
  const keys = new Set();
  for (const m of list) {
    for (const [k, v] of Object.entries(m || {})) {
      if (typeof v === "number" && Number.isFinite(v) && k !== "num_examples") keys.add(k);
    }
  }
  const rank = (k) => (/^acc/.test(k) ? 0 : /^loss/.test(k) ? 1 : /acc/.test(k) ? 2 : /loss/.test(k) ? 3 : 4);
  return [...keys].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
}

// A status pill: state words map to colours in app.css (.pill-online, .pill-failed...).
export function pill(word, kind = word) {
  return h("span", { class: `pill pill-${kind}` }, word);
}

// ---- the header's reducer state, live on every page

export function showState(state) {
  const el = $("[data-bind=state]");
  if (!el || !state) return;
  el.textContent = state;
  el.className = `pill pill-${state}`;
  document.body.dataset.state = state;
}

// ---- when the reducer does not answer

// The buttons that act on the reducer; while it does not answer they are disabled with the
// reason next to them. The page's refresh re-enables the ones with a reason slot from the state
// it reads (start.js, stopControls); the others (seed) are re-enabled here.
const ACTIONS = [["#start-button", "#start-reason"], ["#stop-after-button", "#stop-reason"],
  ["#abort-button", "#stop-reason"], ["#seed-form [type=submit]", null]];
let downSince = null;  // when the first refresh in a row failed to reach the reducer

// A network error, or a 5xx (a proxy's 502, a reducer failing): the reducer is not answering.
// A 4xx is the reducer answering (a 401 asks for a login), not an outage.
export const unreachable = (err) => err instanceof ApiError && (err.status === 0 || err.status >= 500);

function showUnreachable(err) {
  downSince = downSince || new Date();
  const since = when(downSince.getTime() / 1000).slice(11);
  const el = $("[data-bind=state]");
  if (el) { el.textContent = "unreachable"; el.className = "pill pill-unreachable"; }
  document.body.dataset.state = "unreachable";
  document.body.dataset.reachable = "false";
  const label = $("#updated");
  if (label) { label.textContent = `not live · reducer not answering since ${since}`; label.dataset.live = "false"; }
  for (const [button, reason] of ACTIONS) {
    const b = $(button);
    if (!b) continue;
    if (!reason && !b.disabled) b.dataset.down = "true";
    b.disabled = true;
    const r = reason && $(reason);
    if (r) r.textContent = `The reducer is not answering (since ${since}); this is disabled until it does.`;
  }
  return since;
}

function showReachable() {
  downSince = null;
  document.body.dataset.reachable = "true";
  const label = $("#updated");
  if (label) label.dataset.live = "true";
  for (const b of document.querySelectorAll("button[data-down]")) { b.disabled = false; delete b.dataset.down; }
}

// Run `refresh` now and then every `ms` milliseconds (never overlapping; paused while
// the tab is hidden). A failed refresh shows a banner instead of throwing; one that did not
// reach the reducer also turns the state pill to "unreachable", the live label off and the
// action buttons off, until a refresh succeeds again (which redraws them from the real state).
export function live(refresh, ms = 2000) {
  let timer = null;
  let running = false;
  const banner = $("#offline");
  async function tick() {
    clearTimeout(timer);
    if (running) return;
    running = true;
    try {
      await refresh();
      showReachable();
      if (banner) banner.hidden = true;
    } catch (err) {
      if (!(err instanceof ApiError)) console.error(err);  // a bug, not an outage: let it be seen
      const down = unreachable(err) ? showUnreachable(err) : null;
      if (banner) {
        const why = err.status ? `HTTP ${err.status}: ${err.message}` : "no connection";
        replace(banner, down ? `The reducer is not answering since ${down} (${why}). Retrying every ${ms / 1000} s.`
          : `Cannot refresh: ${err.message}`, err.status === 401
          ? [" ", h("a", { href: `/login?next=${encodeURIComponent(location.pathname)}` }, "Log in")] : "");
        banner.hidden = false;
      }
    } finally {
      running = false;
      if (!document.hidden) timer = setTimeout(tick, ms);
    }
  }
  document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(); });
  tick();
  return tick;
}

// ---- forms: submit through `api`, show the API's 400 message next to its field

export function clearErrors(form) {
  for (const el of form.querySelectorAll(".field-error")) { el.textContent = ""; el.hidden = true; }
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  const box = form.querySelector(".form-error");
  if (box) { box.replaceChildren(); box.hidden = true; }
}

// A 400 that names no field goes to the form's data-error-field (its one input), if any.
export function showError(form, err) {
  const field = err.field || (err.status === 400 ? form.dataset.errorField : null);
  const input = field ? form.querySelector(`[name="${CSS.escape(field)}"]`) : null;
  const slot = field ? form.querySelector(`#error-${CSS.escape(field)}`) : null;
  if (input && slot) {
    // next to the field its name is redundant: "task: must be a JSON object" -> "must be a JSON object"
    slot.textContent = err.message.startsWith(`${field}: `) ? err.message.slice(field.length + 2) : err.message;
    slot.hidden = false;
    input.setAttribute("aria-invalid", "true");
    input.focus();
    return;
  }
  const box = form.querySelector(".form-error");
  const parts = [err.message];
  if (err.status === 401) parts.push(" ", h("a", { href: `/login?next=${encodeURIComponent(location.pathname)}` }, "Log in"));
  replace(box, ...parts);
  box.hidden = false;
}

// Submit `form` as FormData to its own method and action (what the browser would send
// without this script); then onSuccess(reply), or the error shown on the form.
export function enhance(form, onSuccess) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const button = form.querySelector("[type=submit]");
    const wasDisabled = button ? button.disabled : false;
    if (button) button.disabled = true;
    form.setAttribute("aria-busy", "true");
    let reply;
    try {
      reply = await api((form.getAttribute("method") || "POST").toUpperCase(), form.getAttribute("action"),
        new FormData(form));
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      showError(form, err);
      return;
    } finally {
      form.removeAttribute("aria-busy");
      if (button) button.disabled = wasDisabled;
    }
    await onSuccess(reply);
  });
}

// ---- the two stop forms (templates/stop_forms.html), on the start page and the dashboard

const RUNNING_STATES = new Set(["instructing", "monitoring"]);
const STOP_TEXT = {
  running: "Stop after this round: the round in progress finishes and its model is kept. Abort now: the round in progress is dropped.",
  after_round: "Stopping after the round in progress… (Abort now drops it.)",
  abort: "Aborting the round in progress…",
  idle: "No session is running.",
};

// Wire both forms through `enhance`; returns sync(state), which enables the buttons
// while a session runs and says what a stop already asked for is doing.
export function stopControls(onStopped) {
  let asked = null;  // the mode of a stop sent for the running session
  const sync = (state) => {
    const running = RUNNING_STATES.has(state);
    if (!running) asked = null;
    const after = $("#stop-after-button");
    const abort = $("#abort-button");
    if (!after || !abort) return;
    after.disabled = !running || asked !== null;  // an abort, or the same stop again, is all that is left
    abort.disabled = !running || asked === "abort";
    $("#stop-reason").textContent = !running ? STOP_TEXT.idle : STOP_TEXT[asked || "running"];
  };
  for (const form of [$("#stop-after-form"), $("#abort-form")]) {
    if (!form) continue;
    enhance(form, (reply) => {
      asked = reply.mode;
      showState(reply.state);
      sync(reply.state);
      if (onStopped) onStopped(reply);
    });
  }
  return sync;
}
