// A model's page: the admin's overrides, rejecting a wrong Civitai match, removing a stale file (availability row),
// ordering a copy to another node (the answer, or the server's refusal, with a link to the Transfers page), and putting
// the model's newer Civitai version on the nodes that hold it.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const page = document.getElementById("model-page");
  const modelId = page.dataset.modelId;

  async function done(messageId, answer, success) {
    if (!answer.ok) {
      ModelSync.say(messageId, answer.error, "error");
      return;
    }
    await ModelSync.refreshRegion("main");
    bind();
    ModelSync.say(messageId, success, "success");
  }

  async function saveOverrides(event) {
    event.preventDefault();
    const form = event.target;
    const changes = {};
    for (const name of ["name", "type", "base", "trained_words"]) {
      const input = form.elements[name];
      const value = input.value.trim();
      if (value === input.dataset.current.trim()) continue;
      if (name === "trained_words") {
        const words = value.split("\n").map((w) => w.trim()).filter((w) => w);
        changes[name] = words.length ? words : null;
      } else {
        changes[name] = value || null;
      }
    }
    if (!Object.keys(changes).length) {
      ModelSync.say("override-message", "Nothing changed.", "error");
      return;
    }
    const answer = await ModelSync.api("PATCH", "/api/v1/models/" + modelId, changes, true);
    await done("override-message", answer, "Overrides saved: " + Object.keys(changes).join(", "));
  }

  async function rejectMatch() {
    const answer = await ModelSync.api("POST", "/api/v1/models/" + modelId + "/civitai/reject", undefined, true);
    await done("civitai-message", answer,
      answer.ok ? "Civitai version " + answer.data.rejected_version_id + " rejected; it will not be applied again." : "");
  }

  async function removeFile(event) {
    const button = event.target;
    const params = new URLSearchParams({ server_id: button.dataset.serverId, path: button.dataset.path });
    const answer = await ModelSync.api("DELETE", "/api/v1/models/" + modelId + "/availability?" + params, undefined, true);
    await done("files-message", answer, "Removed " + button.dataset.path + " on " + button.dataset.serverId + ".");
  }

  async function copyToNode(event) {
    event.preventDefault();
    const serverId = event.target.elements.server_id.value;
    const button = document.getElementById("copy-button");
    button.disabled = true;
    try {
      const answer = await ModelSync.api("POST", "/api/v1/transfers", { server_id: serverId, model_id: Number(modelId) }, true);
      const message = document.getElementById("copy-message");
      if (!answer.ok) {
        ModelSync.say(message, "Copy to " + serverId + " refused: " + answer.error, "error");
        return;
      }
      const t = answer.data;
      const what = answer.status === 201 ? "Transfer " + t.id + " to " + t.server_id + " ordered: " + t.state + ". "
        : "A transfer of this model to " + t.server_id + " stands already: transfer " + t.id + ", " + t.state +
          (t.reason ? " (" + t.reason + ")" : "") + ". ";
      ModelSync.say(message, what, "success");
      message.append(ModelSync.el("a", { id: "copy-transfers-link", text: "See it on the Transfers page",
        href: "/dashboard/transfers?server=" + encodeURIComponent(t.server_id) }));
    } finally {
      button.disabled = false;
    }
  }

  async function orderUpdate() {
    const button = document.getElementById("order-update");
    button.disabled = true;
    try {
      const answer = await ModelSync.api("POST", "/api/v1/models/" + modelId + "/update", undefined, true);
      const message = document.getElementById("update-message");
      if (!answer.ok) {
        ModelSync.say(message, "Update refused: " + answer.error, "error");
        return;
      }
      const { transfers, created, skipped } = answer.data;
      const nodes = transfers.map((t) => t.server_id).join(", ");
      let text = transfers.length
        ? (created ? "Ordered" : "Already ordered") + " version " + answer.data.version_id + " on " + nodes +
          " (" + transfers.length + " transfer" + (transfers.length === 1 ? "" : "s") + "). "
        : "No node needs it. ";
      if (skipped.length) text += "Skipped: " + skipped.map((s) => s.server_id + " (" + s.why + ")").join(", ") + ". ";
      ModelSync.say(message, text, "success");
      if (transfers.length) {
        message.append(ModelSync.el("a", { id: "update-transfers-link", text: "See them on the Transfers page",
          href: "/dashboard/transfers" }));
      }
    } finally {
      button.disabled = false;
    }
  }

  function bind() {
    const form = document.getElementById("override-form");
    if (form) form.addEventListener("submit", saveOverrides);
    const reject = document.getElementById("reject-civitai");
    if (reject) reject.addEventListener("click", rejectMatch);
    document.querySelectorAll(".remove-file").forEach((b) => b.addEventListener("click", removeFile));
    const copy = document.getElementById("copy-form");
    if (copy) copy.addEventListener("submit", copyToNode);
    const update = document.getElementById("order-update");
    if (update) update.addEventListener("click", orderUpdate);
  }

  bind();
});
