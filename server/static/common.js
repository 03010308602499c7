// Shared by every dashboard page: the admin token (kept in sessionStorage), JSON API calls, building elements
// with textContent only (never innerHTML with data), and re-reading a region of the current page.
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

  async function refreshRegion(selector) {
    // the page is rendered (and escaped) by the server: read it again and swap one region in
    const response = await fetch(location.href, { headers: { Accept: "text/html" } });
    if (!response.ok) throw new Error("reloading the page failed: HTTP " + response.status);
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = doc.querySelector(selector);
    const current = document.querySelector(selector);
    if (fresh && current) current.replaceWith(document.importNode(fresh, true));
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
  }

  function forgetToken() {
    sessionStorage.removeItem(TOKEN_KEY);
    showAdmin(false);
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("admin-form").addEventListener("submit", useToken);
    document.getElementById("admin-forget").addEventListener("click", forgetToken);
    showAdmin(adminToken() !== null);
  });

  return { api, el, say, refreshRegion };
})();
