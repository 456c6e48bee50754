// The console's usage view (admin): each key's budget and its tokens per model and period, from
// /admin/usage (the state database: the same on every gateway sharing one). Read with a fleet view's render
// at most every USAGE_MS, not with each: it is a database query, and usage moves slowly. Uses console.js's
// el, $ and api.
"use strict";

const USAGE_MS = 10000;
let usageRead = -Infinity;  // when /admin/usage was last asked (performance.now())

async function refreshUsage() {
  if (performance.now() - usageRead < USAGE_MS) return;
  usageRead = performance.now();
  const answer = await api("/admin/usage");
  $("usage-error").textContent = answer.ok ? "" : "could not read usage: " + answer.message;
  if (answer.ok) renderUsage(answer.data);
}

function renderUsage(data) {
  const count = (n) => (n === null || n === undefined ? "-" : Number(n).toLocaleString("en"));
  $("keys-table").tBodies[0].replaceChildren(...data.keys.map((k) => el("tr", {},
    el("th", {scope: "row", text: k.key + (k.revoked ? " (revoked)" : "")}),
    el("td", {"data-label": "Budget", text: k.budget_tokens === null ? "none" : count(k.budget_tokens) + " / " +
      k.budget_window}),
    el("td", {"data-label": "Left", text: count(k.budget_left)}),
    el("td", {"data-label": "Used", text: count(k.settled_tokens) + (k.reserved_tokens ? " (+" +
      count(k.reserved_tokens) + " reserved)" : "")}),
    el("td", {"data-label": "Period", text: k.period}))));
  const rows = data.usage.filter((u) => u.current).map((u) => el("tr", {},
    el("th", {scope: "row", text: u.key}),
    el("td", {"data-label": "Model", text: u.model}),
    el("td", {"data-label": "Requests", text: count(u.requests)}),
    el("td", {"data-label": "Prompt", text: count(u.prompt_tokens)}),
    el("td", {"data-label": "Completion", text: count(u.completion_tokens)}),
    el("td", {"data-label": "Total", text: count(u.total_tokens)})));
  $("usage-table").tBodies[0].replaceChildren(...rows);
}
