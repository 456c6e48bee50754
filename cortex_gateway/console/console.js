// The cortex console: one page over the gateway's own API (/admin/status and its stream, /admin/unload,
// /admin/pin, /admin/drain, /v1/models), every call carrying the key the user signed in with.
// An admin's fleet view follows /admin/status/stream (server-sent events, read by fetch: EventSource
// cannot send the key), polling only while the stream is lost; a plain key's catalog is polled.
// Everything shown is set as text (textContent, never innerHTML): model and node names are hostile input.
// No inline script or style: the gateway's Content-Security-Policy forbids them.
"use strict";

const POLL_MS = 2000;
const RETRY_MS = 2000;  // between attempts to reopen a lost status stream
const KEY_ITEM = "cortex.key";
let role = null;  // "admin" (the fleet and its controls) or "reader" (the models a plain API key may use)
let timer = null;
let following = null;  // the status stream's AbortController, while an admin is signed in
let live = false;  // the fleet view is the stream's (else a poll's)

const KINDS = {generation: "chat", vision: "vision chat"};  // as `cortex status` names them; others as they are
const $ = (id) => document.getElementById(id);
const kindOf = (kind) => KINDS[kind] || kind || "";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// The signed-in key as the API takes it (none signed in with an empty key: a gateway without keys).
function keyHeaders(headers = {}) {
  const key = sessionStorage.getItem(KEY_ITEM);
  if (key) headers.Authorization = "Bearer " + key;
  return headers;
}

// A call to the gateway, answered as {ok, status, data, message} (message: the API's own error message): a
// JSON body, or a FormData sent as multipart (the browser writes its boundary, so no Content-Type is set).
async function api(path, body, headers = keyHeaders()) {
  const init = {headers, cache: "no-store"};
  if (body !== undefined) {
    init.method = "POST";
    init.body = body instanceof FormData ? body : JSON.stringify(body);
    if (!(body instanceof FormData)) headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    return {ok: false, status: 0, message: "the gateway did not answer (" + err.message + ")"};
  }
  let data = null;
  try { data = await response.json(); } catch (_) { /* a body that is not JSON: its status says enough */ }
  const message = data && data.error && data.error.message ? data.error.message : "HTTP " + response.status;
  return {ok: response.ok, status: response.status, data, message};
}

// Server-sent events from a fetch body: each complete event's data lines, parsed; "[DONE]" ends.
async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer = (buffer + value).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

// -- signing in ----------------------------------------------------------------------------------------
async function signIn(key) {
  if (key) sessionStorage.setItem(KEY_ITEM, key); else sessionStorage.removeItem(KEY_ITEM);
  const admin = await api("/admin/status");
  if (admin.ok) return show("admin", admin.data);
  if (admin.status !== 401 && admin.status !== 403) return refuse(admin.message);
  const models = await api("/v1/models");
  if (models.ok) return show("reader", models.data);
  return refuse(models.status === 401 ? "that key was refused: " + models.message : models.message);
}

function refuse(message) {
  sessionStorage.removeItem(KEY_ITEM);
  $("sign-in-error").textContent = message;
  $("key").focus();
}

function show(as, data) {
  role = as;
  $("sign-in-error").textContent = "";
  $("sign-in").hidden = true;
  $("sign-out").hidden = false;
  $("fleet").hidden = $("activity").hidden = $("usage").hidden = as !== "admin";
  usageRead = -Infinity;  // usage.js: read with the first render
  $("catalog").hidden = as !== "reader";
  $("who").textContent = as === "admin" ? "signed in with an admin key" : "signed in with an API key (read only)";
  render(data);
  stopUpdates();
  if (as === "admin") follow(); else timer = setInterval(refresh, POLL_MS);
  openPlayground(as === "admin" && data.api_keys);  // playground.js
}

function stopUpdates() {
  clearInterval(timer);
  clearTimeout(timer);
  if (following) following.abort();
  following = null;
}

// The fleet as the gateway pushes it; when the stream is lost (a gateway restarting), one poll, then the
// stream again after RETRY_MS.
async function follow() {
  const mine = following = new AbortController();
  try {
    const response = await fetch("/admin/status/stream", {headers: keyHeaders(), cache: "no-store",
                                                          signal: mine.signal});
    if (response.status === 401) return signOut();
    if (!response.ok) throw new Error("HTTP " + response.status);
    live = true;
    $("fleet-error").textContent = "";
    for await (const status of events(response)) render(status);
    throw new Error("the gateway ended the stream");
  } catch (err) {
    if (mine.signal.aborted) return;
    live = false;
    await refresh();
    $("fleet-error").textContent = "the live view was lost (" + err.message + "); trying again";
    $("fleet-updated").textContent = "not live: reconnecting";
    if (following === mine) timer = setTimeout(follow, RETRY_MS);
  }
}

function signOut() {
  stopUpdates();
  forgetPlaygroundKey();  // playground.js: however the sign-out came (a click, a 401 on a refresh)
  role = null;
  sessionStorage.removeItem(KEY_ITEM);
  for (const id of ["fleet", "activity", "usage", "catalog", "playground", "sign-out"]) $(id).hidden = true;
  $("pg-clear").click();
  $("sign-in").hidden = false;
  $("who").textContent = "";
  $("key").value = "";
  $("key").focus();
}

async function refresh() {
  const answer = await api(role === "admin" ? "/admin/status" : "/v1/models");
  if (answer.status === 401) return signOut();
  $("fleet-error").textContent = answer.ok ? "" : "could not refresh: " + answer.message;
  if (answer.ok) render(answer.data);
}

function render(data) {
  if (role === "admin") renderFleet(data); else renderCatalog(data);
}

// -- the fleet (admin) ---------------------------------------------------------------------------------
function nodeState(node) {
  if (!node.healthy) return "down";
  return node.draining ? "draining" : "up";
}

function renderFleet(status) {
  const pins = status.pins || {};
  const focused = document.activeElement && document.activeElement.closest("[data-keep]");
  if (focused) return;  // a load picker in use: the refresh would take it from under the user's hand
  $("nodes").replaceChildren(...status.nodes.map((node, i) => renderNode(node, pins, i)));
  const rows = (status.models || []).map((m) => el("tr", {},
    el("th", {scope: "row", text: m.id}),
    el("td", {"data-label": "Replicas", text: m.replicas.join(", ") || "none"}),
    el("td", {"data-label": "Loading on", text: m.loading.join(", ") || "-"}),
    el("td", {"data-label": "In flight", text: m.in_flight}),
    el("td", {"data-label": "Waiting", text: m.waiting})));
  $("models-table").tBodies[0].replaceChildren(...rows);
  $("fleet-updated").textContent = (live ? "live, last change " : "updated ") + new Date().toLocaleTimeString();
  renderActivity(status);
  refreshUsage();
}

// -- activity (admin): per-model figures and the fleet's events -----------------------------------------
function renderActivity(status) {
  const seconds = (s) => (s === null || s === undefined ? "-" : s.toFixed(3) + " s");
  const stats = Object.entries(status.stats || {}).sort(([a], [b]) => a.localeCompare(b)).map(([model, f]) =>
    el("tr", {},
      el("th", {scope: "row", text: model}),
      el("td", {"data-label": "Requests/min", text: f.requests_per_min}),
      el("td", {"data-label": "Errors/min", text: f.errors_per_min}),
      el("td", {"data-label": "TTFT p50", text: seconds(f.ttft_p50_s)}),
      el("td", {"data-label": "Decode", text: f.tokens_per_s ? f.tokens_per_s + " tok/s" : "-"})));
  $("stats-table").tBodies[0].replaceChildren(...stats);
  const events = (status.events || []).slice().reverse().map((e) => {
    const details = Object.entries(e).filter(([k]) => k !== "time" && k !== "kind")
      .map(([k, v]) => k + "=" + (typeof v === "object" ? JSON.stringify(v) : v)).join(" ");
    return el("tr", {},
      el("td", {"data-label": "Time", text: new Date(e.time * 1000).toLocaleTimeString()}),
      el("th", {scope: "row", text: e.kind}),
      el("td", {"data-label": "Details", text: details}));
  });
  $("events-table").tBodies[0].replaceChildren(...events);
  const requests = (status.requests || []).slice().reverse().map((r) => el("tr", {},
    el("td", {"data-label": "Time", text: new Date(r.time * 1000).toLocaleTimeString()}),
    el("th", {scope: "row", text: r.method + " " + r.path}),
    el("td", {"data-label": "Status", text: r.status + (r.error ? " " + r.error : "")}),
    el("td", {"data-label": "Key", text: r.key || "-"}),
    el("td", {"data-label": "Model", text: r.model || "-"}),
    el("td", {"data-label": "Node", text: r.node || "-"}),
    el("td", {"data-label": "Tokens", text: r.prompt_tokens || r.completion_tokens
      ? (r.prompt_tokens || 0) + " + " + (r.completion_tokens || 0) : "-"}),
    el("td", {"data-label": "TTFT", text: seconds(r.ttft_s)}),
    el("td", {"data-label": "Duration", text: seconds(r.duration_s)})));
  $("requests-table").tBodies[0].replaceChildren(...requests);
}

function renderNode(node, pins, index) {
  const state = nodeState(node);
  const drain = node.draining
    ? action("Undrain", "undrain node " + node.name, "/admin/undrain", {node: node.name})
    : action("Drain", "drain node " + node.name + " (no new requests or loads go there)", "/admin/drain",
             {node: node.name});
  drain.setAttribute("aria-label", (node.draining ? "Undrain " : "Drain ") + node.name);
  return el("article", {class: "node", "aria-label": "node " + node.name, "data-node": node.name},
    el("h3", {}, el("span", {text: node.name}), el("span", {class: "state " + state, text: state}), drain),
    node.last_error && !node.healthy ? el("p", {role: "note", text: node.last_error}) : null,
    ...node.devices.map(renderDevice),
    renderModels(node, pins),
    renderPulls(node),
    node.healthy ? renderLoad(node, index) : null);
}

function renderPulls(node) {
  const running = (node.pulls || []).filter((p) => p.phase !== "done");
  if (!running.length) return null;
  const mb = (bytes) => (bytes / 2 ** 20).toFixed(1);
  return el("div", {class: "pulls"}, ...running.map((p) => {
    const total = p.total_bytes || 0;
    const figures = mb(p.done_bytes) + (total ? " / " + mb(total) : "") + " MB" +
      (p.rate_bps ? ", " + mb(p.rate_bps) + " MB/s" : "") + (p.error ? ": " + p.error : "");
    return el("div", {class: "device"},
      el("span", {text: p.source + " (" + p.phase + ")"}),
      el("progress", {max: total || null, value: total ? p.done_bytes : null, "aria-label": "pull of " + p.source}),
      el("span", {text: figures}));
  }));
}

function renderLoad(node, index) {
  const loaded = new Set(node.models.map((m) => m.id));
  const ids = (node.available || []).filter((id) => !loaded.has(id));
  if (!ids.length) return null;
  const picker = el("select", {id: "load-" + index, "data-keep": true},
    ...ids.map((id) => el("option", {value: id, text: id})));
  const button = el("button", {type: "button", text: "Load", "aria-label": "Load the chosen model on " + node.name,
                               onclick: async () => {
    const model = picker.value;
    if (!(await confirmed("Really load " + model + " on " + node.name + "?"))) return;
    $("fleet-error").textContent = "";
    const answer = await api("/admin/load", {node: node.name, model});
    $("fleet-error").textContent = answer.ok ? "" : "could not load " + model + ": " + answer.message;
    refresh();
  }});
  return el("div", {class: "actions load"},
    el("label", {for: "load-" + index, text: "Load a model on " + node.name}), picker, button);
}

function renderDevice(device) {
  const total = device.total_mb || 0;
  const used = device.used_mb || Math.max(total - (device.free_mb || 0), 0);
  const label = device.id + (device.name ? " " + device.name : "");
  return el("div", {class: "device"},
    el("span", {text: label}),
    el("meter", {min: 0, max: total || 1, value: used, "aria-label": "memory used on " + label}),
    el("span", {text: Math.round(used) + " / " + Math.round(total) + " MB"}));
}

function renderModels(node, pins) {
  const rows = node.models.map((m) => {
    const pinned = (pins[m.id] || []).includes(node.name);
    const tps = (node.decode_tps || {})[m.id];
    return el("tr", {"data-model": m.id},
      el("th", {scope: "row", text: m.id}),
      el("td", {"data-label": "Kind", text: kindOf(m.kind)}),
      el("td", {"data-label": "State", text: m.status + (pinned ? ", pinned" : "")}),
      el("td", {"data-label": "Memory", text: Math.round(m.memory_mb || 0) + " MB"}),
      el("td", {"data-label": "In flight", text: m.gateway_in_flight + (m.queued ? " (+" + m.queued + " queued)" : "")}),
      el("td", {"data-label": "Decode", text: tps ? tps.toFixed(1) + " tok/s" : "-"}),
      el("td", {"data-label": "Drafts", text: draftText((node.drafts || {})[m.id])}),
      el("td", {class: "actions"},
        labelled(action("Unload", "unload " + m.id + " from " + node.name, "/admin/unload",
                        {node: node.name, model: m.id}), "Unload " + m.id + " from " + node.name),
        labelled(pinned
          ? action("Unpin", "unpin " + m.id + " on " + node.name, "/admin/unpin", {node: node.name, model: m.id})
          : action("Pin", "pin " + m.id + " on " + node.name + " (never evicted)", "/admin/pin",
                   {node: node.name, model: m.id}), (pinned ? "Unpin " : "Pin ") + m.id + " on " + node.name)));
  });
  if (!rows.length) return el("p", {class: "hint", text: "no model loaded"});
  return el("table", {},
    el("caption", {text: "Models on " + node.name}),
    el("thead", {}, el("tr", {}, ...["Model", "Kind", "State", "Memory", "In flight", "Decode", "Drafts",
                                     "Actions"]
      .map((h) => el("th", {scope: "col", text: h})))),
    el("tbody", {}, ...rows));
}

// Speculative decoding since the load, as `cortex top`'s draft column: the draft tokens verified and the
// share accepted ("120 drafted, 73% accepted"); "-" for a model that never drafted (/admin/status's `drafts`
// lists only those that did).
function draftText(drafts) {
  if (!drafts || !drafts.drafted) return "-";
  return drafts.drafted + " drafted, " + Math.round(100 * (drafts.accepted || 0) / drafts.drafted) + "% accepted";
}

function labelled(button, label) {
  button.setAttribute("aria-label", label);
  return button;
}

function action(text, what, path, body) {
  return el("button", {type: "button", text, onclick: async () => {
    if (!(await confirmed("Really " + what + "?"))) return;
    const answer = await api(path, body);
    $("fleet-error").textContent = answer.ok ? "" : "could not " + what + ": " + answer.message;
    refresh();
  }});
}

function confirmed(question) {
  const dialog = $("confirm");
  $("confirm-text").textContent = question;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), {once: true});
    dialog.returnValue = "";
    dialog.showModal();
    $("confirm-ok").focus();
  });
}

// -- the catalog (a plain API key) ---------------------------------------------------------------------
function renderCatalog(listing) {
  const rows = (listing.data || []).map((m) => el("tr", {},
    el("th", {scope: "row", text: m.id}),
    el("td", {"data-label": "Kind", text: kindOf(m.kind)}),
    el("td", {"data-label": "Owned by", text: m.owned_by || ""})));
  $("catalog-table").tBodies[0].replaceChildren(...rows);
  playgroundModels(listing);
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("key").value.trim());
  });
  $("sign-out").addEventListener("click", signOut);
  if (sessionStorage.getItem(KEY_ITEM) !== null) signIn(sessionStorage.getItem(KEY_ITEM));
  else $("key").focus();
});
