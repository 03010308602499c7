// The Insights page: a new window is shown as soon as it is chosen (the form works without this script too).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const select = document.getElementById("insights-window");
  if (select) select.addEventListener("change", () => select.form.submit());
});
