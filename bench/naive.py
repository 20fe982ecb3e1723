"""The naive design, written the way the well-known Lambda article does it, on
Cloud Functions and Firestore: everything built eagerly at import, a new event loop
per request, the whole history in one document, exception text returned to callers.

It exists only to be measured next to the service (``bench/run.py``); never deploy it.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import flask
import functions_framework
from agents import Agent, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
from google.cloud import firestore
from openai import AsyncOpenAI

from agent.base.settings import Settings
from agent.runtime.tools import fit_tools
from agent_examples.demo.tools import demo_tools

set_tracing_disabled(True)
agent = Agent(
    name="assistant",
    instructions="You are a concise, helpful assistant. Use the calculate tool for arithmetic.",
    model=OpenAIChatCompletionsModel(
        model=os.environ.get("AGENT_MODEL", "gpt-4o-mini"),
        openai_client=AsyncOpenAI(
            base_url=os.environ.get("OPENAI_BASE_URL"),
            api_key=os.environ.get("OPENAI_API_KEY", "not-needed"),
        ),
    ),
    tools=fit_tools(demo_tools(None), Settings()),
)
sessions = firestore.Client().collection("naive_sessions")


@functions_framework.http
def naive_http(request: flask.Request) -> Any:
    try:
        body = request.get_json()
        message = body.get("message", "")
        session_id = body.get("session_id") or str(uuid.uuid4())
        if not message:
            return {"error": "message is required"}, 400
        snapshot = sessions.document(session_id).get()
        history = (snapshot.to_dict() or {}).get("history", []) if snapshot.exists else []
        loop = asyncio.new_event_loop()  # the article's run_until_complete, per request
        try:
            result = loop.run_until_complete(
                Runner.run(agent, [*history, {"role": "user", "content": message}])
            )
        finally:
            loop.close()
        sessions.document(session_id).set(
            {"history": result.to_input_list(), "ttl": time.time() + 3600}
        )
        return {"session_id": session_id, "reply": result.final_output}
    except Exception as e:
        return {"error": str(e)}, 500
