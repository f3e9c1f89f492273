// ragkit chat page: talks to the server's own OpenAI-compatible endpoints (no build step, no CDN).
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const state = { history: [], key: sessionStorage.getItem("ragkit-api-key") || "", controller: null, pending: null };

function setStatus(text, isError = false) {
  const status = $("#status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function headers() {
  const h = { "Content-Type": "application/json" };
  if (state.key) h.Authorization = "Bearer " + state.key;
  return h;
}

async function init() {
  try {
    const health = await (await fetch("healthz")).json();
    $("#model").textContent = health.model + (health.adapters && health.adapters.length ? " · adapters: " + health.adapters.join(", ") : "");
    const select = $("#retriever");
    const index = health.index;
    if (index) {
      for (const name of index.retrievers) select.add(new Option(name, name, false, name === index.default_retriever));
      $("#k").value = health.retrieval ? health.retrieval.k : 5;
    } else {
      $("#retrieval").checked = false;
      $("#retrieval").disabled = select.disabled = $("#k").disabled = true;
      setStatus("This server has no index: answers come from the model alone.");
    }
  } catch (e) {
    setStatus("Cannot reach the server: " + e.message, true);
  }
}

function newTurn(question) {
  const turn = $("#turn-template").content.firstElementChild.cloneNode(true);
  $(".question", turn).textContent = question;
  $("#conversation").appendChild(turn);
  turn.scrollIntoView({ block: "end" });
  return turn;
}

// The answer text with each [n] / [n, m] marker made a button that opens source n.
function renderAnswer(node, text, ext) {
  const model = new Set(ext ? ext.citations : []);
  node.replaceChildren();
  let last = 0;
  for (const match of text.matchAll(/\[(\d+(?:\s*,\s*\d+)*)\]/g)) {
    node.append(text.slice(last, match.index));
    const numbers = match[1].split(",").map((x) => parseInt(x, 10));
    node.append("[");
    numbers.forEach((n, i) => {
      if (i) node.append(", ");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "cite" + (ext && !model.has(n) ? " attributed" : "");
      button.textContent = n;
      button.title = ext ? (model.has(n) ? "cited by the model" : "attributed by ragkit") : "source " + n;
      button.addEventListener("click", () => openSource(node.closest(".turn"), n));
      node.append(button);
    });
    node.append("]");
    last = match.index + match[0].length;
  }
  node.append(text.slice(last));
}

function openSource(turn, n) {
  const item = turn.querySelector(`.source[data-n="${n}"]`);
  if (!item) return;
  togglePassage(item, true);
  $(".source-head", item).focus();
}

function togglePassage(item, open) {
  const passage = $(".passage", item);
  passage.hidden = open === undefined ? !passage.hidden : !open;
  $(".source-head", item).setAttribute("aria-expanded", String(!passage.hidden));
}

function renderSources(turn, ext) {
  const model = new Set(ext.citations), ragkit = new Set(ext.attributed);
  const list = $(".source-list", turn);
  list.replaceChildren();
  for (const s of ext.sources) {
    const item = document.createElement("li");
    item.className = "source";
    item.dataset.n = s.n;
    const head = document.createElement("button");
    head.type = "button";
    head.className = "source-head";
    head.setAttribute("aria-expanded", "false");
    const n = document.createElement("span");
    n.className = "n";
    n.textContent = `[${s.n}] `;
    const badge = document.createElement("span");
    badge.className = "badge " + (model.has(s.n) ? "model" : ragkit.has(s.n) ? "ragkit" : "unused");
    badge.textContent = model.has(s.n) ? "cited by the model" : ragkit.has(s.n) ? "attributed by ragkit" : "not cited";
    const where = document.createElement("div");
    where.className = "muted";
    where.textContent = `${s.source} · characters ${s.start}–${s.end}${s.truncated ? " · cut to fit" : ""}`;
    head.append(n, s.title || s.doc_id, badge, where);
    const passage = document.createElement("div");
    passage.className = "passage";
    passage.hidden = true;
    passage.textContent = s.text;
    head.addEventListener("click", () => togglePassage(item));
    item.append(head, passage);
    list.append(item);
  }
  $(".sources", turn).hidden = ext.sources.length === 0;
  if (ext.knowledge) {
    const knowledge = $(".knowledge", turn);
    knowledge.hidden = false;
    $(".knowledge-text", turn).textContent = ext.knowledge;
    $("summary", knowledge).textContent = "Background knowledge" + (ext.adapters.length ? " (" + ext.adapters.join(", ") + ")" : "");
  }
}

function explain(status, body, headersIn) {
  const error = (body && body.error) || {};
  if (status === 401) return "The API key was refused: enter it below.";
  if (status === 503) {
    const wait = headersIn.get("Retry-After");
    return "The server is busy answering others" + (wait ? `; try again in ${wait} s.` : "; try again shortly.");
  }
  if (error.code === "context_length_exceeded") return "The question is too long for the model: " + error.message;
  return error.message || `The server answered ${status}.`;
}

async function ask(question) {
  const retrieval = $("#retrieval").checked;
  const settings = { retrieval };
  if (retrieval) {
    settings.k = parseInt($("#k").value, 10) || 5;
    if ($("#retriever").value) settings.retriever = $("#retriever").value;
  }
  const turn = newTurn(question);
  const answer = $(".answer", turn);
  const messages = [...state.history, { role: "user", content: question }];
  state.controller = new AbortController();
  setBusy(true);
  setStatus("");
  answer.classList.add("streaming");
  let text = "", ext = null;
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST", headers: headers(), signal: state.controller.signal,
      body: JSON.stringify({ model: "ragkit", stream: true, messages, ragkit: settings }),
    });
    if (!response.ok) {
      let body = null;
      try { body = await response.json(); } catch (e) { /* not JSON */ }
      const message = explain(response.status, body, response.headers);
      answer.replaceChildren(Object.assign(document.createElement("span"), { className: "error", textContent: message }));
      setStatus(message, true);
      if (response.status === 401) askForKey(question);
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) {
            text += delta.content;
            renderAnswer(answer, text, null);
          }
          if (chunk.ragkit) ext = chunk.ragkit;
        }
      }
    }
    renderAnswer(answer, text, ext);
    if (ext) renderSources(turn, ext);
    $(".meta", turn).textContent = retrieval && ext
      ? `retriever ${settings.retriever || "default"} · k ${settings.k} · retrieval ${ext.retrieve_ms} ms`
      : "no retrieval";
    state.history.push({ role: "user", content: question }, { role: "assistant", content: text });
  } catch (e) {
    if (e.name === "AbortError") {
      $(".meta", turn).textContent = "stopped";
      if (text) state.history.push({ role: "user", content: question }, { role: "assistant", content: text });
    } else {
      answer.append(Object.assign(document.createElement("span"), { className: "error", textContent: " " + e.message }));
      setStatus(e.message, true);
    }
  } finally {
    answer.classList.remove("streaming");
    state.controller = null;
    setBusy(false);
    answer.focus({ preventScroll: true });
    turn.scrollIntoView({ block: "nearest" });
  }
}

function setBusy(busy) {
  $("#send").disabled = busy;
  $("#stop").hidden = !busy;
  if (!busy) $("#question").focus();
}

function askForKey(question) {
  state.pending = question;
  $("#key-form").hidden = false;
  $("#api-key").focus();
}

$("#key-form form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.key = $("#api-key").value.trim();
  sessionStorage.setItem("ragkit-api-key", state.key);
  $("#key-form").hidden = true;
  if (state.pending) {
    const question = state.pending;
    state.pending = null;
    ask(question);
  }
});

$("#ask").addEventListener("submit", (event) => {
  event.preventDefault();
  const question = $("#question").value.trim();
  if (!question || state.controller) return;
  $("#question").value = "";
  ask(question);
});

$("#question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("#ask").requestSubmit();
  }
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && state.controller) state.controller.abort();
});
$("#stop").addEventListener("click", () => state.controller && state.controller.abort());
$("#new-chat").addEventListener("click", () => {
  state.history = [];
  $("#conversation").replaceChildren();
  setStatus("New conversation.");
  $("#question").focus();
});
$("#retrieval").addEventListener("change", () => {
  $("#retriever").disabled = $("#k").disabled = !$("#retrieval").checked;
});

init();
