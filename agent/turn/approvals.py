"""Human approval of tool calls that act: pausing a run, deciding, resuming anywhere.

A tool that needs approval (``agent/runtime/tools.py``) makes the SDK stop the run
before calling it. The turn then commits, with the items so far, a ``PausedRun``: the
pending calls and the SDK's serialised run state, kept with the session on the server
(``agent/store/paused_runs.py``); the caller sees only the pending calls. Until they
are decided the session takes no other turn (409 ``approval_pending``).

What the person sees is what runs: the model's argument text is parsed here, a
duplicate key refused (JSON parsers disagree on which of two values wins, so a page could
show one recipient while the tool got the other), checked against the tool's JSON
schema, and kept as canonical JSON (sorted keys, no spaces); that text is what the
caller is shown, what is stored, and what the approved tool is run with (``StoreGuard``
runs nothing else). A pause the service cannot put to a person is refused, and its turn
stores nothing (502 ``approval_calls_invalid``): arguments that fail those checks, an
empty or repeated call id, a call id this life of the session already used (a provider
that reuses ids would otherwise make one call's record answer for another), or more than
``MAX_PENDING_CALLS`` calls, which is as many as one decision request may carry.

A decision request (``POST /sessions/<id>/approvals``) names the pause (``pause_id``,
returned with the pending calls) and decides every pending call of it, each once (400
otherwise; 409 ``approval_not_pending`` for a pause or call that is not pending). Naming
the pause means a decision meant for one pause, or one life of the session, can never
apply to another. Decisions come in one request; ``MAX_PENDING_CALLS`` bounds a pause so
that one request can always carry them.
It claims the session naming the paused run, so of two concurrent ones exactly one
proceeds; restores the state on whichever instance got the request; approves or
rejects each call (a rejection reaches the model as the tool's result); and runs on,
as a turn: the resumed run's items, the decisions and the cleared (or next) pause land
in one commit, or nothing does and the decision can be sent again.

At most once per pause and call id: an approved call goes through ``StoreGuard``, which
records it in the store before it runs (``agent/store/tool_runs.py``). A resume that
finds the record of an earlier attempt does not run the call again; it gives the model
the recorded output, or, when the earlier attempt died mid-call, says the outcome is
unknown.

The record is the truth about what ran. Before a rejection or a dropped pause is
applied, the records of the pending calls are read (``ran``): rejecting a call that an
earlier attempt already ran (an approval whose resume failed or whose reader left after
the tool ran) is refused with 409 ``approval_conflict``, and a dropped pause gives each
call that ran its recorded output instead of "not run".

A paused run remembers a fingerprint of the agent definition: of every agent reachable by
handoff, its instructions, model, tools, handoffs and output type; and the SDK's run-state
schema version. If the deployed agent differs at
resume, or the installed SDK cannot read the stored state's ``$schemaVersion`` (an SDK
rolled back past the one that paused), the run's state may not fit it: the pause is
dropped (the calls get a "not run" result, or their recorded output, and the history a
note) and the caller gets 409 ``approval_stale``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import unicodedata
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema
from agents import Agent, ModelResponse, RunContextWrapper, RunState, ToolApprovalItem, Usage
from agents.run_state import CURRENT_SCHEMA_VERSION, SUPPORTED_SCHEMA_VERSIONS
from agents.usage import deserialize_usage

from agent.base import errors
from agent.base.clock import utc_now
from agent.runtime.factory import reachable
from agent.store.backend import HistoryBackend, ToolRunBackend
from agent.store.history import Item
from agent.store.paused_runs import Decision, PausedRun, PendingCall
from agent.store.tool_runs import EarlierRun, ToolCall
from agent.turn.store_errors import store_errors_as_api_errors

UNKNOWN_OUTCOME = (
    "error: an earlier attempt to run this approved call was interrupted; it may or may"
    " not have taken effect, and it was not run again."
)
STALE_OUTPUT = "error: not run: the agent changed before this call was approved."
STALE_NOTE = "[The paused action was dropped: the agent was updated before it was approved.]"
MAX_REASON_CHARS = 500
MAX_PENDING_CALLS = 64
"""The most calls one pause may wait for: as many as one decision request carries."""
NOT_APPROVED_OUTPUT = "error: not run: this call is not the one that was approved."


@dataclass(frozen=True)
class Verdict:
    """One decision of a request."""

    call_id: str
    approve: bool
    reason: str | None = None


@dataclass(frozen=True)
class Resume:
    """What a decision request asks: continue the session's paused run ``pause_id`` with
    ``verdicts``."""

    pause_id: str
    verdicts: tuple[Verdict, ...]
    by: str
    """The principal deciding."""

    def fingerprint(self) -> dict[str, object]:
        """What makes two decision requests the same request (for Idempotency-Key)."""
        return {
            "pause_id": self.pause_id,
            "decisions": [[v.call_id, v.approve, v.reason] for v in self.verdicts],
        }


def paused_run(store: HistoryBackend, session_id: str, owner: str | None) -> PausedRun:
    """The paused run of the caller's live session (without its state): 404
    ``session_not_found`` when there is no such session, 409 ``approval_not_pending``
    when it waits for nothing. One read; a second only on the way to a 404."""
    with store_errors_as_api_errors():
        pause = store.paused_run(session_id, utc_now(), owner)
        if pause is None and (owner is None or store.owner_of(session_id, utc_now()) != owner):
            raise errors.session_not_found()
    if pause is None:
        raise errors.approval_not_pending()
    return pause


def fingerprint(agent: Agent[Any], model: str) -> str:
    """SHA-256 of what a paused run's state depends on: of every agent reachable by
    handoff (a run may pause in any of them), its name, instructions, model, tools,
    handoffs and output type; and the run-state schema version the installed SDK writes."""
    canonical = json.dumps(
        {
            "agents": [_definition(each, model) for each in reachable(agent)],
            "state_schema": CURRENT_SCHEMA_VERSION,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _definition(agent: Agent[Any], model: str) -> dict[str, Any]:
    tools = [
        {
            "name": getattr(tool, "name", ""),
            "description": getattr(tool, "description", ""),
            "parameters": getattr(tool, "params_json_schema", None),
            "needs_approval": bool(getattr(tool, "needs_approval", False)),
        }
        for tool in agent.tools
    ]
    output = agent.output_type
    return {
        "name": agent.name,
        "instructions": _stable(agent.instructions),
        # AGENT_MODEL names the service's model; an agent's own model, by what it holds.
        "model": model,
        "own_model": None if agent.model is None else _model_name(agent.model),
        "tools": tools,
        "handoffs": [getattr(h, "agent_name", getattr(h, "name", "")) for h in agent.handoffs],
        "output_type": None if output is None else _stable(output),
    }


def _stable(value: Any) -> str:
    """Text that is the same in every process: a function or class by its qualified name
    (``str`` of a function holds its address, which would make every pause stale)."""
    if isinstance(value, str):
        return value
    name = getattr(value, "__qualname__", None)
    if name is not None:
        return f"{getattr(value, '__module__', '')}.{name}"
    return type(value).__qualname__


def _model_name(model: Any) -> str:
    if isinstance(model, str):
        return model
    while not hasattr(model, "model") and hasattr(model, "inner"):
        model = model.inner
    return str(getattr(model, "model", type(model).__qualname__))


def check(pause: PausedRun, resume: Resume) -> None:
    """Raises ApiError unless ``resume`` names ``pause`` and decides every call of it,
    each once."""
    if resume.pause_id != pause.pause_id:
        raise errors.approval_not_pending()
    ids = [v.call_id for v in resume.verdicts]
    if len(set(ids)) != len(ids):
        raise errors.bad_request("decisions_invalid", "Each call_id may be decided once.")
    pending = {call.call_id for call in pause.pending}
    if not set(ids) <= pending:
        raise errors.approval_not_pending()
    if set(ids) != pending:
        raise errors.ApiError(
            400,
            "decisions_incomplete",
            "Decide every pending call in one request.",
            details={"pending_call_ids": sorted(pending - set(ids))},
        )


class CallsRefused(Exception):
    """A pause that cannot be put to a person (the module's header); ``reason`` says why
    (it names no argument values: they may carry anything)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def canonical_arguments(text: str, schema: Mapping[str, Any] | None = None) -> str:
    """The call's arguments as canonical JSON (sorted keys, no spaces, non-ASCII kept),
    after refusing duplicate keys, non-finite numbers, anything but an object, and, with
    ``schema``, whatever the tool's JSON schema does not allow. Raises CallsRefused."""
    try:
        value = json.loads(text or "{}", object_pairs_hook=_unique, parse_constant=_no_constant)
    except CallsRefused:
        raise
    except (ValueError, RecursionError):
        raise CallsRefused("arguments are not valid JSON") from None
    if not isinstance(value, dict):
        raise CallsRefused("arguments are not a JSON object")
    if schema:
        try:
            jsonschema.validate(value, dict(schema))
        except jsonschema.ValidationError:
            raise CallsRefused("arguments do not fit the tool's schema") from None
        except jsonschema.SchemaError:
            raise CallsRefused("the tool's schema is not valid") from None
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "".join(_escaped(char) if _hidden(char) else char for char in text)


_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")  # Hangul fillers: letters drawn blank


def _hidden(char: str) -> bool:
    """Characters a person cannot see, or that reorder what they see (bidirectional
    controls are format characters, Cf): escaped in the canonical text, which stays the
    same JSON value."""
    category = unicodedata.category(char)
    if category in ("Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"):
        return True
    if category == "Zs":
        return char != " "
    code = ord(char)
    return char in _BLANK_LETTERS or 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF


def _escaped(char: str) -> str:
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # outside the BMP, JSON spells a surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise CallsRefused("arguments repeat a key")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise CallsRefused("arguments hold a non-finite number")


def digest(canonical: str) -> str:
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def pending_of(
    agent: Agent[Any], interruptions: Sequence[ToolApprovalItem]
) -> tuple[PendingCall, ...]:
    """The calls a run paused on, each with its canonical arguments. Raises
    CallsRefused for a pause that cannot be put to a person."""
    if len(interruptions) > MAX_PENDING_CALLS:
        raise CallsRefused(f"more than {MAX_PENDING_CALLS} calls in one pause")
    # The agent that paused may be any reachable by handoff; its own tools come first.
    schemas = {
        str(getattr(tool, "name", "")): getattr(tool, "params_json_schema", None)
        for each in reversed(list(reachable(agent)))
        for tool in each.tools
    }
    calls = []
    for item in interruptions:
        call_id = str(_field(item.raw_item, "call_id") or "")
        tool = str(item.tool_name or _field(item.raw_item, "name") or "")
        if not call_id or len(call_id) > 128:
            raise CallsRefused("a call without a usable id")
        text = str(_field(item.raw_item, "arguments") or "")
        owner = getattr(item, "agent", None)
        schema = schemas.get(tool)
        if isinstance(owner, Agent):
            own = {str(getattr(t, "name", "")): t for t in owner.tools}
            if tool in own:
                schema = getattr(own[tool], "params_json_schema", None)
        arguments = canonical_arguments(text, schema)
        calls.append(PendingCall(call_id, tool, arguments))
    if len({call.call_id for call in calls}) != len(calls):
        raise CallsRefused("two calls of one pause share an id")
    return tuple(calls)


def paused_calls(
    agent: Agent[Any],
    interruptions: Sequence[ToolApprovalItem],
    responses: Sequence[ModelResponse],
    history: Sequence[Item],
    decided: Sequence[Decision],
    used: Callable[[set[str]], set[str]] | None,
) -> tuple[PendingCall, ...]:
    """The pending calls of a run that paused (``pending_of``), refused (502
    ``approval_calls_invalid``) when one reuses a call id of this life: in the session's
    record or, through ``used``, in its tool-run records."""
    try:
        pending = pending_of(agent, interruptions)
        ids = {call.call_id for call in pending}
        reused = reused_ids(pending, history, responses, decided)
        if used is not None and not reused:
            with store_errors_as_api_errors():
                reused = used(ids)
        if reused:
            raise CallsRefused("a call id this session already used")
    except CallsRefused as exc:
        raise errors.approval_calls_invalid(exc.reason) from exc
    return pending


def reused_ids(
    pending: Sequence[PendingCall],
    history: Sequence[Item],
    responses: Sequence[ModelResponse],
    decided: Sequence[Decision],
) -> set[str]:
    """Pending call ids that this life already used, as far as the session's record
    shows: in its stored history, twice in this run's model responses, or in its
    decision log. (The tool-run records are the other witness: ``ToolRunBackend.used``.)"""
    ids = {call.call_id for call in pending}
    seen = {
        str(item.get("call_id"))
        for item in history
        if isinstance(item, dict) and item.get("type") == "function_call"
    }
    seen |= {str(d.get("call_id")) for d in decided}
    # What the model sent, before the SDK merges calls that share an id into one.
    this_run = Counter(
        str(_field(item, "call_id"))
        for response in responses
        for item in response.output
        if _field(item, "type") == "function_call"
    )
    twice = {call_id for call_id, times in this_run.items() if times > 1}
    return ids & (seen | twice)


@dataclass(frozen=True)
class Restored:
    state: RunState[Any, Any]
    """The paused run, every decision applied."""
    spent: Usage
    """What the run had used when it paused: reported by the turn that paused, so the
    resumed turn reports only what it adds."""


def restorable(pause: PausedRun) -> bool:
    """Whether the installed SDK can read the paused run's state: its ``$schemaVersion``
    is one the SDK supports (an older SDK refuses a newer state by design)."""
    try:
        version = json.loads(pause.state_json()).get("$schemaVersion")
    except (ValueError, AttributeError):
        return False
    return version in SUPPORTED_SCHEMA_VERSIONS


Ran = Mapping[str, EarlierRun]
"""The pending calls an earlier attempt started, by call id."""


def ran(store: ToolRunBackend | None, session_id: str, generation: str, pause: PausedRun) -> Ran:
    """The pending calls an earlier attempt started (by call id), from their records."""
    if store is None:
        return {}
    calls = [approved(pause, call) for call in pause.pending]
    with store_errors_as_api_errors():
        return store.earlier(session_id, generation, calls)


def check_consistent(resume: Resume, earlier: Ran) -> None:
    """409 ``approval_conflict`` when ``resume`` rejects a call that already ran (or
    began to): the record would contradict what happened."""
    conflicting = sorted(
        v.call_id for v in resume.verdicts if not v.approve and v.call_id in earlier
    )
    if conflicting:
        raise errors.approval_conflict(conflicting)


def approved(pause: PausedRun, call: PendingCall) -> ToolCall:
    """The tool-run key and check of ``call`` of ``pause``."""
    return ToolCall(pause.pause_id, call.call_id, call.tool, digest(call.arguments))


def state_json(state: RunState[Any, Any]) -> dict[str, Any]:
    """A paused run's state as stored, without its run context: that names the caller
    and the request (``agent/runtime/run_context.py``), and a resume brings its own."""
    return state.to_json(context_serializer=_no_context)


def _no_context(_: Any) -> dict[str, Any]:
    return {}


async def restore(
    agent: Agent[Any], pause: PausedRun, resume: Resume, context: Any = None
) -> Restored:
    """The paused run's state with every decision applied, its run context ``context``
    (the resuming request's)."""
    data = json.loads(pause.state_json())
    state: RunState[Any, Any] = await RunState.from_json(
        agent, data, context_override=RunContextWrapper(context)
    )
    verdicts = {v.call_id: v for v in resume.verdicts}
    for item in state.get_interruptions():
        verdict = verdicts[str(_field(item.raw_item, "call_id"))]
        if verdict.approve:
            state.approve(item)
        else:
            state.reject(item, rejection_message=rejection(verdict))
    return Restored(state, deserialize_usage((data.get("context") or {}).get("usage") or {}))


def rejection(verdict: Verdict) -> str:
    """What the model gets as the result of a rejected call."""
    why = f": {verdict.reason}" if verdict.reason else ""
    return f"rejected by the user{why}. The action was not performed."


def decision_log(resume: Resume, pause: PausedRun) -> list[Decision]:
    at = utc_now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    tools = {call.call_id: call.tool for call in pause.pending}
    return [
        {
            "pause_id": pause.pause_id,
            "call_id": v.call_id,
            "tool": tools.get(v.call_id, ""),
            "approved": v.approve,
            "reason": v.reason,
            "by": resume.by,
            "at": at,
        }
        for v in resume.verdicts
    ]


def dropped(pause: PausedRun, earlier: Ran) -> list[Item]:
    """What a dropped pause leaves in the history: each call answered (the model's next
    request must answer every call it made) with its recorded output if an earlier
    attempt ran it, else "not run"; and a note."""
    outputs: list[Item] = [
        {
            "type": "function_call_output",
            "call_id": call.call_id,
            "output": _recorded(earlier[call.call_id]) if call.call_id in earlier else STALE_OUTPUT,
        }
        for call in pause.pending
    ]
    note: Item = {"role": "assistant", "content": STALE_NOTE}
    return [*outputs, note]


def _recorded(earlier: EarlierRun) -> str:
    return earlier.output if earlier.output is not None else UNKNOWN_OUTCOME


class StoreGuard:
    """The ``CallGuard`` of one resumed turn: runs only the calls of ``pause`` that were
    approved, with exactly the arguments shown, recording each before it runs."""

    def __init__(
        self,
        store: ToolRunBackend,
        session_id: str,
        generation: str,
        pause: PausedRun | None,
        until: dt.datetime | None = None,
    ) -> None:
        """``until``: the end of the turn's claim; each record lasts at least that long."""
        self._store = store
        self._session_id = session_id
        self._generation = generation
        self._pending = {call.call_id: call for call in pause.pending} if pause else {}
        self._pause = pause
        self._until = until

    async def run(
        self,
        call_id: str,
        tool: str,
        arguments: str,
        invoke: Callable[[str], Awaitable[Any]],
    ) -> Any:
        shown = self._pending.get(call_id)
        if self._pause is None or shown is None or shown.tool != tool:
            return NOT_APPROVED_OUTPUT
        try:
            same = canonical_arguments(arguments) == shown.arguments
        except CallsRefused:
            same = False
        if not same:
            return NOT_APPROVED_OUTPUT
        call = approved(self._pause, shown)
        now = utc_now()
        earlier = await asyncio.to_thread(
            self._store.start, self._session_id, self._generation, call, now, self._until
        )
        if earlier is not None:
            return _recorded(earlier) if earlier.matches(call) else NOT_APPROVED_OUTPUT
        output = await invoke(shown.arguments)  # the canonical text the person saw
        text = output if isinstance(output, str) else json.dumps(output, default=str)
        await asyncio.to_thread(self._store.finish, self._session_id, self._generation, call, text)
        return output


def keep_guards(
    store: ToolRunBackend, session_id: str, generation: str, pause: PausedRun, until: dt.datetime
) -> None:
    """Each claim of a paused run makes the guards of its calls last as long as the claim
    (which keeps the session, and so the pause, alive that long): a guard never expires
    while its pause can still be resumed. 503 when that cannot be written."""
    with store_errors_as_api_errors():
        store.keep(session_id, generation, [approved(pause, call) for call in pause.pending], until)


def _field(raw: Any, name: str) -> Any:
    return raw.get(name) if isinstance(raw, dict) else getattr(raw, name, None)
