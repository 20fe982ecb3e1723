"""The pure parts of the offload policy: rendering, previews, shrinking the history."""

from __future__ import annotations

import json

from pydantic import BaseModel

from agent.results.policy import PREVIEW_BYTES, render, shrink_answer, truncated


class Report(BaseModel):
    title: str
    sections: list[str]


def test_text_is_markdown_and_structured_output_is_json() -> None:
    assert render("# Title\n\nbody") == ("# Title\n\nbody", "text/markdown; charset=utf-8", "md")
    text, content_type, extension = render(Report(title="T", sections=["a", "b"]))
    assert (content_type, extension) == ("application/json", "json")
    assert json.loads(text) == {"title": "T", "sections": ["a", "b"]}
    assert json.loads(render({"k": [1, 2]})[0]) == {"k": [1, 2]}


def test_a_preview_cuts_whole_characters_and_says_what_it_is() -> None:
    text = "é" * 5000  # two bytes each: the cut at 4096 falls between characters only
    preview = truncated(text, "see the file")
    head, _, marker = preview.partition("\n\n[… truncated: ")
    assert head == "é" * (PREVIEW_BYTES // 2)
    assert marker == f"{PREVIEW_BYTES} of 10000 bytes shown; see the file.]"
    odd = truncated("ab" + "€" * 3000, "x")  # three-byte characters: 4096 is mid-character
    head, _, marker = odd.partition("\n\n[… truncated: ")
    assert head == "ab" + "€" * 1364 and marker.startswith("4094 of 9002 bytes shown")


def test_only_the_last_assistant_message_is_shrunk() -> None:
    items = [
        {"role": "user", "content": "write"},
        {"type": "message", "role": "assistant", "id": "m1", "status": "completed",
         "content": [{"type": "output_text", "text": "early", "annotations": []}]},
        {"type": "function_call", "name": "calculate", "arguments": "{}", "call_id": "c"},
        {"type": "message", "role": "assistant", "id": "m2", "status": "completed",
         "content": [
             {"type": "output_text", "text": "x" * 9000, "annotations": [{"a": 1}],
              "logprobs": [{"token": "x"}] * 100},
             {"type": "output_text", "text": "more", "annotations": []},
         ]},
    ]  # fmt: skip
    shrunk = shrink_answer(items, "preview")
    assert shrunk[:3] == items[:3]
    assert shrunk[3] == {
        "type": "message",
        "role": "assistant",
        "id": "m2",
        "status": "completed",
        "content": [{"type": "output_text", "text": "preview", "annotations": [], "logprobs": []}],
    }
    assert items[3]["content"][0]["text"] == "x" * 9000  # the input is not modified


def test_without_an_assistant_message_nothing_changes() -> None:
    items = [{"role": "user", "content": "hi"}]
    assert shrink_answer(items, "preview") == items
