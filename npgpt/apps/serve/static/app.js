// npgpt's page: a chat box whose answers stream in, each token shaded by its probability, and the
// model's attention and saliency for the last answer (docs/serving.md, "The page"). Plain JavaScript.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, messages: [], last: null, busy: false };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function api(path, body) {
  const response = await fetch(path, body === undefined ? { headers: headers() }
    : { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function status(text) { $("status").textContent = text || ""; }

async function start() {
  $("key").value = localStorage.getItem("npgpt-key") || "";
  $("key").addEventListener("change", () => { localStorage.setItem("npgpt-key", $("key").value); load(); });
  $("ask").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); }
  });
  $("layer").addEventListener("change", drawAttention);
  $("head").addEventListener("change", drawAttention);
  await load();
}

async function load() {
  try {
    state.info = await (await api("/npgpt/info")).json();
  } catch (e) {
    status("Cannot read the model: " + e.message);
    return;
  }
  const info = state.info;
  $("model").textContent = info.model + " · " + info.n_layer + " layers × " + info.n_head + " heads · context "
    + info.block_size + (info.chat ? " · chat" : " · completion (no chat template)");
  for (const [id, n] of [["layer", info.n_layer], ["head", info.n_head]]) {
    $(id).replaceChildren(...Array.from({ length: n }, (_, i) => new Option(String(i), String(i))));
  }
  status("");
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "message " + role;
  div.textContent = text;
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

function shade(p) {            // probability 1: white; probability 0: dark red
  const t = Math.max(0, Math.min(1, p));
  return `rgb(${Math.round(200 + 55 * t)}, ${Math.round(60 + 195 * t)}, ${Math.round(60 + 195 * t)})`;
}

function addTokens(div, text, tokens, answer) {
  // One span per token when the tokens spell the text; else one span for the piece.
  const spelled = tokens.map((t) => t.token).join("");
  const parts = tokens.length && spelled === text ? tokens : [{ token: text, ...(tokens[0] || {}) }];
  for (const t of parts) {
    const span = document.createElement("span");
    span.className = "token";
    span.textContent = t.token;
    if (t.logprob !== undefined && t.logprob !== null) {
      const p = Math.exp(t.logprob);
      span.style.background = shade(p);
      span.dataset.p = p.toFixed(4);
      span.dataset.top = JSON.stringify(t.top || []);
      span.dataset.index = String(answer.tokens.length);
      answer.tokens.push(t.token);
    }
    div.appendChild(span);
  }
}

function tokensOf(choice, chat) {
  // The released tokens of one streamed chunk, as {token, logprob, top: [[token, p], ...]}.
  const lp = choice.logprobs;
  if (!lp) return [];
  if (chat) {
    return (lp.content || []).map((t) => ({ token: t.token, logprob: t.logprob,
      top: t.top_logprobs.map((a) => [a.token, Math.exp(a.logprob)]) }));
  }
  return lp.tokens.map((token, i) => ({ token, logprob: lp.token_logprobs[i],
    top: Object.entries(lp.top_logprobs[i] || {}).map(([k, v]) => [k, Math.exp(v)]) }));
}

async function send() {
  const text = $("prompt").value;
  if (!text.trim() || state.busy || !state.info) return;
  state.busy = true;
  $("send").disabled = true;
  status("");
  $("prompt").value = "";
  bubble("user", text);
  const div = bubble("assistant", "");
  const chat = state.info.chat;
  const common = { model: state.info.model, stream: true, max_tokens: Number($("max-tokens").value) || 40,
                   temperature: Number($("temperature").value) };
  let body;
  if (chat) {
    state.messages.push({ role: "user", content: text });
    body = { ...common, messages: state.messages.slice(), logprobs: true, top_logprobs: 5 };
  } else {
    body = { ...common, prompt: text, logprobs: 5 };
  }
  const answer = { text: "", tokens: [], prompt: text, messages: chat ? state.messages.slice() : null };
  try {
    const response = await api(chat ? "/v1/chat/completions" : "/v1/completions", body);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices) {
          const piece = chat ? (choice.delta.content || "") : choice.text;
          if (!piece) continue;
          answer.text += piece;
          addTokens(div, piece, tokensOf(choice, chat), answer);
          $("log").scrollTop = $("log").scrollHeight;
        }
      }
    }
    if (chat) state.messages.push({ role: "assistant", content: answer.text });
    state.last = answer;
    state.lastDiv = div;
    div.dataset.done = "1";
    await Promise.all([drawAttention(), drawSaliency(0)]);
  } catch (e) {
    status("Error: " + e.message);
    if (chat) state.messages.pop();
  } finally {
    state.busy = false;
    $("send").disabled = false;
  }
}

async function drawAttention() {
  const a = state.last;
  if (!a) return;
  const where = a.messages ? { messages: a.messages, answer: a.text } : { text: a.prompt + a.text };
  try {
    const r = await (await api("/npgpt/attention", { ...where, layer: Number($("layer").value),
                                                     head: Number($("head").value) })).json();
    $("attention").innerHTML = r.svg;
    $("attention").dataset.key = r.layer + "," + r.head;
  } catch (e) { status("Attention: " + e.message); }
}

async function drawSaliency(position) {
  const a = state.last;
  if (!a || !a.text) return;
  const where = a.messages ? { messages: a.messages } : { context: a.prompt };
  try {
    const r = await (await api("/npgpt/saliency", { ...where, answer: a.text, position })).json();
    $("saliency").innerHTML = r.svg;
    $("target").textContent = "for the answer's token " + JSON.stringify(r.target);
  } catch (e) { status("Saliency: " + e.message); }
}

// The top-5 tooltip, and a click that explains a token.
document.addEventListener("mouseover", (e) => {
  const span = e.target.closest ? e.target.closest(".token") : null;
  const tip = $("tooltip");
  if (!span || !span.dataset.top) { tip.hidden = true; return; }
  const top = JSON.parse(span.dataset.top);
  tip.textContent = `${JSON.stringify(span.textContent)}  p = ${span.dataset.p}\n`
    + top.map(([t, p]) => `${(100 * p).toFixed(1).padStart(5)}%  ${JSON.stringify(t)}`).join("\n");
  const box = span.getBoundingClientRect();
  tip.style.left = box.left + "px";
  tip.style.top = (box.bottom + 4) + "px";
  tip.hidden = false;
});
document.addEventListener("click", (e) => {
  const span = e.target.closest ? e.target.closest(".token") : null;
  if (!span || span.dataset.index === undefined || span.closest(".message") !== state.lastDiv) return;   // the last answer's
  document.querySelectorAll(".token.chosen").forEach((s) => s.classList.remove("chosen"));
  span.classList.add("chosen");
  drawSaliency(Number(span.dataset.index));
});

start();
