// The job check page: the pasted job goes to POST /api/v1/jobs/availability; the answer is shown as tables.
// The admin token kept for this browser session (if any) is sent with it: a server with a queue token
// (MODELSYNC_QUEUE_TOKEN) answers job checks only to the queue token or the admin token.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const { el, say } = ModelSync;
  const WHY = {
    not_on_node: "not on this node",
    pending: "listed, not hashed yet (on its way)",
    name_clash: "its name there also names another model",
    unknown: "unknown to the fleet",
    ambiguous: "ambiguous",
    conflict: "name and hash disagree",
  };
  const TOKEN_NEEDED = "This server's job checks need the queue token: enter the admin token above (it is kept for " +
    "this browser session only), then check again.";

  function parseJob(text, format) {
    // JSON forms are sent as JSON; an infotext, or text that is not JSON, as the text itself: with format auto
    // the server reads text starting with { or [ (and no "Steps:" line) as JSON and names what is wrong with it
    if (format === "infotext") return text;
    try {
      return JSON.parse(text);
    } catch (err) {
      if (format === "auto") return text;
      throw new Error("the job is not valid JSON: " + err.message);
    }
  }

  function badge(ok, yes, no) {
    return el("span", { className: "badge " + (ok ? "ok" : "missing"), text: ok ? yes : no });
  }

  function modelLink(model) {
    // the AutoV2 tells apart models of the same name (nodes holding different files under one name)
    return [el("a", { href: "/dashboard/models/" + model.id, text: model.name || model.filename || model.sha256.slice(0, 10) }),
      " ", el("span", { className: "hash", title: "AutoV2", text: model.autov2 || "" })];
  }

  function modelCell(req) {
    if (req.model) return el("td", {}, ...modelLink(req.model));
    const cell = el("td");
    for (const c of req.candidates || []) {
      const loaded = c.loaded_by ? "; loaded by " + (c.loaded_by.join(", ") || "no node") : "";
      cell.append(el("div", { className: "candidate" }, ...modelLink(c), " on " + (c.nodes || []).join(", ") + loaded));
    }
    return cell;
  }

  function statusBadge(req) {
    if (req.status === "name_conflict") {
      return el("span", { className: "badge warn", title: "the name means different models on different nodes", text: "per node" });
    }
    return badge(req.status === "resolved" && req.nodes.length > 0, req.status, req.status === "resolved" ? "on no node" : req.status);
  }

  function showWarnings(warnings) {
    const list = document.getElementById("job-warnings");
    list.replaceChildren(...warnings.map((w) => el("li", { "data-type": w.type }, w.reason,
      el("ul", {}, ...(w.models || []).map((m) => el("li", {}, ...modelLink(m),
        ": loaded by " + (m.loaded_by.join(", ") || "no node") + " (named so on " + m.nodes.join(", ") + ")"))))));
    list.hidden = warnings.length === 0;
  }

  function show(answer) {
    const result = answer.model_availability;
    const verdict = document.getElementById("job-verdict");
    verdict.replaceChildren(badge(result.available, "can run", "cannot run"), " " + result.reason);
    verdict.className = "verdict " + (result.available ? "success" : "error");

    const requirements = document.querySelector("#job-requirements tbody");
    requirements.replaceChildren(...result.requirements.map((req) => el("tr", { "data-status": req.status },
      el("td", { text: req.kind }),
      el("td", { text: req.written || req.reference }),
      el("td", {}, statusBadge(req)),
      modelCell(req),
      el("td", { text: req.nodes.join(", ") }),
      el("td", { text: req.reason || "" }))));

    const nodes = document.querySelector("#job-nodes tbody");
    nodes.replaceChildren(...result.servers.map((node) => el("tr", { "data-server-id": node.server_id },
      el("td", { text: node.server_id }),
      el("td", {}, badge(node.online, "online", "offline")),
      el("td", {}, badge(node.has_all && node.online, "yes", node.has_all ? "has all, offline" : "no")),
      el("td", {}, el("ul", { className: "missing-list" },
        ...node.missing.map((m) => el("li", { text: m.kind + " " + (m.written || m.reference) + (m.why ? ": " + (WHY[m.why] || m.why) : "") })))),
      el("td", { className: "loads" }, ...(node.loads || []).map((l) => el("div", {},
        l.kind + " " + (l.written || l.reference) + " → ", ...modelLink(l.model)))))));
    showWarnings(result.warnings || []);
    document.getElementById("job-result").hidden = false;
  }

  document.getElementById("job-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = document.getElementById("job-text").value.trim();
    const format = document.getElementById("job-format").value;
    say("job-message", "");
    if (!text) {
      say("job-message", "Paste a job first.", "error");
      return;
    }
    let job;
    try {
      job = parseJob(text, format);
    } catch (err) {
      say("job-message", err.message, "error");
      return;
    }
    const button = document.getElementById("job-check");
    button.disabled = true;
    try {
      const answer = await ModelSync.api("POST", "/api/v1/jobs/availability", { job, format, record: false }, true);
      if (answer.ok) show(answer.data);
      else {
        document.getElementById("job-result").hidden = true;
        const detail = answer.error + (answer.data && answer.data.field ? " (" + answer.data.field + ")" : "");
        say("job-message", answer.status === 401 || answer.status === 403 ? TOKEN_NEEDED + " " + detail : detail, "error");
      }
    } finally {
      button.disabled = false;
    }
  });
});
