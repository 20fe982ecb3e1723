// The playground: one conversation with the agent over its own API (same origin).
// Everything the server or the model sends is shown as text nodes, never parsed as HTML.
"use strict";
(() => {
  const SESSION = "agent.playground.session";
  const KEY = "agent.playground.apiKey";
  const authMode = document.body.dataset.authMode;
  const $ = (id) => document.getElementById(id);
  const log = $("log"), form = $("composer"), input = $("message"), send = $("send");
  const typeHere = input.placeholder;
  let busy = false;
  // The paused run's calls awaiting a decision:
  // { sessionId, pauseId, calls, decisions, cards }.
  let pending = null;

  function child(parent, tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = String(text);
    parent.appendChild(node);
    return node;
  }

  function el(tag, cls, text) {
    const node = child(log, tag, cls, text);
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

  // Characters a person cannot see, or that reorder what they see (bidirectional
  // controls), shown as \u{...} escapes, so that what is read is what the text holds. The
  // server escapes them in the canonical arguments of pending calls too; history items
  // hold the model's own text.
  const HIDDEN = /[\p{Cc}\p{Cf}\p{Co}\p{Cs}\p{Cn}\p{Zl}\p{Zp}\p{Zs}\u115f\u1160\u3164\uffa0\ufe00-\ufe0f\u{e0100}-\u{e01ef}]/gu;
  function visible(text) {
    return String(text).replace(HIDDEN, (c) => (c === " " || c === "\n" || c === "\t") ? c
      : "\\u{" + c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0") + "}");
  }

  function toolCall(name, args) {
    el("div", "msg tool tool-call", "\u2192 " + visible(name) + "(" + visible(args) + ")");
  }
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

  // While a paused run waits for decisions the server refuses new messages (409
  // approval_pending), so the composer is locked rather than left to fail.
  function lockComposer(locked) {
    input.disabled = locked;
    send.disabled = locked || busy;
    input.placeholder = locked ? "Approve or reject the tool call(s) above first" : typeHere;
  }

  function endApprovals(note) {
    if (pending) {
      for (const card of pending.cards) {
        for (const control of card.querySelectorAll("button, input")) control.disabled = true;
        if (note && !card.dataset.decision) card.querySelector(".approval-status").textContent = note;
      }
    }
    pending = null;
    lockComposer(false);
  }

  // One card per pending call, with Approve and Reject; the server needs a decision for
  // every pending call, so the decisions go out together once the last one is made.
  // The cards stay disabled until the request has ended (armApprovals, from run): the
  // session id comes with the response's end, and one request runs at a time.
  function askApproval(calls, pauseId) {
    endApprovals();
    if (!calls.length) return;
    const box = el("div", "approvals");
    child(box, "div", "approvals-title",
      calls.length === 1 ? "The agent wants to run a tool that needs your approval:"
        : "The agent wants to run " + calls.length + " tools that need your approval:");
    const cards = calls.map((call) => {
      const card = child(box, "div", "approval");
      card.dataset.callId = call.call_id;
      card.dataset.tool = call.tool;
      child(card, "div", "approval-call", visible(call.tool) + "(" + visible(call.arguments) + ")");
      const row = child(card, "div", "approval-row");
      const approve = child(row, "button", "approve", "Approve");
      const reject = child(row, "button", "reject", "Reject");
      const reason = child(row, "input", "approval-reason");
      reason.placeholder = "reason (optional, sent with Reject)";
      child(row, "span", "approval-status muted");
      for (const [button, ok] of [[approve, true], [reject, false]]) {
        button.type = "button";
        button.dataset.callId = call.call_id;
        button.addEventListener("click", () => decide(card, ok));
      }
      for (const control of card.querySelectorAll("button, input")) control.disabled = true;
      return card;
    });
    pending = { sessionId: null, pauseId, calls, decisions: new Map(), cards, armed: false };
    lockComposer(true);
    box.scrollIntoView({ block: "end" });
  }

  function armApprovals() {
    if (pending.armed) return;
    pending.armed = true;
    pending.decisions.clear();
    for (const card of pending.cards) {
      delete card.dataset.decision;
      card.querySelector(".approval-status").textContent = "";
      for (const control of card.querySelectorAll("button, input")) control.disabled = false;
    }
  }

  function decide(card, approve) {
    if (!pending || !pending.armed || busy) return;
    const decision = { call_id: card.dataset.callId, approve };
    const reason = card.querySelector(".approval-reason").value.trim();
    if (!approve && reason) decision.reason = reason;
    pending.decisions.set(decision.call_id, decision);
    card.dataset.decision = approve ? "approved" : "rejected";
    for (const control of card.querySelectorAll("button, input")) control.disabled = true;
    card.querySelector(".approval-status").textContent = approve ? "approved" : "rejected";
    if (pending.decisions.size === pending.calls.length) {
      pending.armed = false;
      run(submitDecisions);
    }
  }

  async function submitDecisions() {
    const asked = pending;
    const decisions = asked.calls.map((call) => asked.decisions.get(call.call_id));
    const path = "sessions/" + encodeURIComponent(asked.sessionId) + "/approvals";
    const outcome = await exchange(path, { pause_id: asked.pauseId, decisions });
    if (pending !== asked) return;  // a new approval_required replaced these cards
    if (outcome.ok) return endApprovals();
    // A failure that leaves the run paused (nothing was stored): run re-arms the cards.
    if (!outcome.retry) endApprovals("no longer pending");
  }

  // POST a message or decisions and render the streamed answer. The outcome says whether
  // the turn completed (or paused again), and after a failure whether retrying may work.
  async function exchange(path, body) {
    const response = await fetch(path, {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(Object.assign({ stream: true }, body)),
    });
    if (!response.ok) {
      const error = await errorOf(response);
      showError(response.status, error);
      const code = (error && error.error && error.error.code) || "";
      const retry = response.status >= 500 || response.status === 429 || code === "session_busy";
      return { ok: false, retry, code };
    }
    if (!(response.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
      return finish(await response.json(), null, false, false);
    }
    let bubble = null, streamed = false, asked = false, outcome = { ok: false, retry: true };
    for await (const event of events(response.body)) {
      if (event.name === "delta") {
        if (!bubble) bubble = el("div", "msg assistant streaming");
        bubble.appendChild(document.createTextNode(event.data.text));
        bubble.scrollIntoView({ block: "end" });
        streamed = true;
      } else if (event.name === "tool_call") {
        if (bubble) bubble.classList.remove("streaming");
        bubble = null;
        toolCall(event.data.name, event.data.arguments);
      } else if (event.name === "tool_result") {
        toolResult(event.data.output);
      } else if (event.name === "approval_required") {
        if (bubble) bubble.classList.remove("streaming");
        bubble = null;
        askApproval(event.data.pending_approvals || [], event.data.pause_id);
        asked = true;
      } else if (event.name === "deltas_stopped") {
        el("div", "note", "(the rest of the answer arrives at the end)");
      } else if (event.name === "error") {
        if (bubble) bubble.classList.remove("streaming");
        showError(200, event.data);
        return { ok: false, retry: true };
      } else if (event.name === "done") {
        outcome = finish(event.data, bubble, streamed, asked);
      }
    }
    return outcome;
  }

  function finish(done, bubble, streamed, asked) {
    if (done.status === "approval_required") {
      // The reply is the text written before the call, already streamed if any.
      if (bubble) bubble.classList.remove("streaming");
      else if (done.reply && !streamed) el("div", "msg assistant", done.reply);
      if (!asked) askApproval(done.pending_approvals || [], done.pause_id);
    } else {
      if (!bubble) bubble = el("div", "msg assistant");
      // The whole reply (or, when offloaded, its preview) is authoritative.
      bubble.textContent = done.reply;
      bubble.classList.remove("streaming");
    }
    setSession(done.session_id);
    showUsage(done);
    if (done.status === "approval_required" && pending) pending.sessionId = done.session_id;
    return { ok: true };
  }

  async function turn(message) {
    el("div", "msg user", message);
    const body = { message };
    const id = sessionId();
    if (id) body.session_id = id;
    const outcome = await exchange("chat", body);
    // Paused elsewhere (another tab, or before a reload): fetch the calls to decide on.
    if (outcome.code === "approval_pending" && id) await showPending(id, await history(id));
  }

  async function history(id) {
    const response = await fetch("sessions/" + encodeURIComponent(id), { headers: headers() });
    if (response.ok) return response.json();
    if (response.status !== 404) showError(response.status, await errorOf(response));
    return null;
  }

  async function showPending(id, session) {
    const calls = (session && session.pending_approvals) || [];
    if (!calls.length || pending) return;
    askApproval(calls, session.pause_id);
    pending.sessionId = id;
    if (!busy) armApprovals();
  }

  // One request at a time: a message or a set of decisions.
  async function run(work) {
    busy = true;
    send.disabled = true;
    try {
      await work();
    } catch (err) {
      el("div", "msg error", "The request failed: " + err);
    } finally {
      busy = false;
      // Cards without a session id came with a response that never finished: the run
      // was not stored paused, so there is nothing to decide.
      if (pending && pending.sessionId) armApprovals();
      else if (pending) endApprovals("not stored; send the message again");
      send.disabled = input.disabled;
      if (!input.disabled) input.focus();
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
    const session = await response.json();
    session.items.forEach(showItem);
    el("div", "note history-loaded", session.turns + " earlier turn(s) loaded; expires " + session.expires_at);
    showPending(id, session);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const message = input.value.trim();
    if (!message || busy || pending) return;
    input.value = "";
    await run(() => turn(message));
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); form.requestSubmit(); }
  });
  $("new-conversation").addEventListener("click", () => {
    endApprovals();
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
