// /start: the settings form and the stop forms, all through the one `api` function.
// A 400 from the API names the field at fault; its message appears under that field.
import { $, enhance, getJSON, h, idCode, live, pill, replace, showState, stopControls } from "./app.js";

const RUNNING = new Set(["instructing", "monitoring"]);
const syncStop = stopControls(() => refresh());
let active = null;       // active clients at the last refresh
let warnedAt = null;     // the active count the user was warned about and chose to start anyway

// Fewer active clients than a round requires: said before posting, not after rounds fail.
function tooFew() {
  const required = Number($("#f-clients_required").value || 1);
  if (active === null || active >= required) return null;
  return `Only ${active} client${active === 1 ? "" : "s"} active now, ${required} required: each round waits `
    + `up to ${$("#f-wait_for_clients").value || 60} s for them, then fails.`;
}

function showWarning() {
  const text = tooFew();
  const box = $("#clients-warning");
  box.hidden = !text;
  box.textContent = text ? (warnedAt === active ? `${text} Start again to start anyway.` : text) : "";
  $("#start-button").textContent = text && warnedAt === active ? "Start anyway" : "Start session";
}
$("#f-clients_required").addEventListener("input", showWarning);

// registered before `enhance`: the first start with too few clients only warns
$("#start-form").addEventListener("submit", (event) => {
  if (!tooFew() || warnedAt === active) return;
  event.preventDefault();
  event.stopImmediatePropagation();
  warnedAt = active;
  showWarning();
  $("#clients-warning").focus();
});

function sync(status) {
  const state = status.state;
  showState(state);
  const running = RUNNING.has(state);
  $("#start-button").disabled = state !== "idle";
  $("#start-reason").textContent = state === "setup" ? "Seed the network first."
    : running ? "A session is running; stop it or wait for it to end." : "";
  syncStop(state);
  const session = status.session;
  if (session) {
    const done = session.rounds_succeeded + session.rounds_failed + (session.rounds_stopped || 0);
    replace($("#now-text"), "Session ", idCode(session.id), " ", pill(session.status), ` ${done} / ${session.rounds_requested} rounds done · `,
      h("a", { href: "/" }, "watch it on the dashboard"));
  } else {
    replace($("#now-text"), "The reducer is ", h("strong", { "data-bind": "state-word" }, state), ".",
      state === "setup" ? [" ", h("a", { href: "/seed" }, "Upload a seed model"), " first."] : "");
  }
  const hint = $("#hint-clients_required");
  if (status.clients_active === undefined) return;
  if (status.clients_active !== active) warnedAt = null;  // a new count: warn again
  active = status.clients_active;
  showWarning();
  replace(hint, "A round with fewer updates than this fails. ",
    h("strong", {}, `${status.clients_active} of ${status.clients} clients active now.`));
}

const refresh = live(async () => sync(await getJSON("/api/v1/status")), 2000);

enhance($("#start-form"), (reply) => {
  const started = $("#started");
  replace(started, "Session ", idCode(reply.session_id), ` started: ${reply.session.rounds_requested} rounds. `,
    h("a", { href: "/" }, "Follow it on the dashboard"), ".", (reply.warnings || []).map((w) => [" ", w]));
  warnedAt = null;
  started.hidden = false;
  sync({ state: reply.state, session: reply.session });
  refresh();
});
