// /seed: upload through the one `api` function; the API's 400 message shows under the file input.
import { $, bytes, enhance, getJSON, live, showState, when } from "./app.js";

function showSeed(model) {
  $("[data-bind=seed-id]").textContent = model.id;
  $("[data-bind=seed-sha256]").textContent = model.sha256;
  $("[data-bind=seed-size]").textContent = bytes(model.size);
  $("[data-bind=seed-created]").textContent = when(model.created_at);
  $("[data-bind=seed-download]").href = `/api/v1/models/${encodeURIComponent(model.id)}/download`;
  $("#seed-info").hidden = false;
  $("#seed-upload").hidden = true;
}

// the server renders the raw numbers; format them like the rest of the UI
const size = $("[data-bind=seed-size]");
if (size.dataset.bytes) size.textContent = bytes(Number(size.dataset.bytes));
const created = $("[data-bind=seed-created]");
if (created.dataset.epoch) created.textContent = when(Number(created.dataset.epoch));

enhance($("#seed-form"), (reply) => {
  showSeed(reply.model);
  showState(reply.state);
});

live(async () => {
  const status = await getJSON("/api/v1/status?brief=true");
  showState(status.state);
  if (status.state !== "setup" && $("#seed-info").hidden) {
    const seed = (await getJSON("/api/v1/models?limit=1")).find((m) => m.kind === "seed");  // the trail's first
    if (seed) showSeed(seed);
  }
}, 5000);
