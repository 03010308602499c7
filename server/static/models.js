// The Models page: "Scan for New Models" runs POST /api/v1/models/scan, then the list is read again.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const button = document.getElementById("scan-button");
  const hashes = document.getElementById("calculate-hashes");
  const result = document.getElementById("scan-result");

  button.addEventListener("click", async () => {
    button.disabled = true;
    button.textContent = hashes.checked ? "Scanning + Calculating Hashes..." : "Scanning...";
    ModelSync.say(result, "");
    try {
      const answer = await ModelSync.api("POST", "/api/v1/models/scan", { calculate_hashes: hashes.checked }, true);
      if (!answer.ok) {
        ModelSync.say(result, "Scan failed: " + answer.error, "error");
        return;
      }
      const stats = answer.data;
      const lines = [stats.message || "Scan complete!"];
      if (stats.hashesSkipped) lines.push("- Not hashed: " + stats.hashesSkipped + " files (tick Calculate Hashes)");
      for (const problem of stats.problems || []) lines.push("! " + problem.path + ": " + problem.reason);
      ModelSync.say(result, lines.join("\n"), stats.errors ? "error" : "success");
      await ModelSync.refreshRegion("#models-results");
    } catch (err) {
      ModelSync.say(result, "Scan failed: " + err.message, "error");
    } finally {
      button.disabled = false;
      button.textContent = button.dataset.idleLabel;
    }
  });
});
