// The Transfers page: while a transfer shown is active, the page reads the same page of GET /api/v1/transfers every
// 2 s and updates each row in place (state, progress bar, speed, ETA, reason, source, updated); a transfer the page
// does not show yet (a new order) reads the server-rendered region again. Cancel and Retry (admin) call the API.
// The words are those the server renders (server/dashboard.py: human_size, human_speed, human_duration).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const { el, say, timeTag } = ModelSync;
  const POLL_MS = 2000;
  const RETRYABLE = ["failed", "cancelled"];
  let timer = null;

  const section = () => document.getElementById("transfers-results");
  const activeStates = () => section().dataset.activeStates.split(" ");

  function fixed1(value) {
    // Python's format(value, ".1f") rounds an exact half to even; toFixed would round it up
    const tenths = value * 10;
    const floor = Math.floor(tenths);
    const rounded = tenths - floor === 0.5 ? (floor % 2 === 0 ? floor : floor + 1) : Math.round(tenths);
    return (rounded / 10).toFixed(1);
  }

  function size(bytes) {
    if (bytes === null || bytes === undefined) return "";
    let value = bytes;
    for (const unit of ["B", "KB", "MB", "GB"]) {
      if (value < 1024) return unit === "B" ? Math.round(value) + " B" : fixed1(value) + " " + unit;
      value /= 1024;
    }
    return fixed1(value) + " TB";
  }

  function speed(bps) {
    return bps === null || bps === undefined ? "" : size(Math.round(bps)) + "/s";
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    const whole = Math.round(seconds);
    if (whole < 60) return whole + " s";
    if (whole < 3600) return Math.floor(whole / 60) + " min " + (whole % 60) + " s";
    return Math.floor(whole / 3600) + " h " + Math.floor((whole % 3600) / 60) + " min";
  }

  function badgeClass(state) {
    if (state === "done") return "badge ok";
    return RETRYABLE.includes(state) ? "badge missing" : "badge warn";
  }

  // the same words as the page's source_cell: a peer node, Civitai's model and version (linked), or a URL's host/path
  function sourceCell(s) {
    if (s.kind === "civitai" && s.civitai) {
      const c = s.civitai;
      const link = el("a", { className: "civitai-link", text: (c.model_name || "model " + c.model_id) + " · " +
        (c.version_name || "version " + c.version_id) });
      link.href = "https://civitai.com/models/" + encodeURIComponent(c.model_id) + "?modelVersionId=" +
        encodeURIComponent(c.version_id);
      link.rel = "noopener noreferrer";
      link.target = "_blank";
      return [el("span", { className: "source-kind", text: "Civitai" }), " · ", link];
    }
    if (s.kind === "url") {
      return [el("span", { className: "source-kind", text: "URL" }), " · ", el("span", { className: "source-url", text: s.url || "" })];
    }
    return [el("span", { className: "source-kind", text: s.kind }), s.server_id ? " · " + s.server_id : ""];
  }

  function update(row, t) {
    row.dataset.state = t.state;
    const cell = (name) => row.querySelector("td." + name);
    cell("source").replaceChildren(...sourceCell(t.source));
    cell("state").replaceChildren(el("span", { className: badgeClass(t.state), text: t.state }));
    const bar = cell("progress").querySelector("progress");
    if (t.size) {
      bar.max = t.size;
      bar.value = t.bytes_done;
    } else {
      bar.removeAttribute("value");
    }
    cell("progress").querySelector(".progress-text").textContent = size(t.bytes_done) +
      (t.size ? " of " + size(t.size) + " · " + Math.floor((t.bytes_done * 100) / t.size) + "%" : "");
    cell("speed").textContent = speed(t.speed_bps);
    cell("eta").textContent = duration(t.eta_seconds);
    cell("reason").querySelector(".reason-word").textContent = t.reason || "";
    cell("reason").querySelector(".error-text").textContent = t.error || "";
    row.querySelector(".updated time").replaceWith(timeTag(t.updated_at));
    row.querySelector(".cancel-transfer").hidden = !activeStates().includes(t.state);
    row.querySelector(".retry-transfer").hidden = !RETRYABLE.includes(t.state);
  }

  function anyActive() {
    const active = activeStates();
    return [...document.querySelectorAll("#transfers tbody tr[data-state]")].some((r) => active.includes(r.dataset.state));
  }

  async function refresh() {
    await ModelSync.refreshRegion("#transfers-results");
  }

  async function poll() {
    timer = null;
    const data = section().dataset;
    const params = new URLSearchParams({ limit: data.limit, offset: data.offset });
    if (data.server) params.set("server_id", data.server);
    if (data.state) params.set("state", data.state);
    const answer = await ModelSync.api("GET", "/api/v1/transfers?" + params);
    if (!answer.ok) {
      say("transfers-message", "Reading the transfers failed: " + answer.error, "error");
    } else {
      const rows = answer.data.transfers.map((t) => [document.querySelector(`#transfers tr[data-transfer-id="${t.id}"]`), t]);
      const shown = document.querySelectorAll("#transfers tbody tr[data-transfer-id]").length;
      if (rows.some(([row]) => row === null) || rows.length !== shown) await refresh();
      else rows.forEach(([row, t]) => update(row, t));
    }
    schedule();
  }

  function schedule() {
    if (timer === null && anyActive()) timer = setTimeout(poll, POLL_MS);
  }

  async function act(method, path, verb) {
    const answer = await ModelSync.api(method, path, undefined, true);
    if (!answer.ok) {
      say("transfers-message", verb + " failed: " + answer.error, "error");
      return;
    }
    await refresh();
    say("transfers-message", "Transfer " + answer.data.id + " to " + answer.data.server_id + ": " + answer.data.state + ".",
      "success");
    schedule();
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest(".cancel-transfer, .retry-transfer");
    if (!button) return;
    const id = button.dataset.transferId;
    if (button.classList.contains("cancel-transfer")) act("DELETE", "/api/v1/transfers/" + id, "Cancel");
    else act("POST", "/api/v1/transfers/" + id + "/retry", "Retry");
  });

  schedule();
});
