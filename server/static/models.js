// The Models page: "Scan for New Models" runs POST /api/v1/models/scan, then the list is read again. The summary of
// a scan that ran is not an error: only its problem lines are shown as errors, and a scan that failed.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const { el, say } = ModelSync;
  const panel = document.getElementById("scan-panel");
  const button = document.getElementById("scan-button");
  const hashes = document.getElementById("calculate-hashes");
  const result = document.getElementById("scan-result");

  function report(stats) {
    const lines = [el("span", { className: "summary", text: stats.message || "Scan complete!" })];
    if (stats.hashesSkipped) {
      const node = panel.dataset.ownNode;
      lines.push(el("span", { className: "unhashed" },
        "- Not hashed: " + stats.hashesSkipped + " files. A file is not a model until hashed, so these are not in the " +
        "list below (tick Calculate Hashes and scan again): ",
        el("a", { href: "/dashboard/unhashed?server=" + encodeURIComponent(node), text: "the files not hashed yet" })));
    }
    for (const problem of stats.problems || []) {
      lines.push(el("span", { className: "problem error", text: "! " + problem.path + ": " + problem.reason }));
    }
    result.replaceChildren(...lines.flatMap((line, i) => (i ? ["\n", line] : [line])));
    result.hidden = false;
    result.classList.remove("error");
    result.classList.add("success");
  }

  button.addEventListener("click", async () => {
    button.disabled = true;
    button.textContent = hashes.checked ? "Scanning + Calculating Hashes..." : "Scanning...";
    say(result, "");
    try {
      const answer = await ModelSync.api("POST", "/api/v1/models/scan", { calculate_hashes: hashes.checked }, true);
      if (!answer.ok) {
        say(result, "Scan failed: " + answer.error, "error");
        return;
      }
      report(answer.data);
      await ModelSync.refreshRegion("#models-results");
    } catch (err) {
      say(result, "Scan failed: " + err.message, "error");
    } finally {
      button.disabled = false;
      button.textContent = button.dataset.idleLabel;
    }
  });
});
