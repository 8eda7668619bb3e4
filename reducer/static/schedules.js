// /schedules: each schedule's triggers and last outcome, with pause, resume and delete; a form to add one.
import { $, ApiError, api, clearErrors, getJSON, h, idCode, live, pill, replace, showError, showState, table, when } from "./app.js";

function triggers(s) {
  const chips = [];
  if (s.every_seconds) chips.push(h("span", { class: "chip" }, h("b", {}, "every"), ` ${s.every_seconds} s`));
  if (s.cron) chips.push(h("span", { class: "chip" }, h("b", {}, "cron"), ` ${s.cron}`));
  if (s.on_package) chips.push(h("span", { class: "chip" }, "on new package"));
  return h("div", { class: "chips" }, chips);
}

let refreshNow = () => {};

async function act(method, path) {
  const box = $("#schedule-action-error");
  box.hidden = true;
  try {
    await api(method, path);
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    replace(box, err.message);
    box.hidden = false;
  }
  refreshNow();
}

function actions(s) {
  const base = `/api/v1/schedules/${encodeURIComponent(s.id)}`;
  return h("div", { class: "chips" },
    s.state === "active"
      ? h("button", { type: "button", class: "secondary", "data-action": "pause", onclick: () => act("POST", `${base}/pause`) }, "Pause")
      : h("button", { type: "button", class: "secondary", "data-action": "resume", onclick: () => act("POST", `${base}/resume`) }, "Resume"),
    h("button", { type: "button", class: "danger", "data-action": "delete", onclick: () => {
      if (confirm(`Delete schedule ${s.name}?`)) act("DELETE", base);
    } }, "Delete"));
}

async function refresh() {
  const [schedules, status] = await Promise.all([getJSON("/api/v1/schedules"), getJSON("/api/v1/status")]);
  showState(status.state);
  replace($("#schedules-summary"), `${schedules.length} schedule${schedules.length === 1 ? "" : "s"}`);
  replace($("#schedules"), table([
    { label: "Name", cell: (s) => [h("b", {}, s.name), h("div", {}, idCode(s.id))] },
    { label: "Triggers", cell: triggers },
    { label: "State", cell: (s) => pill(s.state, s.state === "active" ? "online" : "stopped") },
    { label: "Next", class: "nowrap", cell: (s) => (s.state === "active" && s.next_at ? when(s.next_at) : "–") },
    { label: "Last", cell: (s) => (s.last_outcome
      ? [pill(s.last_outcome, { started: "success", skipped: "stopped", failed: "failed" }[s.last_outcome]), " ", when(s.last_fired_at),
        s.last_error ? h("div", { class: "muted" }, s.last_error) : null]
      : h("span", { class: "muted" }, "never fired")) },
    { label: "Sessions", class: "num", cell: (s) => `${s.fired} started, ${s.skipped} skipped` },
    { label: "", cell: actions },
  ], schedules, {
    empty: "No schedule yet: add one below.",
    rowAttrs: (s) => ({ "data-schedule": s.id, "data-state": s.state }),
  }));
  document.body.dataset.loaded = "true";
}

// The API takes JSON: numbers and the settings object are sent as such, empty fields left out.
const form = $("#schedule-form");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearErrors(form);
  const body = { name: form.elements.name.value, on_package: form.elements.on_package.checked };
  if (form.elements.every_seconds.value !== "") body.every_seconds = Number(form.elements.every_seconds.value);
  if (form.elements.cron.value.trim() !== "") body.cron = form.elements.cron.value.trim();
  try {
    body.settings = JSON.parse(form.elements.settings.value || "{}");
  } catch (_) {
    showError(form, new ApiError(400, { error: "settings: not valid JSON", field: "settings" }));
    return;
  }
  try {
    await api("POST", "/api/v1/schedules", body);
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    // a session setting's error (settings.rounds) is shown at the settings box
    if (err.field && err.field.startsWith("settings.")) err.field = "settings";
    showError(form, err);
    return;
  }
  form.reset();
  refreshNow();
});

refreshNow = live(refresh, 3000);
