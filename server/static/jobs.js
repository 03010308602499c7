// The job check page: the pasted job goes to POST /api/v1/jobs/availability; the answer is shown as tables.
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

  function parseJob(text, format) {
    // JSON forms are sent as JSON; an infotext (or anything that is not JSON) as the text itself
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

  function modelCell(req) {
    if (req.model) {
      const label = req.model.name || req.model.filename || req.model.sha256.slice(0, 10);
      return el("td", {}, el("a", { href: "/dashboard/models/" + req.model.id, text: label }));
    }
    const cell = el("td");
    for (const c of req.candidates || []) {
      cell.append(el("div", {}, el("a", { href: "/dashboard/models/" + c.id, text: c.name || c.filename || c.id }),
        " on " + (c.nodes || []).join(", ")));
    }
    return cell;
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
      el("td", {}, badge(req.status === "resolved" && req.nodes.length > 0, req.status, req.status === "resolved" ? "on no node" : req.status)),
      modelCell(req),
      el("td", { text: req.nodes.join(", ") }),
      el("td", { text: req.reason || "" }))));

    const nodes = document.querySelector("#job-nodes tbody");
    nodes.replaceChildren(...result.servers.map((node) => el("tr", { "data-server-id": node.server_id },
      el("td", { text: node.server_id }),
      el("td", {}, badge(node.online, "online", "offline")),
      el("td", {}, badge(node.has_all && node.online, "yes", node.has_all ? "has all, offline" : "no")),
      el("td", {}, el("ul", { className: "missing-list" },
        ...node.missing.map((m) => el("li", { text: m.kind + " " + (m.written || m.reference) + (m.why ? ": " + (WHY[m.why] || m.why) : "") })))))));
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
      const answer = await ModelSync.api("POST", "/api/v1/jobs/availability", { job, format, record: false });
      if (answer.ok) show(answer.data);
      else {
        document.getElementById("job-result").hidden = true;
        say("job-message", answer.error + (answer.data && answer.data.field ? " (" + answer.data.field + ")" : ""), "error");
      }
    } finally {
      button.disabled = false;
    }
  });
});
