"""Streamed replies (Server-Sent Events), on the real emulator and the HTTP model."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask.testing import FlaskClient

from local.demo_model import DemoModelServer
from local.server import LiveServer as Server
from tests.support.constants import MODEL
from tests.support.openapi_contract import assert_conforms, assert_stream_conforms
from tests.support.sse_client import Event, events_of, open_stream, parse_body

SSE = {"Accept": "text/event-stream"}


def stream(client: FlaskClient, body: dict[str, Any], **kwargs: Any) -> tuple[Any, list[Event]]:
    response = client.post("/chat", json=body, **kwargs)
    events = parse_body(response.get_data())
    if response.status_code == 200:
        pairs = [(e.name, e.data) for e in events]
        assert_stream_conforms("/chat", pairs, dict(response.headers))
    return response, events


def names(events: list[Event]) -> list[str]:
    return [e.name for e in events]


def text_of(events: list[Event]) -> str:
    return "".join(e.data["text"] for e in events if e.name == "delta")


# -- over real HTTP, through the functions-framework server -------------------------


@pytest.fixture
def server(store_env: dict[str, str], model: DemoModelServer) -> Iterator[Server]:
    running = Server(
        os.environ
        | store_env
        | {
            "OPENAI_BASE_URL": model.base_url,
            "AGENT_MODEL": MODEL,
            "AUTH_MODE": "none",
        }
    )
    yield running
    if running.process.returncode is None:
        running.stop()


def test_first_delta_arrives_long_before_the_model_has_finished(server, model) -> None:
    delay = 0.3
    model.control(stream_chunk_delay_seconds=delay)
    body = {"message": "tell me something", "session_id": "live"}
    connection, response = open_stream(server.port, body, SSE)
    try:
        assert response.status == 200
        assert response.getheader("Content-Type").startswith("text/event-stream")
        assert response.getheader("Transfer-Encoding") == "chunked"
        seen: list[Event] = []
        for event in events_of(response):
            seen.append(event)
            if len(seen) == 1:
                assert event.name == "delta"
                # The run is still going, so nothing is stored yet.
                assert server.call("GET", "/sessions/live")[0] == 404
    finally:
        connection.close()
    deltas, done = [e for e in seen if e.name == "delta"], seen[-1]
    assert done.name == "done"
    # The demo model sends one word per chunk, `delay` apart: the first delta reached
    # the client while all the other chunks were still to come.
    assert len(deltas) >= 5
    assert done.at - deltas[0].at >= delay * (len(deltas) - 1) * 0.9
    assert text_of(seen) == done.data["reply"]
    status, history, _ = server.call("GET", "/sessions/live")
    assert status == 200 and history["turns"] == 1
    assert_stream_conforms("/chat", [(e.name, e.data) for e in seen], dict(response.getheaders()))


def test_a_client_that_disconnects_cancels_the_run_and_nothing_is_stored(server, model) -> None:
    status, _, _ = server.call("POST", "/chat", {"message": "keep me", "session_id": "gone"})
    assert status == 200
    model.control(stream_chunk_delay_seconds=0.5)
    body = {"message": "a long answer", "session_id": "gone", "stream": True}
    connection, response = open_stream(server.port, body)
    assert next(events_of(response)).name == "delta"
    connection.close()  # the user closed the tab
    # The server notices at its next write, cancels the run and releases the claim:
    # the session takes a new turn within seconds instead of staying busy.
    model.reset()
    deadline = time.monotonic() + 10
    while True:
        status, reply, _ = server.call("POST", "/chat", {"message": "again", "session_id": "gone"})
        if status != 409 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status == 200, reply
    _, after, _ = server.call("GET", "/sessions/gone")
    users = [i["content"] for i in after["items"] if i.get("role") == "user"]
    assert users == ["keep me", "again"]  # the cancelled turn left nothing behind
    assert after["turns"] == 2
    log = server.stop()
    ended = [json.loads(line) for line in log.splitlines() if "stream ended" in line]
    assert [e["ending"] for e in ended] == ["disconnected"]


# -- through the app's test client ---------------------------------------------------


def test_done_carries_exactly_the_json_reply(client: FlaskClient) -> None:
    plain = client.post("/chat", json={"message": "same words", "session_id": "json"})
    assert plain.status_code == 200
    response, events = stream(client, {"message": "same words", "session_id": "sse"}, headers=SSE)
    assert response.status_code == 200
    assert names(events) == ["delta"] * (len(events) - 1) + ["done"]
    done, body = events[-1].data, plain.get_json()
    assert set(done) == set(body)
    for key in ("reply", "new_session", "usage"):
        assert done[key] == body[key], key
    assert done["session_id"] == "sse"
    assert text_of(events) == done["reply"]
    assert_conforms("POST", "/chat", 200, done, {"Content-Type": "application/json"})


def test_usage_is_counted_the_same_streamed_or_not(client: FlaskClient) -> None:
    plain = client.post("/chat", json={"message": "count me", "session_id": "u1"}).get_json()
    _, events = stream(client, {"message": "count me", "session_id": "u2", "stream": True})
    assert events[-1].data["usage"] == plain["usage"]
    assert plain["usage"]["output_tokens"] > 0


def test_tool_calls_and_results_are_events(client: FlaskClient) -> None:
    _, events = stream(
        client, {"message": "what is 12 * (3 + 4)?", "session_id": "t", "stream": True}
    )
    assert names(events)[:2] == ["tool_call", "tool_result"]
    call, result = events[0].data, events[1].data
    assert call["name"] == "calculate" and json.loads(call["arguments"]) == {
        "expression": "12 * (3 + 4)"
    }
    assert result == {"call_id": call["call_id"], "output": "84"}
    assert events[-1].name == "done" and "84" in events[-1].data["reply"]
    items = client.get("/sessions/t").get_json()["items"]
    assert [i.get("role") or i.get("type") for i in items] == [
        "user",
        "function_call",
        "function_call_output",
        "assistant",
    ]


@pytest.mark.parametrize(
    ("headers", "flag", "streamed"),
    [
        ({"Accept": "text/event-stream"}, None, True),
        ({"Accept": "application/json, text/event-stream;q=0.5"}, None, False),
        ({"Accept": "*/*"}, None, False),
        ({}, True, True),
        ({"Accept": "text/event-stream"}, False, False),
    ],
)
def test_what_asks_for_a_stream(client: FlaskClient, headers, flag, streamed) -> None:
    body = {"message": "hi"} | ({} if flag is None else {"stream": flag})
    response = client.post("/chat", json=body, headers=headers)
    assert response.status_code == 200
    assert response.mimetype == ("text/event-stream" if streamed else "application/json")


def test_stream_must_be_a_boolean(client: FlaskClient, model) -> None:
    response = client.post("/chat", json={"message": "hi", "stream": "yes"})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_request"
    assert_conforms("POST", "/chat", 400, response.get_json(), response.headers)
    assert model.request_count == 0


def test_a_busy_session_is_a_json_409_not_a_stream(client: FlaskClient, model) -> None:
    model.control(delay_seconds=1.0)
    app = client.application
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(
            app.test_client().post, "/chat", json={"message": "a", "session_id": "b"}
        )
        time.sleep(0.4)  # the first turn holds the session, waiting on the model
        response = client.post("/chat", json={"message": "b", "session_id": "b"}, headers=SSE)
        assert first.result().status_code == 200
    assert response.status_code == 409 and response.mimetype == "application/json"
    assert_conforms("POST", "/chat", 409, response.get_json(), response.headers)


def test_a_model_failure_after_the_start_is_an_error_event(client: FlaskClient, model) -> None:
    assert client.post("/chat", json={"message": "keep", "session_id": "f"}).status_code == 200
    before = client.get("/sessions/f").get_json()
    model.control(fail_status=500, fail_count=-1)
    response, events = stream(client, {"message": "lost", "session_id": "f", "stream": True})
    assert response.status_code == 200
    assert names(events) == ["error"]
    assert events[0].data["error"]["code"] == "model_error"
    assert "Traceback" not in response.get_data(as_text=True)
    model.reset()
    assert client.get("/sessions/f").get_json() == before
    assert client.post("/chat", json={"message": "next", "session_id": "f"}).status_code == 200


def test_a_stream_past_its_deadline_ends_with_an_error_event(make_client, model) -> None:
    client = make_client(function_timeout_seconds=3, deadline_margin_seconds=0.5)
    assert client.post("/chat", json={"message": "keep", "session_id": "d"}).status_code == 200
    before = client.get("/sessions/d").get_json()
    model.control(stream_chunk_delay_seconds=0.4)  # about 4 s for the whole reply
    started = time.monotonic()
    _, events = stream(client, {"message": "too slow", "session_id": "d", "stream": True})
    elapsed = time.monotonic() - started
    assert names(events)[-1] == "error" and "delta" in names(events)
    assert events[-1].data["error"]["code"] == "deadline_exceeded"
    assert elapsed < 3  # stopped by its own deadline, before the platform's timeout
    model.reset()
    assert client.get("/sessions/d").get_json() == before
    assert client.post("/chat", json={"message": "ok", "session_id": "d"}).status_code == 200


def test_max_turns_while_streaming_is_an_error_event(make_client) -> None:
    client = make_client(agent_max_turns=1)
    _, events = stream(client, {"message": "what is 2 + 2?", "session_id": "m", "stream": True})
    assert events[-1].data["error"]["code"] == "max_turns_exceeded"
    assert client.get("/sessions/m").status_code == 404


def test_events_stop_at_the_size_cap_and_done_still_has_everything(make_client, model) -> None:
    cap = 65_536
    client = make_client(stream_max_delta_bytes=cap)
    model.control(reply_bytes=150_000)
    response, events = stream(client, {"message": "big", "session_id": "big", "stream": True})
    assert names(events)[-2:] == ["deltas_stopped", "done"]
    streamed = sum(
        len(f"event: delta\ndata: {json.dumps(e.data, separators=(',', ':'))}\n\n")
        for e in events
        if e.name == "delta"
    )
    assert streamed == events[-2].data["sent_bytes"] <= cap
    assert len(events[-1].data["reply"].encode()) == 150_000
    assert text_of(events) == events[-1].data["reply"][: len(text_of(events))]
    assert len(response.get_data()) < cap + 150_000 + 4096


# -- with the other features of POST /chat ------------------------------------------


def test_an_offloaded_answer_stops_the_text_and_arrives_as_done_result(
    make_client, results_env: dict[str, str], model: DemoModelServer
) -> None:
    """With a bucket, text events stop near the inline limit, and ``done`` is exactly
    what the JSON reply is for an offloaded answer: a preview and the ``result``."""
    limit = 65_536
    client = make_client(**results_env, result_inline_max_bytes=limit)
    model.control(reply_bytes=200_000)
    plain = client.post("/chat", json={"message": "report", "session_id": "as-json"})
    assert plain.status_code == 200 and "result" in plain.get_json()
    _, events = stream(client, {"message": "report", "session_id": "as-sse", "stream": True})
    assert names(events)[-2:] == ["deltas_stopped", "done"]
    assert events[-2].data["sent_bytes"] <= limit
    done, body = events[-1].data, plain.get_json()
    assert set(done) == set(body)
    assert done["result"]["bytes"] == body["result"]["bytes"] == 200_000
    assert done["result"]["sha256"] == body["result"]["sha256"]
    assert done["reply"] == body["reply"].replace("as-json", "as-sse").replace(
        body["result"]["turn_id"], done["result"]["turn_id"]
    )
    assert len(text_of(events).encode()) < limit < 200_000


def test_idempotency_key_replays_a_finished_stream_as_one_done_event(
    client: FlaskClient, model: DemoModelServer
) -> None:
    headers = SSE | {"Idempotency-Key": "stream-once-1"}
    body = {"message": "only once", "session_id": "idem"}
    first, events = stream(client, body, headers=headers)
    assert first.status_code == 200 and names(events)[-1] == "done"
    calls = model.request_count
    again, replay = stream(client, body, headers=headers)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert names(replay) == ["done"]
    assert replay[0].data == events[-1].data
    assert model.request_count == calls  # the agent did not run again
    assert client.get("/sessions/idem").get_json()["turns"] == 1


def test_a_failed_stream_gives_its_idempotency_key_up(
    client: FlaskClient, model: DemoModelServer
) -> None:
    headers = SSE | {"Idempotency-Key": "stream-once-2"}
    body = {"message": "try me", "session_id": "idem2"}
    model.control(fail_status=500, fail_count=-1)
    _, events = stream(client, body, headers=headers)
    assert names(events) == ["error"]
    model.reset()
    response, events = stream(client, body, headers=headers)
    assert "Idempotent-Replayed" not in response.headers
    assert names(events)[-1] == "done" and model.request_count == 1
