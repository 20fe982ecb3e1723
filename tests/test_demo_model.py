"""Tests for the offline demo model, driven through the real openai client over HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

from local.demo_model import DemoModelServer
from tests.support.constants import MODEL

# The server is plain HTTP; one shared TLS context just saves ~20 ms of certificate
# loading for every client these tests create.
_TLS = ssl.create_default_context()

CALCULATE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "calculate",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}

SEND_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "send_message",
        "description": "Send a message to someone.",
        "parameters": {
            "type": "object",
            "properties": {"to": {"type": "string"}, "text": {"type": "string"}},
            "required": ["to", "text"],
        },
    },
}


@pytest.fixture
def server() -> Iterator[DemoModelServer]:
    with DemoModelServer() as running:
        yield running


def client_for(server: DemoModelServer, **kwargs: Any) -> AsyncOpenAI:
    http_client = openai.DefaultAsyncHttpxClient(verify=_TLS)
    return AsyncOpenAI(
        base_url=server.base_url, api_key="test", max_retries=0, http_client=http_client, **kwargs
    )


def ask(server: DemoModelServer, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    async def go() -> Any:
        async with client_for(server) as client:
            return await client.chat.completions.create(model=MODEL, messages=messages, **kwargs)

    return asyncio.run(go())


def ask_streamed(
    server: DemoModelServer, messages: list[dict[str, Any]], **kwargs: Any
) -> list[Any]:
    async def go() -> list[Any]:
        async with client_for(server) as client:
            stream = await client.chat.completions.create(
                model=MODEL, messages=messages, stream=True, **kwargs
            )
            return [chunk async for chunk in stream]

    return asyncio.run(go())


def post(server: DemoModelServer, path: str, data: bytes) -> tuple[int, Any]:
    url = server.base_url.removesuffix("/v1") + path
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_plain_reply_and_usage(server: DemoModelServer) -> None:
    reply = ask(
        server, [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "hello"}]
    )
    text = reply.choices[0].message.content
    assert text == '[demo model] You said: "hello". This is message 1 of our conversation.'
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens == 4  # ceil((8 + 5) / 4)
    assert reply.usage.completion_tokens == -(-len(text) // 4)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert server.request_count == 1
    assert server.requests[0]["messages"][-1] == {"role": "user", "content": "hello"}


def test_reply_mentions_first_message_only_when_history_is_sent(server: DemoModelServer) -> None:
    history = [
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": [{"type": "text", "text": "what is my name?"}]},
    ]
    text = ask(server, history).choices[0].message.content
    assert text == (
        '[demo model] You said: "what is my name?". This is message 2 of our conversation; '
        'your first message was: "my name is Ada".'
    )


def test_long_messages_are_quoted_truncated(server: DemoModelServer) -> None:
    text = ask(server, [{"role": "user", "content": "x" * 300}]).choices[0].message.content
    assert f'"{"x" * 199}…"' in text
    assert "x" * 200 not in text


def test_tool_call_round_trip(server: DemoModelServer) -> None:
    question = {"role": "user", "content": "what is 12 * (3 + 4)?"}
    first = ask(server, [question], tools=[CALCULATE_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.function.name == "calculate"
    assert json.loads(call.function.arguments) == {"expression": "12 * (3 + 4)"}
    assert re.fullmatch(r"call_\d+", call.id)
    assert (
        ask(server, [question], tools=[CALCULATE_TOOL]).choices[0].message.tool_calls[0].id
        == call.id
    )

    history = [
        question,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "84"},
    ]
    second = ask(server, history, tools=[CALCULATE_TOOL])
    assert second.choices[0].message.content == "[demo model] The calculator says: 84."


def test_no_tool_call_without_the_tool_or_an_operator(server: DemoModelServer) -> None:
    assert (
        ask(server, [{"role": "user", "content": "what is 12 * 3?"}]).choices[0].message.tool_calls
        is None
    )
    plain = ask(server, [{"role": "user", "content": "I am 42 years old"}], tools=[CALCULATE_TOOL])
    assert plain.choices[0].message.tool_calls is None


def test_streamed_tool_call_reassembles(server: DemoModelServer) -> None:
    chunks = ask_streamed(
        server, [{"role": "user", "content": "what is 12 * (3 + 4)?"}], tools=[CALCULATE_TOOL]
    )
    ids, names, arguments = set(), "", ""
    for chunk in chunks:
        for delta_call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            assert delta_call.index == 0
            ids.add(delta_call.id) if delta_call.id else None
            names += delta_call.function.name or ""
            arguments += delta_call.function.arguments or ""
    assert len(chunks) > 3  # arguments really arrive in fragments
    assert names == "calculate" and len(ids) == 1
    assert json.loads(arguments) == {"expression": "12 * (3 + 4)"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_streamed_text_matches_non_streamed(server: DemoModelServer) -> None:
    messages = [{"role": "user", "content": "first"}, {"role": "user", "content": "second one"}]
    plain = ask(server, messages)
    chunks = ask_streamed(server, messages, stream_options={"include_usage": True})
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert (
        sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 5
    )  # word-sized deltas
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert all(c.usage is None for c in ask_streamed(server, messages))  # usage only when asked


@pytest.mark.parametrize(
    ("said", "to", "text"),
    [
        ('send "hello there" to alice', "alice", "hello there"),
        ("Please send 'hi, 2+2 is 4' to Bob.", "Bob", "hi, 2+2 is 4"),
        ("send hello there to alice!", "alice", "hello there"),
        ("send the plan to the team to bob", "bob", "the plan to the team"),
        ("send alice a message saying hello there", "alice", "hello there"),
        ('send a message to bob@example.com saying: "meet at 5"', "bob@example.com", "meet at 5"),
    ],
)
def test_asked_to_send_it_calls_send_message(
    server: DemoModelServer, said: str, to: str, text: str
) -> None:
    reply = ask(server, [{"role": "user", "content": said}], tools=[CALCULATE_TOOL, SEND_TOOL])
    assert reply.choices[0].finish_reason == "tool_calls"
    [call] = reply.choices[0].message.tool_calls
    assert call.function.name == "send_message"
    assert json.loads(call.function.arguments) == {"to": to, "text": text}


def test_no_send_call_unless_offered_and_asked(server: DemoModelServer) -> None:
    asked = [{"role": "user", "content": 'send "hi" to alice'}]
    assert ask(server, asked, tools=[CALCULATE_TOOL]).choices[0].message.tool_calls is None
    chat = [{"role": "user", "content": "what did alice say?"}]
    assert ask(server, chat, tools=[SEND_TOOL]).choices[0].message.tool_calls is None


def _answer(call: Any, output: str) -> list[dict[str, Any]]:
    return [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": output},
    ]


def test_send_message_round_trip_sent_or_not(server: DemoModelServer) -> None:
    question = {"role": "user", "content": 'send "hi" to alice'}
    [call] = ask(server, [question], tools=[SEND_TOOL]).choices[0].message.tool_calls
    assert re.fullmatch(r"call_\d+", call.id)
    assert ask(server, [question], tools=[SEND_TOOL]).choices[0].message.tool_calls[0].id == call.id

    sent = ask(server, [question, *_answer(call, "sent to alice")], tools=[SEND_TOOL])
    assert sent.choices[0].message.content == "[demo model] Done: sent to alice."
    refused = "Tool call rejected by the user: not now."
    not_sent = ask(server, [question, *_answer(call, refused)], tools=[SEND_TOOL])
    assert not_sent.choices[0].message.content == (
        "[demo model] The message was not sent: Tool call rejected by the user: not now."
    )

    # The same request later in the conversation is another call.
    again = [question, *_answer(call, "sent to alice"), question]
    [later] = ask(server, again, tools=[SEND_TOOL]).choices[0].message.tool_calls
    assert later.function.name == "send_message" and later.id != call.id


def test_a_tool_result_is_matched_to_its_call_by_id(server: DemoModelServer) -> None:
    def wire(call_id: str, name: str, arguments: dict[str, str]) -> dict[str, Any]:
        function = {"name": name, "arguments": json.dumps(arguments)}
        return {"id": call_id, "type": "function", "function": function}

    calls = [
        wire("c_send", "send_message", {"to": "alice", "text": "hi"}),
        wire("c_calc", "calculate", {"expression": "2+2"}),
    ]
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c_send", "content": "sent to alice"},
        {"role": "tool", "tool_call_id": "c_calc", "content": "4"},
    ]
    tools = [CALCULATE_TOOL, SEND_TOOL]
    assert ask(server, history, tools=tools).choices[0].message.content == (
        "[demo model] The calculator says: 4."
    )
    history[2:] = history[:1:-1]  # the send result answered last
    assert ask(server, history, tools=tools).choices[0].message.content == (
        "[demo model] Done: sent to alice."
    )


def test_streamed_send_call_reassembles(server: DemoModelServer) -> None:
    messages = [{"role": "user", "content": "send alice a message saying hello there"}]
    chunks = ask_streamed(server, messages, tools=[SEND_TOOL])
    names, arguments = "", ""
    for chunk in chunks:
        for delta_call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            names += delta_call.function.name or ""
            arguments += delta_call.function.arguments or ""
    assert names == "send_message"
    assert json.loads(arguments) == {"to": "alice", "text": "hello there"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_fail_status_fails_the_next_request_only(server: DemoModelServer) -> None:
    server.control(fail_status=500, fail_count=1)
    with pytest.raises(openai.InternalServerError):
        ask(server, [{"role": "user", "content": "hi"}])
    assert (
        ask(server, [{"role": "user", "content": "hi"}])
        .choices[0]
        .message.content.startswith("[demo model] ")
    )
    assert server.request_count == 2


def test_fail_forever_until_reset(server: DemoModelServer) -> None:
    server.control(fail_status=429, fail_count=-1)
    for _ in range(3):
        with pytest.raises(openai.RateLimitError):
            ask(server, [{"role": "user", "content": "hi"}])
    server.reset()
    assert server.request_count == 0
    assert ask(server, [{"role": "user", "content": "hi"}]).choices[0].message.content


def test_delay_is_honoured(server: DemoModelServer) -> None:
    server.control(delay_seconds=0.2)
    started = time.monotonic()
    ask(server, [{"role": "user", "content": "hi"}])
    assert time.monotonic() - started >= 0.2


def test_stream_chunk_delay_is_honoured(server: DemoModelServer) -> None:
    server.control(stream_chunk_delay_seconds=0.01)
    started = time.monotonic()
    chunks = ask_streamed(server, [{"role": "user", "content": "hi"}])
    assert time.monotonic() - started >= 0.01 * (len(chunks) - 1)


def test_hang_drops_the_connection(server: DemoModelServer) -> None:
    server.control(hang_seconds=0.1)
    with pytest.raises(openai.APIConnectionError):
        ask(server, [{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("size", [20, 5000])
def test_reply_bytes_is_exact(server: DemoModelServer, size: int) -> None:
    server.control(reply_bytes=size)
    messages = [{"role": "user", "content": "héllo wörld ✓"}]
    text = ask(server, messages).choices[0].message.content
    assert len(text.encode()) == size
    assert text.startswith("[demo model] ")
    streamed = "".join(
        c.choices[0].delta.content or "" for c in ask_streamed(server, messages) if c.choices
    )
    assert streamed == text


def test_http_control_endpoint(server: DemoModelServer) -> None:
    status, controls = post(
        server, "/_control", json.dumps({"delay_seconds": 0.1, "reply_bytes": 64}).encode()
    )
    assert status == 200 and controls["delay_seconds"] == 0.1
    assert server.controls["reply_bytes"] == 64
    started = time.monotonic()
    text = ask(server, [{"role": "user", "content": "hi"}]).choices[0].message.content
    assert time.monotonic() - started >= 0.1 and len(text.encode()) == 64

    assert post(server, "/_control", b'{"no_such_control": 1}')[0] == 400
    assert post(server, "/_control", b'{"delay_seconds": "slow"}')[0] == 400
    assert post(server, "/_control/reset", b"")[0] == 200
    assert server.controls["delay_seconds"] == 0 and server.request_count == 0


def test_bad_requests_get_openai_style_400(server: DemoModelServer) -> None:
    status, body = post(server, "/v1/chat/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        ask(server, [])


def test_models_endpoint(server: DemoModelServer) -> None:
    async def go() -> list[str]:
        async with client_for(server) as client:
            return [model.id async for model in client.models.list()]

    assert asyncio.run(go()) == [MODEL]


def test_eighty_concurrent_requests(server: DemoModelServer) -> None:
    server.control(delay_seconds=0.2)

    async def go() -> list[str]:
        async with client_for(server, timeout=10) as client:
            replies = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="x", messages=[{"role": "user", "content": f"n{i}"}]
                    )
                    for i in range(80)
                )
            )
        return [r.choices[0].message.content for r in replies]

    started = time.monotonic()
    texts = asyncio.run(go())
    assert time.monotonic() - started < 3  # served in parallel, not one after another
    assert sorted(texts) == sorted(
        f'[demo model] You said: "n{i}". This is message 1 of our conversation.' for i in range(80)
    )
    assert server.request_count == 80


def _agent(client: AsyncOpenAI) -> Agent[Any]:
    set_tracing_disabled(True)

    @function_tool
    def calculate(expression: str) -> str:
        """Evaluate an arithmetic expression."""
        assert re.fullmatch(r"[\d\s.+\-*/()]+", expression)
        return str(eval(expression, {"__builtins__": {}}))  # safe: only digits and operators

    model = OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
    return Agent(
        name="Demo",
        instructions="Use the calculator for arithmetic.",
        tools=[calculate],
        model=model,
    )


def test_agents_sdk_runs_the_tool_loop(server: DemoModelServer) -> None:
    async def go() -> Any:
        async with client_for(server) as client:
            return await Runner.run(_agent(client), "what is 6 * 7?")

    result = asyncio.run(go())
    assert "42" in result.final_output
    assert result.final_output.startswith("[demo model] ")
    assert server.request_count == 2
    assert server.requests[1]["messages"][-1]["role"] == "tool"


def test_agents_sdk_streamed_run(server: DemoModelServer) -> None:
    async def go() -> str:
        async with client_for(server) as client:
            result = Runner.run_streamed(_agent(client), "what is 6 * 7?")
            async for _ in result.stream_events():
                pass
            return str(result.final_output)

    assert asyncio.run(go()) == "[demo model] The calculator says: 42."


def test_past_its_context_window_it_answers_like_openai(server: DemoModelServer) -> None:
    server.control(context_tokens=10)
    fits = [{"role": "user", "content": "x" * 40}]  # 10 tokens
    assert ask(server, fits).choices[0].message.content
    with pytest.raises(openai.BadRequestError) as refused:
        ask(server, [{"role": "user", "content": "x" * 44}])
    assert refused.value.code == "context_length_exceeded"
    assert "maximum context length is 10 tokens" in refused.value.message


def test_a_tool_message_must_answer_a_preceding_call(server: DemoModelServer) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "calculate", "arguments": "{}"}}
    answered = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
    ]
    assert "4" in ask(server, answered, tools=[CALCULATE_TOOL]).choices[0].message.content
    orphan = [
        {"role": "user", "content": "hi"},
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
    ]
    with pytest.raises(openai.BadRequestError, match="must be a response to a preceding"):
        ask(server, orphan)
    unanswered = [*answered[:2], {"role": "user", "content": "and?"}]
    with pytest.raises(openai.BadRequestError, match="must be followed by tool messages"):
        ask(server, unanswered)


def test_asked_to_summarize_it_keeps_names_and_numbers(server: DemoModelServer) -> None:
    messages = [
        {"role": "system", "content": "Summarize the conversation so far."},
        {"role": "user", "content": "hello there. My name is Ada and my locker is 4711."},
        {"role": "assistant", "content": "nice to meet you. noted."},
    ]
    summary = ask(server, messages).choices[0].message.content
    assert summary == "My name is Ada and my locker is 4711."


def test_agents_sdk_pauses_for_approval_and_resumes(server: DemoModelServer) -> None:
    """The SDK's own approval flow against this model: approve, then reject."""
    sent: list[tuple[str, str]] = []

    @function_tool(needs_approval=True)
    def send_message(to: str, text: str) -> str:
        """Send a message to someone."""
        sent.append((to, text))
        return f"sent to {to}"

    async def go(approve: bool) -> str:
        before = len(sent)
        async with client_for(server) as client:
            model = OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
            agent = Agent(name="Demo", instructions="Send.", tools=[send_message], model=model)
            paused = await Runner.run(agent, 'send "hi" to alice')
            [pending] = paused.interruptions
            assert pending.name == "send_message" and len(sent) == before
            state = paused.to_state()
            if approve:
                state.approve(pending)
            else:
                state.reject(pending, rejection_message="Rejected: not now")
            return str((await Runner.run(agent, state)).final_output)

    set_tracing_disabled(True)
    assert asyncio.run(go(approve=True)) == "[demo model] Done: sent to alice."
    assert sent == [("alice", "hi")]
    assert (
        asyncio.run(go(approve=False))
        == "[demo model] The message was not sent: Rejected: not now."
    )
    assert sent == [("alice", "hi")]


def test_instructions_not_to_use_tools_are_followed() -> None:
    """A real model follows instructions that forbid tools; so does the demo model, which
    is how the eval gate's test changes the agent's behaviour (tests/test_evals.py)."""
    from local.demo_model import decide_reply

    tools = [{"type": "function", "function": {"name": "calculate"}}]
    ask = {"role": "user", "content": "What is 12 * (3 + 4)?"}
    _, call = decide_reply([{"role": "system", "content": "Be brief."}, ask], tools)
    assert call is not None and call["name"] == "calculate"
    for rule in ("Do not use tools.", "never call any tools", "Don't use tools"):
        text, call = decide_reply([{"role": "system", "content": rule}, ask], tools)
        assert call is None and text.startswith("[demo model] You said")
