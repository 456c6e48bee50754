// The playground's other kinds: embeddings (/v1/embeddings), rerank (/v1/rerank), image generation
// (/v1/images/generations) and transcription (/v1/audio/transcriptions, multipart), each through the gateway
// with playground.js's playgroundApi (the signed-in key, or the playground key). Uses console.js's el and $.
// What the API answers is shown as text (textContent): a transcript is whatever the audio made of it.
"use strict";

const tokensOf = (data) => (data.usage && data.usage.prompt_tokens ? [data.usage.prompt_tokens + " tokens"] : []);

// One call's answer, or null with the API's message in #pg-error; `figures` names what #pg-stats adds to the
// time the answer took.
async function ask(path, body, out, figures = tokensOf) {
  $("pg-error").textContent = $("pg-stats").textContent = "";
  const started = performance.now();
  const answer = await playgroundApi(path, body);
  if (!answer.ok) {
    out.replaceChildren();
    $("pg-error").textContent = "the request failed: " + answer.message;
    return null;
  }
  const took = "answered in " + ((performance.now() - started) / 1000).toFixed(2) + " s";
  $("pg-stats").textContent = [...figures(answer.data), took].join(", ");
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

// -- transcription ---------------------------------------------------------------------------------------
function transcriptionForm(file) {
  const form = new FormData();
  form.append("file", file);
  form.append("model", $("pg-model").value);
  form.append("response_format", "verbose_json");  // the segments and the audio's duration too
  const language = $("pg-language").value.trim();
  if (language) form.append("language", language);
  return form;
}

const audioSeconds = (s) => Number(s).toFixed(2);
const heard = (data) => [audioSeconds(data.duration) + " s of audio"];

async function transcribe() {
  const file = $("pg-audio").files[0];
  if (!file) {
    $("pg-stats").textContent = "";
    $("pg-error").textContent = "choose an audio file to transcribe";
    return $("pg-audio").focus();
  }
  const out = $("pg-segments");
  $("pg-heard").textContent = "";
  $("pg-transcribe").disabled = true;
  out.replaceChildren(el("li", {}, el("progress", {"aria-label": "transcribing " + file.name})));
  try {
    const data = await ask("/v1/audio/transcriptions", transcriptionForm(file), out, heard);
    if (!data) return;
    $("pg-heard").textContent = data.text;
    out.replaceChildren(...(data.segments || []).map((s) => el("li", {},
      el("span", {class: "who", text: audioSeconds(s.start) + "\u2013" + audioSeconds(s.end) + " s"}),
      el("span", {class: "text", text: s.text}))));
  } finally {
    $("pg-transcribe").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("pg-embed").addEventListener("click", embed);
  $("pg-rank").addEventListener("click", rerank);
  $("pg-draw").addEventListener("click", draw);
  $("pg-transcribe").addEventListener("click", transcribe);
});
