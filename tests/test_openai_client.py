"""The Chat Completions client sends exactly what the plain OpenAI client sends."""

from __future__ import annotations

import asyncio

import pytest
from agents import OpenAIChatCompletionsModel, Runner, set_tracing_disabled
from openai import AsyncOpenAI

from agent.base.settings import Settings
from agent.runtime.factory import build_agent
from agent.runtime.openai_client import ChatCompletionsClient
from local.demo_model import DemoModelServer
from tests.support.constants import MODEL


def conversation(client: AsyncOpenAI, stream: bool) -> list[str]:
    """A two-turn conversation with a tool round trip, through the Agents SDK."""
    set_tracing_disabled(True)
    agent = build_agent(
        Settings.from_env({}), OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
    )

    async def run() -> list[str]:
        history: list = []
        replies = []
        for message in ("My name is Ada. What is 12 * (3 + 4)?", "And my name?"):
            history.append({"role": "user", "content": message})
            if stream:
                streamed = Runner.run_streamed(agent, history)
                async for _ in streamed.stream_events():
                    pass
                result = streamed
            else:
                result = await Runner.run(agent, history)
            history = result.to_input_list()
            replies.append(str(result.final_output))
        return replies

    return asyncio.run(run())


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_the_model_receives_the_same_requests(model: DemoModelServer, stream: bool) -> None:
    def client(cls: type[AsyncOpenAI]) -> AsyncOpenAI:
        return cls(base_url=model.base_url, api_key="x", max_retries=0)

    expected_replies = conversation(client(AsyncOpenAI), stream)
    expected = model.requests
    model.reset()
    replies = conversation(client(ChatCompletionsClient), stream)
    assert replies == expected_replies
    assert "84" in replies[0]
    sent = model.requests
    assert len(sent) == len(expected) == 3  # tool call, answer, second turn
    # Messages with tool calls and tool results, and the tool's JSON schema: the
    # shapes a transform could change, byte for byte the same.
    assert any(m.get("tool_calls") for m in sent[-1]["messages"])
    assert any(m.get("role") == "tool" for m in sent[-1]["messages"])
    assert sent[0]["tools"][0]["function"]["parameters"]["properties"]
    assert sent == expected


def test_calls_without_tools_send_no_tools_key(model: DemoModelServer) -> None:
    client = ChatCompletionsClient(base_url=model.base_url, api_key="x", max_retries=0)

    async def call() -> str | None:
        completion = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        return completion.choices[0].message.content

    assert (asyncio.run(call()) or "").startswith("[demo model]")
    assert model.requests == [{"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}]
