"""The streamed events of ``POST /chat`` (issue 25 item 7): the list in
``agent/api/sse.py`` is the list the code emits and the API document names, and the
size cap on text and tool events never swallows the events that follow them."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import yaml
from flask.testing import FlaskClient

from agent.api import sse
from tests.support.constants import REPO_ROOT
from tests.support.sse_client import parse_body

SOURCES = sorted((REPO_ROOT / "agent").rglob("*.py"))
_EMITTED = re.compile(r'(?:RunEvent|frame)\(\s*"([a-z_]+)"')
_DOCUMENTED = re.compile(r"^\s*event: ([a-z_]+)", re.MULTILINE)


def test_the_event_list_is_what_the_code_emits_and_the_api_documents() -> None:
    emitted = {name for path in SOURCES for name in _EMITTED.findall(path.read_text())}
    assert emitted <= set(sse.EVENTS), emitted - set(sse.EVENTS)
    documented = _DOCUMENTED.findall(sse.__doc__ or "")
    assert documented == list(sse.EVENTS)
    spec = yaml.safe_load((REPO_ROOT / "openapi.yaml").read_text())
    schemas = spec["components"]["schemas"]
    variants = [ref["$ref"].rsplit("/", 1)[1] for ref in schemas["ChatStreamEvent"]["oneOf"]]
    in_spec = {schemas[v]["properties"]["event"]["const"] for v in variants}
    assert in_spec == set(sse.EVENTS)


def test_an_approval_still_arrives_after_the_deltas_stopped(
    make_client: Callable[..., FlaskClient], results_env: dict[str, str], tmp_path: Path
) -> None:
    # With a results bucket the stream's text and tool events stop at the inline limit.
    client = make_client(
        **results_env, result_inline_max_bytes=8192, outbox_path=str(tmp_path / "out.jsonl")
    )
    long = "x" * 9000
    body = {"message": f'send "{long}" to alice', "stream": True}
    events = parse_body(client.post("/chat", json=body).get_data())
    names = [event.name for event in events]
    assert "deltas_stopped" in names, names
    assert names[-2:] == ["approval_required", "done"], names
    assert events[-2].data["pending_approvals"] == events[-1].data["pending_approvals"]
