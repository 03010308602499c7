// The most-wanted missing models: GET /api/v1/models/wanted, read with the admin token kept for this browser
// session (a server with a queue token answers it only to the queue token or the admin token). The filters and the
// page are in the URL, so a view can be bookmarked.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const { el, say, timeTag } = ModelSync;
  const PAGE_SIZE = 50;
  const TOKEN_NEEDED = "This server's job checks (and this list) need the queue token: enter the admin token above " +
    "(it is kept for this browser session only).";
  const form = document.getElementById("wanted-form");
  const result = document.getElementById("wanted-result");
  const query = new URLSearchParams(location.search);
  form.elements.kind.value = query.get("kind") || "";
  form.elements.missing_only.checked = query.get("missing_only") === "false";

  function pageLink(link, offset) {
    const params = new URLSearchParams(query);
    if (offset === null) {
      link.hidden = true;
      return;
    }
    if (offset) params.set("offset", offset);
    else params.delete("offset");
    link.href = "?" + params;
    link.hidden = false;
  }

  function modelCell(row) {
    if (!row.model) return el("td");
    const m = row.model;
    return el("td", {}, el("a", { href: "/dashboard/models/" + m.id, text: m.name || m.filename || m.sha256.slice(0, 10) }),
      " ", el("span", { className: "hash", title: "AutoV2", text: m.autov2 || "" }));
  }

  function nowCell(row) {
    if (row.available_now) {
      return el("td", {}, el("span", { className: "badge ok", text: "on a node now" }), " " + row.nodes_now.join(", "));
    }
    return el("td", {}, el("span", { className: "badge missing", text: row.model ? "known, on no node" : "unknown" }));
  }

  function show(answer, offset) {
    const rows = answer.wanted.map((row) => el("tr", { "data-reference": row.reference_key },
      el("td", { text: row.kind }),
      el("td", { text: row.reference }),
      el("td", { className: "num", text: String(row.requests) }),
      el("td", {}, timeTag(row.last_wanted)),
      el("td", {}, timeTag(row.first_wanted)),
      nowCell(row),
      modelCell(row)));
    if (!rows.length) {
      rows.push(el("tr", {}, el("td", { colspan: "7", className: "empty",
        text: offset ? "No more wanted models." : "No job has asked for a model that no node has." })));
    }
    document.querySelector("#wanted tbody").replaceChildren(...rows);
    pageLink(document.getElementById("wanted-prev"), offset > 0 ? Math.max(offset - PAGE_SIZE, 0) : null);
    pageLink(document.getElementById("wanted-next"), answer.next_offset);
    result.hidden = false;
  }

  async function load() {
    const offset = Math.max(parseInt(query.get("offset") || "0", 10) || 0, 0);
    const params = new URLSearchParams({ limit: PAGE_SIZE, offset });
    if (query.get("kind")) params.set("kind", query.get("kind"));
    if (query.get("missing_only") === "false") params.set("missing_only", "false");
    const answer = await ModelSync.api("GET", "/api/v1/models/wanted?" + params, undefined, true);
    if (answer.ok) {
      say("wanted-message", "");
      show(answer.data, offset);
      return;
    }
    result.hidden = true;
    say("wanted-message", answer.status === 401 || answer.status === 403 ? TOKEN_NEEDED + " " + answer.error : answer.error, "error");
  }

  document.addEventListener("modelsync:signed-in", load);
  load();
});
