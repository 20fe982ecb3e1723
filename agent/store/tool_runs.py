"""Tool runs: an approved call that acts runs at most once, whoever resumes the run.

One document per approved call, ``agent_sessions/{doc_id}/agent_tool_runs/
{generation}~{call_id}`` (``schema.ToolRunDoc``), created just before the tool runs
and marked done with its output just after. The create is the guard: Firestore
creates a document once, so of two instances that would run the same call (a resume
that took over from one that died, or any race the session's claim does not cover)
exactly one gets to. The other learns what is known: done, with the output to give
the model again, or started and never finished, in which case the call is not run
again and the model is told its outcome is unknown. A create whose reply is lost is
retried by the client and then refused as existing: the record carries the creating
call's own token (``writer``), so a re-read tells its own create from an earlier
attempt's, and a create that cannot be confirmed in time means the call does not run
(503). A record lasts at least as long as any claim of its pause (``keep``): the
session a failed resume kept alive never outlives the guard of a call that ran.

The generation in the id keeps a later life of the session id (whose model may well
produce the same call ids) from meeting an earlier life's runs. Each document expires
with its session (``expire_at``), and deleting the session deletes those of the life it
deleted (``forget_session``, after the session's documents, like its keys' records).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from google.api_core import exceptions as gexc
from google.cloud import firestore

from agent.store.calls import OUTAGE, StoreUnavailable, bounded_retry, outage_as_unavailable
from agent.store.history import doc_id
from agent.store.schema import (
    DONE,
    OUTPUT,
    RUNNING,
    SESSIONS,
    STARTED_AT,
    STATE,
    TOOL_RUNS,
    TTL_FIELD,
    WRITER,
)

_ATTEMPTS = 3
_UNKNOWN = (*OUTAGE, gexc.Aborted, gexc.Cancelled)


@dataclass(frozen=True)
class EarlierRun:
    """What is known of a call that an earlier attempt started."""

    output: str | None
    """Its output when it finished; None when it started and was never seen to finish."""


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
        call_id: str,
        now: dt.datetime,
        keep_until: dt.datetime | None = None,
    ) -> EarlierRun | None:
        """Record that the call starts now: None when it may run (this created the
        record), else the earlier run. Raises StoreUnavailable: then it must not run.
        ``keep_until``: the record expires no earlier (the end of the claim it runs
        under, which may keep the session, and so its pause, alive past now + TTL)."""
        ref = self._ref(session_id, generation, call_id)
        token = secrets.token_urlsafe(16)
        expire_at = max(now + self._ttl, keep_until or now)
        record = {
            STATE: RUNNING,
            OUTPUT: None,
            STARTED_AT: now,
            WRITER: token,
            TTL_FIELD: expire_at,
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
                output = data.get(OUTPUT)
                done = data.get(STATE) == DONE and isinstance(output, str)
                return EarlierRun(output if done else None)
        raise StoreUnavailable(type(failure).__name__)

    def keep(
        self, session_id: str, generation: str, call_ids: Sequence[str], until: dt.datetime
    ) -> None:
        """Make the records of ``call_ids`` (those that exist) last at least ``until``:
        each claim of a paused run calls it, so that no guard of the pause expires
        while the session lives on. Raises StoreUnavailable: then nothing may run."""
        refs = [self._ref(session_id, generation, call_id) for call_id in call_ids]
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

    def finish(self, session_id: str, generation: str, call_id: str, output: str) -> None:
        """Keep the output, so that a resume retried after a later failure gives the
        model this result instead of running the call again. Best effort: without it
        the retry tells the model the outcome is unknown."""
        ref = self._ref(session_id, generation, call_id)
        with contextlib.suppress(gexc.GoogleAPIError):
            ref.update({STATE: DONE, OUTPUT: output}, retry=self._retry, timeout=self._timeout)

    def forget_session(self, session_id: str, generation: str) -> None:
        """Delete the records of one life of the session (their ids start with its
        generation). Raises StoreUnavailable; a DELETE repeated later finds the rest."""
        runs = self._client.collection(SESSIONS).document(doc_id(session_id)).collection(TOOL_RUNS)
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

    def _ref(self, session_id: str, generation: str, call_id: str) -> firestore.DocumentReference:
        runs = self._client.collection(SESSIONS).document(doc_id(session_id)).collection(TOOL_RUNS)
        ref: firestore.DocumentReference = runs.document(f"{generation}~{call_id}")
        return ref
