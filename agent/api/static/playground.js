// The playground: one conversation with the agent over its own API (same origin).
// Everything the server or the model sends is shown as text nodes, never parsed as HTML.
"use strict";
(() => {
  const SESSION = "agent.playground.session";
  const KEY = "agent.playground.apiKey";
  const authMode = document.body.dataset.authMode;
  const $ = (id) => document.getElementById(id);
  const log = $("log"), form = $("composer"), input = $("message"), send = $("send");
  let busy = false;

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = String(text);
    log.appendChild(node);
    node.scrollIntoView({ block: "end" });
    return node;
  }

  function headers(extra) {
    const h = Object.assign({}, extra);
    if (authMode === "api_key") h["X-API-Key"] = $("api-key").value.trim();
    return h;
  }

  function sessionId() { return sessionStorage.getItem(SESSION); }
  function setSession(id) {
    if (id) sessionStorage.setItem(SESSION, id); else sessionStorage.removeItem(SESSION);
    $("session-label").textContent = id ? "session " + id : "new conversation";
  }

  // An error exactly as the API states it: status, code and message.
  function showError(status, body) {
    const e = (body && body.error) || {};
    const text = "HTTP " + status + " " + (e.code || "error") + ": " + (e.message || "");
    const box = el("div", "msg error", text);
    if (e.request_id) box.appendChild(document.createTextNode(" (request_id " + e.request_id + ")"));
    box.dataset.code = e.code || "";
  }

  async function errorOf(response) {
    try { return await response.json(); } catch (_) { return { error: { message: response.statusText } }; }
  }

  function textOf(content) {
    if (typeof content === "string") return content;
    if (Array.isArray(content)) return content.map((p) => (p && (p.text || p.refusal)) || "").join("");
    return "";
  }

  function toolCall(name, args) { el("div", "msg tool tool-call", "\u2192 " + name + "(" + args + ")"); }
  function toolResult(output) { el("div", "msg tool tool-result", "\u2190 " + output); }

  function showUsage(done) {
    const meta = el("div", "meta usage");
    const u = done.usage || {};
    meta.appendChild(document.createTextNode(
      "usage: " + (u.input_tokens ?? "?") + " in / " + (u.output_tokens ?? "?") + " out tokens, "
      + (u.requests ?? "?") + " model call(s)"));
    if (done.result && typeof done.result.url === "string" && /^https?:\/\//.test(done.result.url)) {
      meta.appendChild(document.createTextNode(" \u00b7 "));
      const link = document.createElement("a");
      link.href = done.result.url;
      link.rel = "noopener noreferrer";
      link.className = "download";
      link.textContent = "download the full answer (" + done.result.bytes + " bytes)";
      meta.appendChild(link);
    }
    for (const w of done.warnings || []) meta.appendChild(document.createTextNode(" \u00b7 " + w.message));
  }

  // Server-Sent Events from a fetch body: "event:" and "data:" lines, blank line ends one.
  async function* events(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) yield { name, data: JSON.parse(data.join("\n")) };
      }
    }
  }

  async function turn(message) {
    el("div", "msg user", message);
    const body = { message, stream: true };
    const id = sessionId();
    if (id) body.session_id = id;
    const response = await fetch("chat", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(body),
    });
    if (!response.ok) return showError(response.status, await errorOf(response));
    let bubble = null;
    for await (const event of events(response.body)) {
      if (event.name === "delta") {
        if (!bubble) bubble = el("div", "msg assistant streaming");
        bubble.appendChild(document.createTextNode(event.data.text));
        bubble.scrollIntoView({ block: "end" });
      } else if (event.name === "tool_call") {
        bubble = null;
        toolCall(event.data.name, event.data.arguments);
      } else if (event.name === "tool_result") {
        toolResult(event.data.output);
      } else if (event.name === "deltas_stopped") {
        el("div", "note", "(the rest of the answer arrives at the end)");
      } else if (event.name === "error") {
        if (bubble) bubble.classList.remove("streaming");
        return showError(200, event.data);
      } else if (event.name === "done") {
        const done = event.data;
        if (!bubble) bubble = el("div", "msg assistant");
        // The whole reply (or, when offloaded, its preview) is authoritative.
        bubble.textContent = done.reply;
        bubble.classList.remove("streaming");
        setSession(done.session_id);
        showUsage(done);
      }
    }
  }

  function showItem(item) {
    if (item.type === "function_call") return toolCall(item.name, item.arguments);
    if (item.type === "function_call_output") return toolResult(textOf(item.output) || item.output);
    if (item.role === "user") return el("div", "msg user", textOf(item.content));
    if (item.role === "assistant") {
      const text = textOf(item.content);
      if (text) el("div", "msg assistant", text);
    }
  }

  async function restore() {
    const id = sessionId();
    setSession(id);
    if (!id || authMode === "iam") return;
    const response = await fetch("sessions/" + encodeURIComponent(id), { headers: headers() });
    if (response.status === 404) {
      setSession(null);
      el("div", "note", "That conversation has expired; a new one starts with your next message.");
      return;
    }
    if (!response.ok) return showError(response.status, await errorOf(response));
    const history = await response.json();
    history.items.forEach(showItem);
    el("div", "note history-loaded", history.turns + " earlier turn(s) loaded; expires " + history.expires_at);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const message = input.value.trim();
    if (!message || busy) return;
    busy = true;
    send.disabled = true;
    input.value = "";
    try {
      await turn(message);
    } catch (err) {
      el("div", "msg error", "The request failed: " + err);
    } finally {
      busy = false;
      send.disabled = false;
      input.focus();
    }
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); form.requestSubmit(); }
  });
  $("new-conversation").addEventListener("click", () => {
    setSession(null);
    log.replaceChildren();
    el("div", "note", "New conversation.");
    input.focus();
  });

  if (authMode === "iam") {
    $("iam-help").hidden = false;
    $("iam-url").textContent = location.origin;
    form.hidden = true;
    $("new-conversation").hidden = true;
  } else if (authMode === "api_key") {
    const keyInput = $("api-key");
    $("key-panel").hidden = false;
    keyInput.value = sessionStorage.getItem(KEY) || "";
    keyInput.addEventListener("input", () => sessionStorage.setItem(KEY, keyInput.value.trim()));
  }
  restore().catch((err) => el("div", "msg error", "Could not load the conversation: " + err));
})();
