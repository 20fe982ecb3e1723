"""Tool runs: an approved call that acts runs at most once, whoever resumes the run.

One document per approved call, ``agent_sessions/{doc_id}/agent_tool_runs/
{generation}~{sha256(pause_id, call_id)}`` (``schema.ToolRunDoc``), created just before
the tool runs and marked done with its output just after. The create is the guard:
Firestore creates a document once, so of two instances that would run the same call (a
resume that took over from one that died, or any race the session's claim does not
cover) exactly one gets to. The other learns what is known: done, with the output to
give the model again, or started and never finished, in which case the call is not run
again and the model is told its outcome is unknown. A create whose reply is lost is
retried by the client and then refused as existing: the record carries the creating
call's own token (``writer``), so a re-read tells its own create from an earlier
attempt's, and a create that cannot be confirmed in time means the call does not run
(503). A record lasts at least as long as any claim of its pause (``keep``): the
session a failed resume kept alive never outlives the guard of a call that ran.

A record is keyed on the pause and the model's call id, not the call id alone: a
provider that reuses call ids (OpenAI-compatible servers do) must not make a later
pause's call meet an earlier pause's record and answer with its output. The ids are
hashed into the document id, so any call id (one with a ``/``, say) makes a valid path.
The record keeps the tool's name and the SHA-256 of the canonical arguments that were
approved (``ToolCall``), so a record that does not match the call is never taken for
it; ``used`` says which call ids this life's records already carry, so that a pause
reusing one is refused (``agent/turn/approvals.py``).

The generation in the id keeps a later life of the session id (whose model may well
produce the same call ids) from meeting an earlier life's runs. Each document expires
with its session (``expire_at``), and deleting the session deletes those of the life it
deleted (``forget_session``, after the session's documents, like its keys' records).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from agent.store.calls import OUTAGE, StoreUnavailable, bounded_retry, outage_as_unavailable
from agent.store.history import doc_id
from agent.store.schema import (
    ARGUMENTS_DIGEST,
    CALL_ID,
    DONE,
    GENERATION,
    OUTPUT,
    RUN_PAUSE_ID,
    RUNNING,
    SESSIONS,
    STARTED_AT,
    STATE,
    TOOL,
    TOOL_RUNS,
    TTL_FIELD,
    WRITER,
)

_IN_LIMIT = 30  # values one Firestore "in" filter takes


@dataclass(frozen=True)
class ToolCall:
    """An approved call, as its record is keyed (pause, call id) and checked (tool,
    arguments)."""

    pause_id: str
    call_id: str
    tool: str
    arguments_sha256: str
    """SHA-256 hex of the canonical arguments that were shown and approved."""

    def key(self, generation: str) -> str:
        """The record's id: the life, then a digest of the pause and the call id (any
        characters, a ``/`` included, make a valid document id this way)."""
        digest = hashlib.sha256(f"{self.pause_id}\0{self.call_id}".encode()).hexdigest()
        return f"{generation}~{digest}"


_ATTEMPTS = 3
_UNKNOWN = (*OUTAGE, gexc.Aborted, gexc.Cancelled)


@dataclass(frozen=True)
class EarlierRun:
    """What is known of a call that an earlier attempt started."""

    output: str | None
    """Its output when it finished; None when it started and was never seen to finish."""
    tool: str = ""
    arguments_sha256: str = ""
    """What the record says ran (empty for a record without them)."""

    def matches(self, call: ToolCall) -> bool:
        return (self.tool, self.arguments_sha256) == (call.tool, call.arguments_sha256)


def earlier_of(data: dict[str, object]) -> EarlierRun:
    output = data.get(OUTPUT)
    done = data.get(STATE) == DONE and isinstance(output, str)
    return EarlierRun(
        output if done and isinstance(output, str) else None,
        str(data.get(TOOL) or ""),
        str(data.get(ARGUMENTS_DIGEST) or ""),
    )


class ToolRunStore:
    """The at-most-once guard of approved tool calls, in Firestore."""

    def __init__(
        self, client: firestore.Client, *, ttl_seconds: int, timeout_seconds: float
    ) -> None:
        self._client = client
        self._ttl = dt.timedelta(seconds=ttl_seconds)
        self._timeout = timeout_seconds
        self._retry = bounded_retry(timeout_seconds)

    def start(
        self,
        session_id: str,
        generation: str,
        call: ToolCall,
        now: dt.datetime,
        keep_until: dt.datetime | None = None,
    ) -> EarlierRun | None:
        """Record that the call starts now: None when it may run (this created the
        record), else the earlier run. Raises StoreUnavailable: then it must not run.
        ``keep_until``: the record expires no earlier (the end of the claim it runs
        under, which may keep the session, and so its pause, alive past now + TTL)."""
        ref = self._ref(session_id, call.key(generation))
        token = secrets.token_urlsafe(16)
        expire_at = max(now + self._ttl, keep_until or now)
        record = {
            STATE: RUNNING,
            OUTPUT: None,
            STARTED_AT: now,
            WRITER: token,
            TTL_FIELD: expire_at,
            GENERATION: generation,
            RUN_PAUSE_ID: call.pause_id,
            CALL_ID: call.call_id,
            TOOL: call.tool,
            ARGUMENTS_DIGEST: call.arguments_sha256,
        }
        with outage_as_unavailable():
            for _ in range(_ATTEMPTS):
                try:
                    ref.create(record, retry=self._retry, timeout=self._timeout)
                    return None
                except (gexc.AlreadyExists, *_UNKNOWN) as exc:
                    failure: Exception = exc
                # Refused, or its reply lost: our own create may be what is there.
                snap = ref.get(retry=self._retry, timeout=self._timeout)
                if not snap.exists:
                    continue  # never arrived, or still on its way: create again, same token
                data = snap.to_dict() or {}
                if data.get(WRITER) == token:
                    return None  # ours: its reply was lost
                return earlier_of(data)
        raise StoreUnavailable(type(failure).__name__)

    def keep(
        self, session_id: str, generation: str, calls: Sequence[ToolCall], until: dt.datetime
    ) -> None:
        """Make the records of ``calls`` (those that exist) last at least ``until``:
        each claim of a paused run calls it, so that no guard of the pause expires
        while the session lives on. Raises StoreUnavailable: then nothing may run."""
        refs = [self._ref(session_id, call.key(generation)) for call in calls]
        if not refs:
            return
        with outage_as_unavailable():
            snaps = self._client.get_all(refs, retry=self._retry, timeout=self._timeout)
            batch = self._client.batch()
            count = 0
            for snap in snaps:
                data = snap.to_dict() if snap.exists else None
                if data is not None and data.get(TTL_FIELD) and data[TTL_FIELD] < until:
                    # No precondition: a late ``finish`` of an earlier attempt may change
                    # the record meanwhile, and only its expiry is written here.
                    batch.update(snap.reference, {TTL_FIELD: until})
                    count += 1
            if count:
                with contextlib.suppress(gexc.NotFound):  # deleted with its session
                    batch.commit(retry=self._retry, timeout=self._timeout)

    def finish(self, session_id: str, generation: str, call: ToolCall, output: str) -> None:
        """Keep the output, so that a resume retried after a later failure gives the
        model this result instead of running the call again. Best effort: without it
        the retry tells the model the outcome is unknown."""
        ref = self._ref(session_id, call.key(generation))
        with contextlib.suppress(gexc.GoogleAPIError):
            ref.update({STATE: DONE, OUTPUT: output}, retry=self._retry, timeout=self._timeout)

    def earlier(
        self, session_id: str, generation: str, calls: Sequence[ToolCall]
    ) -> dict[str, EarlierRun]:
        """The records of ``calls`` that exist (by call id), read without writing: what
        a rejection or a dropped pause must not contradict. Raises StoreUnavailable."""
        refs = {call.key(generation): call.call_id for call in calls}
        if not refs:
            return {}
        with outage_as_unavailable():
            snaps = list(
                self._client.get_all(
                    [self._ref(session_id, key) for key in refs],
                    retry=self._retry,
                    timeout=self._timeout,
                )
            )
        return {refs[s.id]: earlier_of(s.to_dict() or {}) for s in snaps if s.exists}

    def used(self, session_id: str, generation: str, call_ids: Iterable[str]) -> set[str]:
        """Which of ``call_ids`` a record of this life already carries (of any pause).
        Raises StoreUnavailable."""
        wanted = sorted(set(call_ids))
        found: set[str] = set()
        with outage_as_unavailable():
            for start in range(0, len(wanted), _IN_LIMIT):
                query = self._runs(session_id).where(
                    filter=FieldFilter(CALL_ID, "in", wanted[start : start + _IN_LIMIT])
                )
                for snap in query.stream(retry=self._retry, timeout=self._timeout):
                    data = snap.to_dict() or {}
                    if data.get(GENERATION) == generation:
                        found.add(str(data.get(CALL_ID)))
        return found

    def forget_session(self, session_id: str, generation: str) -> None:
        """Delete the records of one life of the session (their ids start with its
        generation). Raises StoreUnavailable; a DELETE repeated later finds the rest."""
        runs = self._runs(session_id)
        with outage_as_unavailable():
            refs = [
                ref
                for ref in runs.list_documents(retry=self._retry, timeout=self._timeout)
                if ref.id.startswith(f"{generation}~")
            ]
            for start in range(0, len(refs), 500):  # a batch takes at most 500 writes
                batch = self._client.batch()
                for ref in refs[start : start + 500]:
                    batch.delete(ref)
                batch.commit(retry=self._retry, timeout=self._timeout)

    def _runs(self, session_id: str) -> firestore.CollectionReference:
        sessions = self._client.collection(SESSIONS)
        runs: firestore.CollectionReference = sessions.document(doc_id(session_id)).collection(
            TOOL_RUNS
        )
        return runs

    def _ref(self, session_id: str, key: str) -> firestore.DocumentReference:
        ref: firestore.DocumentReference = self._runs(session_id).document(key)
        return ref
