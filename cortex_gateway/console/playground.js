// The console's playground: a streamed chat with one model, through the gateway's own
// /v1/chat/completions with the signed-in key, its time to first token and decode rate shown.
// Uses console.js's el, $, api, keyHeaders and kindOf (both files are classic scripts of one page).
"use strict";

const CHAT_KINDS = new Set(["", "generation", "vision"]);
const PLAYABLE = new Set([...CHAT_KINDS, "embedding", "rerank", "image"]);  // transcription: not here yet
const kinds = new Map();  // model id -> its kind, for the panel it gets
const MIN_RATE_S = 0.05;  // a decode rate over less time than this measures the network's buffering, not the model
const conversation = [];
let stopping = null;  // the running answer's AbortController

function playgroundModels(listing) {
  const select = $("pg-model");
  const chosen = select.value;
  const models = (listing.data || []).filter((m) => PLAYABLE.has(m.kind || ""));
  kinds.clear();
  for (const m of models) kinds.set(m.id, m.kind || "");
  const ids = models.map((m) => m.id);
  select.replaceChildren(...models.map((m) => el("option", {value: m.id, text: m.id + " (" + kindOf(m.kind) + ")"})));
  if (ids.includes(chosen)) select.value = chosen;
  $("pg-send").disabled = !ids.length;
  $("pg-error").textContent = ids.length ? "" : "no model this key may use";
  showPanel();
}

async function openPlayground(adminOnly) {
  $("playground").hidden = false;
  if (adminOnly) {  // admin keys are not API keys: the gateway would refuse the playground's calls
    $("pg-send").disabled = true;
    $("pg-error").textContent = "the playground calls the API, which needs an API key; an admin key is not one: " +
      "sign in with an API key to chat";
    return;
  }
  const listing = await api("/v1/models");
  if (listing.ok) return playgroundModels(listing.data);
  $("pg-send").disabled = true;
  $("pg-error").textContent = "this key cannot call the API (" + listing.message + "): sign in with an API key";
}

function turn(role, text) {
  const body = el("span", {class: "text", text});
  $("pg-transcript").append(el("li", {class: role}, el("span", {class: "who", text: role}), body));
  return body;
}

function chatBody() {
  const system = $("pg-system").value.trim();
  return {
    model: $("pg-model").value,
    messages: (system ? [{role: "system", content: system}] : []).concat(conversation),
    stream: true, stream_options: {include_usage: true},
    temperature: Number($("pg-temperature").value), max_tokens: Number($("pg-max-tokens").value),
  };
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

async function send(event) {
  event.preventDefault();
  const text = $("pg-message").value.trim();
  if (!text || stopping) return;
  $("pg-error").textContent = $("pg-stats").textContent = "";
  conversation.push({role: "user", content: text});
  turn("user", text);
  $("pg-message").value = "";
  const answer = turn("assistant", "");
  const headers = keyHeaders({"Content-Type": "application/json"});
  stopping = new AbortController();
  busy(true);
  const started = performance.now();
  let first = null, usage = null, content = "";
  try {
    const response = await fetch("/v1/chat/completions", {method: "POST", headers, body: JSON.stringify(chatBody()),
                                                           signal: stopping.signal});
    if (!response.ok) {
      const data = await response.json().catch(() => null);
      throw new Error(data && data.error ? data.error.message : "HTTP " + response.status);
    }
    for await (const chunk of events(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices && chunk.choices.length ? chunk.choices[0].delta : null;
      if (delta && delta.content) {
        if (first === null) first = performance.now();
        content += delta.content;
        answer.textContent = content;
      }
    }
    conversation.push({role: "assistant", content});
    $("pg-stats").textContent = stats(started, first, performance.now(), usage);
  } catch (err) {
    conversation.pop();  // the question goes back to the box, to send again
    $("pg-message").value = text;
    answer.parentElement.previousElementSibling.remove();
    answer.parentElement.remove();
    $("pg-error").textContent = err.name === "AbortError" ? "stopped" : "the answer failed: " + err.message;
  } finally {
    stopping = null;
    busy(false);
  }
}

function stats(started, first, ended, usage) {
  const parts = [];
  if (first !== null) parts.push("first token after " + ((first - started) / 1000).toFixed(2) + " s");
  if (usage) {
    parts.push(usage.prompt_tokens + " prompt tokens", usage.completion_tokens + " tokens");
    const decoding = first !== null ? (ended - first) / 1000 : 0;
    if (decoding >= MIN_RATE_S && usage.completion_tokens > 1) {  // shorter: tokens that came in one read
      parts.push(((usage.completion_tokens - 1) / decoding).toFixed(1) + " tokens/s");
    }
    parts.push("answered in " + ((ended - started) / 1000).toFixed(2) + " s");
  }
  return parts.join(", ");
}

function busy(running) {
  $("pg-send").disabled = running;
  $("pg-stop").disabled = !running;
}

// The panel for the chosen model's kind: chat, or playground_kinds.js's embedding, rerank and image panels.
function showPanel() {
  const kind = kinds.get($("pg-model").value) || "";
  const panel = CHAT_KINDS.has(kind) ? "chat" : kind;
  for (const name of ["chat", "embedding", "rerank", "image"]) $("pg-" + name).hidden = name !== panel;
  $("pg-temperature").disabled = $("pg-max-tokens").disabled = panel !== "chat";
}

document.addEventListener("DOMContentLoaded", () => {
  $("chat-form").addEventListener("submit", send);
  $("pg-model").addEventListener("change", showPanel);
  $("pg-stop").addEventListener("click", () => stopping && stopping.abort());
  $("pg-clear").addEventListener("click", () => {
    conversation.length = 0;
    $("pg-transcript").replaceChildren();
    $("pg-stats").textContent = $("pg-error").textContent = "";
  });
  $("pg-message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("chat-form").requestSubmit();
  });
});
