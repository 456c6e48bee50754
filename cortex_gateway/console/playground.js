// The console's playground: a streamed chat with one model, through the gateway's own
// /v1/chat/completions with the signed-in key (or, for an admin where the API needs keys, the playground key),
// its time to first token and decode rate shown.
// Uses console.js's el, $, keyHeaders, kindOf and events (both files are classic scripts of one page).
"use strict";

const CHAT_KINDS = new Set(["", "generation", "vision"]);
const PLAYABLE = new Set([...CHAT_KINDS, "embedding", "rerank", "image", "transcription"]);
const PANELS = ["chat", "embedding", "rerank", "image", "transcription"];
const PLAYGROUND_KEY_ITEM = "cortex.playground-key";
const NO_MODEL = "no model this key may use";
const kinds = new Map();  // model id -> its kind, for the panel it gets
const MIN_RATE_S = 0.05;  // a decode rate over less time than this measures the network's buffering, not the model
const conversation = [];
let stopping = null;  // the running answer's AbortController
let needsKey = false;  // an admin signed in where the API takes API keys only: the playground key is used

// -- the key the playground's calls carry ----------------------------------------------------------------
// The playground key where the sign-in key cannot call the API (an admin key, with API keys configured),
// else the signed-in key's header as console.js gives it.
function playgroundHeaders(headers = {}) {
  const key = needsKey ? sessionStorage.getItem(PLAYGROUND_KEY_ITEM) : null;
  if (!key) return keyHeaders(headers);
  headers.Authorization = "Bearer " + key;
  return headers;
}

// A call to the API with the playground's key, answered as console.js's api() answers.
function playgroundApi(path, body) {
  return api(path, body, playgroundHeaders());
}

function playgroundModels(listing) {
  const select = $("pg-model");
  const chosen = select.value;
  const models = (listing.data || []).filter((m) => PLAYABLE.has(m.kind || ""));
  kinds.clear();
  for (const m of models) kinds.set(m.id, m.kind || "");
  const ids = models.map((m) => m.id);
  select.replaceChildren(...models.map((m) => el("option", {value: m.id, text: m.id + " (" + kindOf(m.kind) + ")"})));
  if (ids.includes(chosen)) select.value = chosen;
  if (!stopping) $("pg-send").disabled = !ids.length;
  // a reader's list comes again with each refresh: it must not wipe the message of a request that failed
  if (!ids.length) $("pg-error").textContent = NO_MODEL;
  else if ($("pg-error").textContent === NO_MODEL) $("pg-error").textContent = "";
  showPanel();
}

// `adminOnly`: signed in with an admin key where the API takes API keys only (admin keys are not API keys,
// so the gateway would refuse the playground's calls made with it): the playground key field asks for one.
async function openPlayground(adminOnly) {
  $("playground").hidden = false;
  needsKey = Boolean(adminOnly);
  $("pg-key-form").hidden = !needsKey;
  if (needsKey) $("pg-key").value = sessionStorage.getItem(PLAYGROUND_KEY_ITEM) || "";
  else forgetPlaygroundKey();  // a key that can call the API itself: no other kept for the tab
  if (needsKey && !sessionStorage.getItem(PLAYGROUND_KEY_ITEM)) {
    return unplayable("the playground calls the API, which needs an API key, and an admin key is not one: " +
                      "enter an API key as the playground key");
  }
  const listing = await playgroundApi("/v1/models");
  if (listing.ok) {
    $("pg-error").textContent = "";  // what was refused before (a wrong playground key) no longer holds
    return playgroundModels(listing.data);
  }
  unplayable(needsKey ? "the playground key was refused (" + listing.message + "): enter an API key"
                      : "this key cannot call the API (" + listing.message + "): sign in with an API key");
}

function unplayable(message) {
  $("pg-model").replaceChildren();
  kinds.clear();
  showPanel();
  $("pg-send").disabled = true;
  $("pg-error").textContent = message;
}

async function usePlaygroundKey(event) {
  event.preventDefault();
  const key = $("pg-key").value.trim();
  if (key) sessionStorage.setItem(PLAYGROUND_KEY_ITEM, key); else sessionStorage.removeItem(PLAYGROUND_KEY_ITEM);
  $("pg-stats").textContent = "";
  await openPlayground(true);
  if ($("pg-send").disabled) $("pg-key").focus();  // missing or refused: the field again, to type another
}

function forgetPlaygroundKey() {
  sessionStorage.removeItem(PLAYGROUND_KEY_ITEM);
  $("pg-key").value = "";
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

async function send(event) {
  event.preventDefault();
  const text = $("pg-message").value.trim();
  if (!text || stopping) return;
  $("pg-error").textContent = $("pg-stats").textContent = "";
  conversation.push({role: "user", content: text});
  turn("user", text);
  $("pg-message").value = "";
  const answer = turn("assistant", "");
  const headers = playgroundHeaders({"Content-Type": "application/json"});
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

// The panel for the chosen model's kind: chat, or playground_kinds.js's embedding, rerank, image and
// transcription panels.
function showPanel() {
  const kind = kinds.get($("pg-model").value) || "";
  const panel = CHAT_KINDS.has(kind) ? "chat" : kind;
  for (const name of PANELS) $("pg-" + name).hidden = name !== panel;
  $("pg-temperature").disabled = $("pg-max-tokens").disabled = panel !== "chat";
}

document.addEventListener("DOMContentLoaded", () => {
  $("chat-form").addEventListener("submit", send);
  $("pg-key-form").addEventListener("submit", usePlaygroundKey);
  $("sign-out").addEventListener("click", forgetPlaygroundKey);
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
