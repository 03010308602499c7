// The Webhooks page: endpoints, their delivery log and a retry, through the admin API with the admin token.
"use strict";

(() => {
  const { api, el, say, timeTag } = ModelSync;
  let shown = null; // the endpoint whose log is shown

  function stateText(hook) {
    return hook.enabled ? "enabled" : "disabled: " + (hook.disabled_reason || "");
  }

  async function loadEndpoints() {
    const result = await api("GET", "/api/v1/webhooks", undefined, true);
    if (!result.ok) { say("webhooks-message", result.error, "error"); return; }
    const body = document.querySelector("#webhooks tbody");
    body.replaceChildren(...result.data.webhooks.map((hook) => el("tr", { "data-webhook-id": hook.id },
      el("td", { className: "num", text: hook.id }),
      el("td", { className: "url" }, el("code", { text: hook.url }), hook.description ? el("span", { className: "sub", text: " " + hook.description }) : null),
      el("td", { text: hook.events.join(", ") }),
      el("td", { className: "state" }, el("span", { className: "badge " + (hook.enabled ? "ok" : "missing"), text: stateText(hook) })),
      el("td", { className: "num backlog", text: hook.backlog }),
      el("td", { className: "num dropped", text: hook.dropped }),
      el("td", {}, timeTag(hook.created_at)),
      el("td", { className: "actions" },
        button("Log", "show-log", () => showLog(hook.id)),
        button("Test", "test-webhook", () => sendTest(hook.id)),
        button("Delete", "delete-webhook danger", () => remove(hook.id))))));
    if (!result.data.webhooks.length) body.append(el("tr", {}, el("td", { colspan: "8", className: "empty", text: "No webhook yet." })));
  }

  function button(text, className, action) {
    const node = el("button", { type: "button", className, text });
    node.addEventListener("click", action);
    return node;
  }

  async function showLog(id) {
    shown = id;
    const result = await api("GET", "/api/v1/webhooks/" + id + "/deliveries?limit=100", undefined, true);
    if (!result.ok) { say("webhooks-message", result.error, "error"); return; }
    document.getElementById("deliveries-for").textContent = "Endpoint #" + id + " (" + result.data.webhook.url + "): " +
      result.data.total + " deliveries, newest first";
    const body = document.querySelector("#deliveries tbody");
    body.replaceChildren(...result.data.deliveries.map((d) => el("tr", { "data-delivery-id": d.id, "data-state": d.state },
      el("td", { className: "num", text: d.id }),
      el("td", { text: d.event_type }),
      el("td", {}, el("code", { text: d.message_id })),
      el("td", { className: "state" }, el("span", { className: "badge " + (d.state === "delivered" ? "ok" : d.state === "failed" ? "missing" : "warn"), text: d.state })),
      el("td", { className: "num", text: d.attempts }),
      el("td", { className: "answer", text: d.last_error || (d.last_status !== null ? "HTTP " + d.last_status : "") }),
      el("td", {}, timeTag(d.created_at)),
      el("td", {}, d.next_attempt_at ? timeTag(d.next_attempt_at) : ""),
      el("td", {}, button("Retry", "retry-delivery", () => retry(id, d.id))))));
  }

  async function retry(id, deliveryId) {
    const result = await api("POST", "/api/v1/webhooks/" + id + "/deliveries/" + deliveryId + "/retry", undefined, true);
    say("webhooks-message", result.ok ? "delivery " + deliveryId + " queued again" : result.error, result.ok ? "success" : "error");
    await refresh();
  }

  async function sendTest(id) {
    const result = await api("POST", "/api/v1/webhooks/" + id + "/test", undefined, true);
    if (!result.ok) { say("webhooks-message", result.error, "error"); return; }
    const d = result.data;
    say("webhooks-message", d.state === "delivered" ? "test event delivered (HTTP " + d.last_status + ")" :
      "test event failed: " + (d.last_error || "HTTP " + d.last_status), d.state === "delivered" ? "success" : "error");
    shown = id;
    await refresh();
  }

  async function remove(id) {
    const result = await api("DELETE", "/api/v1/webhooks/" + id, undefined, true);
    say("webhooks-message", result.ok ? "webhook " + id + " deleted" : result.error, result.ok ? "success" : "error");
    if (shown === id) shown = null;
    await refresh();
  }

  async function create(event) {
    event.preventDefault();
    const events = [...document.querySelectorAll("#webhook-events input:checked")].map((n) => n.value);
    const description = document.getElementById("webhook-description").value.trim();
    const result = await api("POST", "/api/v1/webhooks", { url: document.getElementById("webhook-url").value.trim(),
      events, description: description || null }, true);
    if (!result.ok) { say("webhooks-message", result.error, "error"); return; }
    // shown once: the server never shows it again
    say("webhook-secret", "Signing secret of webhook " + result.data.id + " (copy it now, it is not shown again): " + result.data.secret, "success");
    say("webhooks-message", "");
    event.target.reset();
    await refresh();
  }

  async function refresh() {
    await loadEndpoints();
    if (shown !== null) await showLog(shown);
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("webhook-form").addEventListener("submit", create);
    document.addEventListener("modelsync:signed-in", refresh);
    if (sessionStorage.getItem("modelsync.adminToken") !== null) refresh();
  });
})();
