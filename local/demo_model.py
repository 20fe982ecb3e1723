"""A deterministic, offline, OpenAI-compatible Chat Completions server.

Why it exists: a newcomer without an API key can still run the agent locally and
watch the whole flow (model -> tool call -> tool result -> answer), and the test
suite gets a model that exercises the real ``openai`` HTTP transport instead of a
mock. Replies are rule-based and labelled ``[demo model]`` so nobody mistakes
them for a real model. Test controls (delay, failures, hangs, large replies) are
set in-process with ``control()`` or over HTTP with ``POST /_control``.

It is strict where OpenAI is strict, so that the service's context handling is tested
against the same refusals: with a context window (``context_tokens``, or the
``DEMO_CONTEXT_TOKENS`` environment variable) a request whose prompt passes it gets
OpenAI's 400 ``context_length_exceeded``; a ``tool`` message that answers no earlier
tool call, or a tool call left unanswered, gets 400 as well. Asked to summarise (a
system message starting with ``SUMMARIZE_INSTRUCTION``) it summarises extractively:
it keeps the sentences that carry names and numbers, oldest first (from the quoted
data it is given: JSON lines and strings are read for their text). A message starting
with ``SUMMARY_FRAME`` is a running summary sent back to it: not a user's message, and
its last quoted line is echoed in the reply.

Its rules, checked against the last message and the tools the request offers:

* A user message that asks to send something, with a ``send_message`` tool offered,
  gets a call ``send_message(to, text)``. Two phrasings are understood, anywhere in the
  message and in any case: ``send "hello there" to alice`` (the text in double or
  single quotes, or bare: then the recipient is the last word) and
  ``send alice a message saying hello there`` (also ``send a message to alice saying
  ...``). This rule comes before the calculator's, so a message may contain digits.
* A user message with an arithmetic expression, with ``calculate`` offered, gets a
  call ``calculate(expression)``.
* A user message that chains calculations with "then" (``1+1 then 2*3 then 4-1``) gets
  one ``calculate`` call per step, one model turn each: after each result the next
  expression is asked for, and after the last one the sentence below.
* A tool result gets a sentence about it: for ``send_message`` (found through the
  ``tool_call_id`` of the call it answers), ``Done: sent to alice.`` when the output
  starts with "sent", otherwise ``The message was not sent: <output>.`` (the output of
  a rejected call is the rejection message); for any other tool, ``The calculator
  says: <output>.``
* Anything else is echoed with the conversation's length and first message.

Call ids are deterministic (a checksum of the messages), so a retried request gets
the same id and another position in the conversation gets another. Controls make it
misbehave as some compatible servers do: ``call_id`` reuses one id for every call,
``call_arguments`` sends argument text as given (duplicate keys, say), ``call_copies``
repeats the call in one response (ids suffixed ``_1``, ``_2``, ... unless ``call_id``).

Run it in the foreground with ``python -m local.demo_model --port 8088``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL_NAME = "demo-model"
LATEST_ALIAS = f"{MODEL_NAME}-latest"
SNAPSHOT = f"{MODEL_NAME}-2026-06-01"
"""Asked for ``LATEST_ALIAS``, the demo answers as ``SNAPSHOT``, as OpenAI names the dated
model an alias resolved to in its response (traces must report the response's model)."""
PREFIX = "[demo model] "
QUOTE_LIMIT = 200
# Starts with a digit or "(" and ends with a digit or ")", so "?" and words stay out.
_EXPRESSION = re.compile(r"[\d(][\d\s.+\-*/()]*[\d)]")
_FILLER = " Demo padding."
_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error"}
SUMMARIZE_INSTRUCTION = "Summarize the conversation"
"""A system message that starts with this asks for a summary (agent/runtime/context.py
sends one)."""
SUMMARY_LIMIT = 1200
SUMMARY_FRAME = "[Summary of the earlier part of this conversation"
"""How agent/runtime/context.py frames a running summary it sends back (lines quoted
with "> ")."""
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]?")
_FACT = re.compile(r"\d|\s(?!I\b)[A-Z][a-z]+")  # a number, or a name inside the sentence
_SPEAKER = re.compile(r"^(user|assistant|tool result):\s*")
_RECIPIENT = r"(?P<to>[\w@+-]+(?:\.[\w@+-]+)*)"  # a name or an address, not a full stop
_SAYING = r"\s+(?:saying|that says)\s*:?\s*(?P<text>.+)"
_SEND_PATTERNS = [
    re.compile(p, re.IGNORECASE | re.DOTALL)
    for p in (
        # send "hello there" to alice (or 'hello there')
        rf"\bsend\s+(?:[\"“](?P<text>[^\"”]+)[\"”]|'(?P<single>[^']+)')\s+to\s+{_RECIPIENT}",
        rf"\bsend\s+an?\s+(?:message|note)\s+to\s+{_RECIPIENT}{_SAYING}",
        rf"\bsend\s+{_RECIPIENT}\s+an?\s+(?:message|note){_SAYING}",
        # unquoted, the text may hold " to ", so the recipient must end the message
        rf"\bsend\s+(?P<text>.+)\s+to\s+{_RECIPIENT}[\s.!?]*$",
    )
]

Json = dict[str, Any]


@dataclass(frozen=True)
class Controls:
    delay_seconds: float = 0.0
    fail_status: int | None = None
    fail_count: int = 0  # -1 fails until reset
    pass_count: int = 0  # requests answered before the failures begin
    hang_seconds: float = 0.0
    reply_bytes: int | None = None
    stream_chunk_delay_seconds: float = 0.0
    context_tokens: int | None = None  # the window; None: unlimited
    # A misbehaving compatible server: every tool call gets this id, these argument
    # bytes (duplicate keys, say), and comes this many times in one response.
    call_id: str | None = None
    call_arguments: str | None = None
    call_copies: int = 1


def _text_of(content: Any) -> str:
    """Message content is a string, a list of content parts, or None."""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _quote(text: str) -> str:
    return text if len(text) <= QUOTE_LIMIT else text[: QUOTE_LIMIT - 1] + "…"


def find_expression(text: str) -> str | None:
    """The first arithmetic expression in ``text`` that has an operator."""
    for match in _EXPRESSION.finditer(text):
        found = match.group().strip()
        # "(see 3+4)" would otherwise keep a dangling ")".
        while found.endswith(")") and found.count(")") > found.count("("):
            found = found[:-1].rstrip()
        if re.search(r"[\d)]\s*[+\-*/]\s*[\d(]", found):
            return found
    return None


def find_send(text: str) -> tuple[str, str] | None:
    """(recipient, text) when ``text`` asks to send a message, else None."""
    for pattern in _SEND_PATTERNS:
        match = pattern.search(text)
        if match:
            said = (match.group("text") or match.groupdict().get("single") or "").strip()
            if len(said) > 1 and said[0] == said[-1] and said[0] in "\"'":
                said = said[1:-1]  # saying "hi": the quotes are not part of the message
            return match.group("to"), said
    return None


def _answered_tool(messages: list[Json], call_id: Any) -> str | None:
    """The name of the tool whose call ``call_id`` answers, from the assistant's calls."""
    for message in reversed(messages):
        for call in message.get("tool_calls") or []:
            if isinstance(call, dict) and call.get("id") == call_id:
                return str((call.get("function") or {}).get("name"))
    return None


def _next_in_chain(messages: list[Json]) -> str | None:
    """The next expression of a chained request (``A then B then C``): the one after as
    many as have been answered since the last user message; None when all have been."""
    asked = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    if asked is None:
        return None
    parts = re.split(r"\bthen\b", _text_of(asked.get("content")), flags=re.IGNORECASE)
    chain = [e for e in (find_expression(p) for p in parts) if e is not None]
    answered = sum(1 for m in messages[messages.index(asked) :] if m.get("role") == "tool")
    return chain[answered] if len(chain) > 1 and answered < len(chain) else None


def fit_to_bytes(text: str, size: int) -> str:
    """Cut or pad ``text`` to exactly ``size`` UTF-8 bytes; the filler is ASCII."""
    text = text.encode()[:size].decode(errors="ignore")  # a cut may split a character
    filler = _FILLER * (size // len(_FILLER) + 1)
    return text + filler[: size - len(text.encode())]


def decide_reply(messages: list[Json], tools: Any) -> tuple[str, Json | None]:
    """(text, None) for a text reply, or ("", tool_call) for a call to a tool."""
    last = messages[-1]
    summaries = [_text_of(m.get("content")) for m in messages if _is_summary(m)]
    users = [
        _text_of(m.get("content"))
        for m in messages
        if m.get("role") == "user" and not _is_summary(m)
    ]
    offered = {(t.get("function") or {}).get("name") for t in tools or [] if isinstance(t, dict)}
    call_id = f"call_{zlib.crc32(json.dumps(messages, sort_keys=True).encode())}"
    if last.get("role") == "user":
        said = _text_of(last.get("content"))
        send = find_send(said) if "send_message" in offered else None
        if send is not None:
            arguments = json.dumps({"to": send[0], "text": send[1]})
            return "", {"id": call_id, "name": "send_message", "arguments": arguments}
        expression = find_expression(said) if "calculate" in offered else None
        if expression is not None:
            arguments = json.dumps({"expression": expression})
            return "", {"id": call_id, "name": "calculate", "arguments": arguments}
    if last.get("role") == "tool":
        output = _text_of(last.get("content"))
        following = _next_in_chain(messages) if "calculate" in offered else None
        if following is not None:
            arguments = json.dumps({"expression": following})
            return "", {"id": call_id, "name": "calculate", "arguments": arguments}
        if _answered_tool(messages, last.get("tool_call_id")) != "send_message":
            return f"{PREFIX}The calculator says: {output}.", None
        if output.startswith("sent"):
            return f"{PREFIX}Done: {output.rstrip('.')}.", None
        return f"{PREFIX}The message was not sent: {output.rstrip('.')}.", None
    said = _quote(users[-1]) if users else ""
    text = f'{PREFIX}You said: "{said}". This is message {len(users)} of our conversation'
    if len(users) > 1:
        text += f'; your first message was: "{_quote(users[0])}"'
    if summaries:
        quoted = [line[2:] for line in summaries[-1].splitlines() if line.startswith("> ")]
        text += f'; from the summary: "{_quote(quoted[-1] if quoted else "")}"'
    return text + ".", None


def prompt_tokens(messages: list[Json], tools: Any = None) -> int:
    """The prompt's size as this model counts it: a quarter of its text, tool call
    arguments and the tools' definitions included (OpenAI counts those too)."""
    calls = [c for m in messages for c in m.get("tool_calls") or [] if isinstance(c, dict)]
    arguments = sum(len(str((c.get("function") or {}).get("arguments", ""))) for c in calls)
    schemas = len(json.dumps(tools, separators=(",", ":"))) if tools else 0
    text = sum(len(_text_of(m.get("content"))) for m in messages)
    return math.ceil((text + arguments + schemas) / 4)


def order_error(messages: list[Json]) -> str | None:
    """What OpenAI would refuse about the order of tool calls and answers, or None."""
    open_calls: list[str] = []
    for index, message in enumerate(messages):
        role = message.get("role")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in open_calls:
                return (
                    f"Invalid parameter: messages with role 'tool' must be a response to a"
                    f" preceding message with 'tool_calls' (messages.[{index}])."
                )
            open_calls.remove(call_id)
            continue
        if open_calls:
            return (
                "An assistant message with 'tool_calls' must be followed by tool messages"
                f" responding to each 'tool_call_id'. Missing: {', '.join(open_calls)}."
            )
        if role == "assistant":
            open_calls = [str(c.get("id")) for c in message.get("tool_calls") or []]
    return None


def summarize(messages: list[Json]) -> str:
    """An extractive summary: the sentences with names or numbers, oldest first, as
    many as fit ``SUMMARY_LIMIT`` characters."""
    kept: list[str] = []
    size = 0
    for message in messages[1:]:  # the first is the instruction
        for line in _unquoted(_text_of(message.get("content"))).splitlines():
            line = _SPEAKER.sub("", line.strip())
            if line.startswith(PREFIX.strip()):
                continue  # the demo's own replies carry no facts of the user's
            for sentence in _SENTENCE.findall(line):
                sentence = sentence.strip()
                if sentence.endswith(":") or not _FACT.search(sentence) or sentence in kept:
                    continue
                if size + len(sentence) + 1 > SUMMARY_LIMIT:
                    return " ".join(kept)
                kept.append(sentence)
                size += len(sentence) + 1
    return " ".join(kept)


def _is_summary(message: Json) -> bool:
    return _text_of(message.get("content")).startswith(SUMMARY_FRAME)


def _unquoted(text: str) -> str:
    """The text of quoted data: a JSON object's ``text`` or a JSON string, line by line
    (other lines as they are)."""
    lines = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            value = line
        if isinstance(value, dict):
            value = value.get("text")
        lines.append(value if isinstance(value, str) else line)
    return "\n".join(lines)


def usage_for(messages: list[Json], reply: str, tools: Any = None) -> dict[str, int]:
    prompt = prompt_tokens(messages, tools)
    completion = math.ceil(len(reply) / 4)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _wire_call(call: Json, arguments: str) -> Json:
    return {
        "id": call["id"],
        "type": "function",
        "function": {"name": call["name"], "arguments": arguments},
    }


def misbehave(call: Json | None, controls: Controls) -> list[Json]:
    """The calls of a response, as the controls make them (one, normally)."""
    if call is None:
        return []
    if controls.call_arguments is not None:
        call = {**call, "arguments": controls.call_arguments}
    copies = max(1, int(controls.call_copies))
    calls = [
        {**call, "id": f"{call['id']}_{n}"} if copies > 1 else call for n in range(1, copies + 1)
    ]
    if controls.call_id is not None:
        calls = [{**c, "id": controls.call_id} for c in calls]
    return calls


def completion_body(meta: Json, text: str, calls: list[Json], usage: dict[str, int]) -> Json:
    call = calls[0] if calls else None
    message: Json = {"role": "assistant", "content": None if call else text, "refusal": None}
    if call:
        message["tool_calls"] = [_wire_call(c, c["arguments"]) for c in calls]
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": "tool_calls" if call else "stop",
    }
    return {**meta, "object": "chat.completion", "choices": [choice], "usage": usage}


def stream_chunks(
    meta: Json, text: str, calls: list[Json], usage: dict[str, int] | None
) -> Iterator[Json]:
    """Chunks in OpenAI's order: role, content or tool-call pieces, finish, then usage."""
    base = {**meta, "object": "chat.completion.chunk"} | ({"usage": None} if usage else {})

    def chunk(delta: Json, finish: str | None = None) -> Json:
        return {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    call = calls[0] if calls else None
    for index, each in enumerate(calls):
        # id and name come first with empty arguments, then argument fragments
        first_call = {"index": index, **_wire_call(each, "")}
        role = {"role": "assistant", "content": None} if index == 0 else {}
        yield chunk({**role, "tool_calls": [first_call]})
        args = each["arguments"]
        for piece in (args[start : start + 8] for start in range(0, len(args), 8)):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    if not calls:
        yield chunk({"role": "assistant", "content": "", "refusal": None})
        for word in re.findall(r"\S+\s*|\s+", text):
            yield chunk({"content": word})
    yield chunk({}, "tool_calls" if call else "stop")
    if usage:
        yield {**base, "choices": [], "usage": usage}


def error_body(status: int, message: str, code: str | None = None) -> Json:
    kind = _ERROR_TYPES.get(status, "server_error")
    param = "messages" if code == "context_length_exceeded" else None
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 stalls bursts of concurrent clients
    demo: DemoModelServer


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive like the real API, so every reply needs a Content-Length or chunking.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm the body
    # waits for the client's delayed ACK, adding 40 ms to every reply.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output and the demo console readable

    def do_GET(self) -> None:
        if self.path.split("?")[0].rstrip("/") != "/v1/models":
            return self._json(404, error_body(404, f"No route for GET {self.path}"))
        model = {"id": MODEL_NAME, "object": "model", "created": 0, "owned_by": "demo"}
        self._json(200, {"object": "list", "data": [model]})

    def do_POST(self) -> None:
        try:
            self._route(self.path.split("?")[0].rstrip("/"))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. its timeout); nobody to answer

    def _route(self, path: str) -> None:
        demo = self.server.demo
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path == "/_control/reset":
            demo.reset()
            return self._json(200, demo.controls)
        try:
            body = json.loads(raw)
        except ValueError:
            return self._json(400, error_body(400, "Request body is not valid JSON."))
        if path == "/_control":
            try:
                if not isinstance(body, dict):
                    raise ValueError("Controls must be a JSON object.")
                demo.control(**body)
            except ValueError as exc:
                return self._json(400, error_body(400, str(exc)))
            return self._json(200, demo.controls)
        if path != "/v1/chat/completions":
            return self._json(404, error_body(404, f"No route for POST {self.path}"))
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages:
            return self._json(400, error_body(400, "'messages' must be a non-empty list."))
        if not all(isinstance(m, dict) for m in messages):
            return self._json(400, error_body(400, "Every message must be an object."))
        self._complete(demo, body, messages)

    def _complete(self, demo: DemoModelServer, body: Json, messages: list[Json]) -> None:
        controls, fail_status = demo._begin(body)
        demo._sleep(controls.delay_seconds)
        if controls.hang_seconds:
            demo._sleep(controls.hang_seconds)
            self.close_connection = True  # drop the socket unanswered, like a dead provider
            return
        if fail_status is not None:
            message = f"Simulated failure (HTTP {fail_status})."
            return self._json(fail_status, error_body(fail_status, message))
        window = controls.context_tokens or demo.context_tokens
        prompt = prompt_tokens(messages, body.get("tools"))
        if window is not None and prompt > window:
            message = (
                f"This model's maximum context length is {window} tokens. However, your"
                f" messages resulted in {prompt} tokens. Please reduce the"
                " length of the messages."
            )
            return self._json(400, error_body(400, message, "context_length_exceeded"))
        problem = order_error(messages)
        if problem is not None:
            return self._json(400, error_body(400, problem))
        first = messages[0]
        if first.get("role") == "system" and _text_of(first.get("content")).startswith(
            SUMMARIZE_INSTRUCTION
        ):
            text, call = summarize(messages), None
        else:
            text, call = decide_reply(messages, body.get("tools"))
        if call is None and controls.reply_bytes is not None:
            text = fit_to_bytes(text, controls.reply_bytes)
        calls = misbehave(call, controls)
        usage = usage_for(messages, call["arguments"] if call else text, body.get("tools"))
        demo._bill(usage)
        digest = zlib.crc32(json.dumps(messages, sort_keys=True).encode())
        meta = {
            "id": f"chatcmpl-demo{digest:08x}",
            "created": int(time.time()),
            "model": SNAPSHOT
            if body.get("model") == LATEST_ALIAS
            else body.get("model") or MODEL_NAME,
            "system_fingerprint": None,
        }
        if not body.get("stream"):
            return self._json(200, completion_body(meta, text, calls, usage))
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunks = stream_chunks(meta, text, calls, usage if wants_usage else None)
        for i, chunk in enumerate(chunks):
            demo._sleep(controls.stream_chunk_delay_seconds if i else 0)
            self._send_chunk(f"data: {json.dumps(chunk)}\n\n".encode())
        self._send_chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _send_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class DemoModelServer:
    """The demo model on a background daemon thread; also a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._controls = Controls()
        window = os.environ.get("DEMO_CONTEXT_TOKENS")
        self.context_tokens: int | None = int(window) if window else None
        """The context window set at start (``DEMO_CONTEXT_TOKENS``); a control overrides."""
        self._requests: list[Json] = []
        self._usages: list[dict[str, int]] = []
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1] if self._httpd else self._port

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}/v1"

    @property
    def requests(self) -> list[Json]:
        """A snapshot of every chat completion request body received, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def usages(self) -> list[dict[str, int]]:
        """The usage of every answer it generated (and would bill), streamed or not,
        whether or not the client read it to the end; oldest first."""
        with self._lock:
            return list(self._usages)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    @property
    def controls(self) -> Json:
        with self._lock:
            return asdict(self._controls)

    def control(self, **changes: Any) -> None:
        """Change test controls; setting fail_status without fail_count fails one request."""
        known = {f.name for f in fields(Controls)}
        for key, value in changes.items():
            if key not in known:
                raise ValueError(f"Unknown control {key!r}; known: {sorted(known)}")
            nullable = value is None and key in (
                "fail_status",
                "reply_bytes",
                "context_tokens",
                "call_id",
                "call_arguments",
            )
            text = key in ("call_id", "call_arguments") and isinstance(value, str)
            if nullable or text:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"Control {key!r} must be a number, got {value!r}")
        if "fail_status" in changes and "fail_count" not in changes:
            changes["fail_count"] = 1
        with self._lock:
            self._controls = replace(self._controls, **changes)

    def reset(self) -> None:
        """Restore default controls and forget recorded requests."""
        with self._lock:
            self._controls = Controls()
            self._requests.clear()
            self._usages.clear()

    def start(self) -> None:
        if self._httpd is not None:
            return
        self._stopping.clear()
        self._httpd = httpd = _HTTPServer((self._host, self._port), _Handler)
        httpd.demo = self
        # A short poll interval keeps stop(), and so every test teardown, fast.
        poll = {"poll_interval": 0.05}
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs=poll, name="demo-model", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is None or self._thread is None:
            return
        self._stopping.set()  # wakes handlers sleeping on delay or hang controls
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> DemoModelServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _begin(self, body: Json) -> tuple[Controls, int | None]:
        """Record a request and consume one scheduled failure, atomically."""
        with self._lock:
            self._requests.append(body)
            controls = self._controls
            if controls.fail_status is None or controls.fail_count == 0:
                return controls, None
            if controls.pass_count > 0:
                self._controls = replace(controls, pass_count=controls.pass_count - 1)
                return controls, None
            if controls.fail_count > 0:
                self._controls = replace(controls, fail_count=controls.fail_count - 1)
            return controls, int(controls.fail_status)

    def _bill(self, usage: dict[str, int]) -> None:
        with self._lock:
            self._usages.append(usage)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Offline OpenAI-compatible demo model.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8088)
    args = parser.parse_args(argv)
    with DemoModelServer(args.host, args.port) as server:
        print(f"Demo model listening on {server.base_url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass  # Ctrl-C is the normal way to stop; the context manager shuts down


if __name__ == "__main__":
    main()
