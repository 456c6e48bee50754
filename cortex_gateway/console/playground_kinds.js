// The playground's other kinds: embeddings (/v1/embeddings), rerank (/v1/rerank) and image generation
// (/v1/images/generations), each through the gateway with the signed-in key. Uses console.js's el, $ and api.
"use strict";

async function ask(path, body, out) {
  $("pg-error").textContent = $("pg-stats").textContent = "";
  const started = performance.now();
  const answer = await api(path, body);
  if (!answer.ok) {
    out.replaceChildren();
    $("pg-error").textContent = "the request failed: " + answer.message;
    return null;
  }
  $("pg-stats").textContent = "answered in " + ((performance.now() - started) / 1000).toFixed(2) + " s" +
    (answer.data.usage && answer.data.usage.prompt_tokens ? ", " + answer.data.usage.prompt_tokens + " tokens" : "");
  return answer.data;
}

async function embed() {
  const out = $("pg-embed-out");
  const data = await ask("/v1/embeddings", {model: $("pg-model").value, input: $("pg-embed-text").value}, out);
  if (!data) return;
  const vector = data.data[0].embedding;
  const head = vector.slice(0, 8).map((x) => x.toFixed(4)).join(", ");
  out.textContent = vector.length + " dimensions: [" + head + (vector.length > 8 ? ", ..." : "") + "]";
}

async function rerank() {
  const out = $("pg-ranked");
  const documents = $("pg-documents").value.split("\n").map((d) => d.trim()).filter((d) => d);
  const data = await ask("/v1/rerank", {model: $("pg-model").value, query: $("pg-query").value, documents}, out);
  if (!data) return;
  out.replaceChildren(...data.results.map((r) => el("li", {},
    el("span", {class: "who", text: "score " + r.relevance_score.toFixed(4)}),
    el("span", {class: "text", text: documents[r.index]}))));
}

async function draw() {
  const out = $("pg-picture");
  const prompt = $("pg-image-prompt").value;
  out.replaceChildren(el("progress", {"aria-label": "drawing the image"}));
  const data = await ask("/v1/images/generations", {model: $("pg-model").value, prompt, n: 1,
                                                      size: $("pg-size").value.trim(), response_format: "b64_json"}, out);
  if (!data) return;
  out.replaceChildren(el("img", {src: "data:image/png;base64," + data.data[0].b64_json, alt: "generated: " + prompt}));
}

document.addEventListener("DOMContentLoaded", () => {
  $("pg-embed").addEventListener("click", embed);
  $("pg-rank").addEventListener("click", rerank);
  $("pg-draw").addEventListener("click", draw);
});
