// Shared by every dashboard page: the admin token (kept in sessionStorage), JSON API calls, building elements
// with textContent only (never innerHTML with data), re-reading a region of the current page, and showing the
// server's UTC timestamps (<time datetime>) in the browser's local time with "3 min ago".
"use strict";

const ModelSync = (() => {
  const TOKEN_KEY = "modelsync.adminToken";

  function adminToken() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  async function request(method, path, body, token) {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (token) headers["Authorization"] = "Bearer " + token;
    let response;
    try {
      response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (err) {
      return { ok: false, status: 0, data: null, error: "the server cannot be reached: " + err.message };
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    const error = response.ok ? null : (data && data.error ? data.error : "HTTP " + response.status);
    return { ok: response.ok, status: response.status, data, error };
  }

  async function api(method, path, body, admin = false) {
    const result = await request(method, path, body, admin ? adminToken() : null);
    if (result.status === 401 || result.status === 403) showAdmin(adminToken() !== null, result.error);
    return result;
  }

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function say(target, text, kind) {
    const node = typeof target === "string" ? document.getElementById(target) : target;
    node.textContent = text;
    node.hidden = !text;
    node.classList.toggle("error", kind === "error");
    node.classList.toggle("success", kind === "success");
  }

  const pad = (n) => String(n).padStart(2, "0");

  function localTime(date) {
    return date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate()) + " " +
      pad(date.getHours()) + ":" + pad(date.getMinutes());
  }

  function ago(date, now) {
    const seconds = Math.round((now - date) / 1000);
    if (seconds < -60) return null; // a clock ahead of this browser's: the time alone says it
    if (seconds < 60) return "just now";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min ago";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h ago";
    const days = Math.floor(seconds / 86400);
    return days <= 30 ? days + (days === 1 ? " day ago" : " days ago") : null;
  }

  function showLocal(node, now = Date.now()) {
    // the server writes UTC; the reader wants local time, and how long ago for recent moments
    const date = new Date(node.getAttribute("datetime"));
    if (Number.isNaN(date.getTime())) return;
    const since = ago(date, now);
    node.textContent = localTime(date) + (since ? " (" + since + ")" : "");
    node.title = node.getAttribute("datetime") + " UTC";
  }

  function localTimes() {
    const now = Date.now();
    document.querySelectorAll("time[datetime]").forEach((node) => showLocal(node, now));
  }

  function timeTag(moment) {
    if (!moment) return el("span", { className: "sub", text: "never" });
    const node = el("time", { datetime: moment });
    showLocal(node);
    return node;
  }

  async function refreshRegion(selector) {
    // the page is rendered (and escaped) by the server: read it again and swap one region in
    const response = await fetch(location.href, { headers: { Accept: "text/html" } });
    if (!response.ok) throw new Error("reloading the page failed: HTTP " + response.status);
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = doc.querySelector(selector);
    const current = document.querySelector(selector);
    if (fresh && current) current.replaceWith(document.importNode(fresh, true));
    localTimes();
    showAdmin(adminToken() !== null);
  }

  function showAdmin(signedIn, message) {
    document.querySelectorAll(".when-signed-in, .admin-only").forEach((n) => { n.hidden = !signedIn; });
    document.querySelectorAll(".when-signed-out").forEach((n) => { n.hidden = signedIn; });
    if (message !== undefined) say("admin-message", message, "error");
  }

  async function useToken(event) {
    event.preventDefault();
    const input = document.getElementById("admin-token");
    const token = input.value.trim();
    if (!token) {
      say("admin-message", "enter the admin token", "error");
      return;
    }
    const check = await request("GET", "/api/v1/admin/check", undefined, token);
    if (!check.ok) {
      say("admin-message", check.error, "error");
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    input.value = "";
    say("admin-message", "");
    showAdmin(true);
    document.dispatchEvent(new CustomEvent("modelsync:signed-in"));
  }

  function forgetToken() {
    sessionStorage.removeItem(TOKEN_KEY);
    showAdmin(false);
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("admin-form").addEventListener("submit", useToken);
    document.getElementById("admin-forget").addEventListener("click", forgetToken);
    showAdmin(adminToken() !== null);
    localTimes();
    setInterval(localTimes, 30_000); // "3 min ago" stays true while the page is open
  });

  return { api, el, say, refreshRegion, timeTag };
})();
