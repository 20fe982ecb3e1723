"""Conversation history in Firestore: layout, size bounds and consistency.

Storage layout
--------------
One conversation is one session document plus zero or more chunk documents (field
names and document shapes: ``schema.py``)::

    agent_sessions/{doc_id}                          the session document
        tail         bytes      newest part of the encoded history, < CHUNK_BYTES
        chunks       int        number of sealed chunk documents
        items        int        items in the whole history
        bytes        int        size of the encoded history
        turns        int        completed turns (0: claimed, nothing committed yet)
        claim_token  str|null   who is running a turn on it, and until when
        claim_until  Timestamp|null
        owner        str        principal that created it: only it may read, continue
                                or delete it (to anyone else it is absent)
        generation   str        random id of this life of the id, made by the claim that
                                starts it; result objects and idempotency records carry it
        last_commit  str        claim token of the turn that committed last
        commits      array      claim tokens of the last RECENT_COMMITS commits: a
                                commit's own mark, kept by the commits after it
        fenced       str        claim token of the last claim a fence released
        deleted_by   str        on a tombstone (what DELETE leaves): the delete's token
        deleted_generation str  on a tombstone: the life it removed
        chunk_expiry map        ``at``: no sealed chunk expires before it; ``commit``: the
                                commit that wrote it (see Expiry)
        summary      str|null   running summary of the oldest items (what the model is sent
                                instead of them once the history passes its context budget)
        summary_items int       leading items the summary covers
        summary_offset int      byte offset in the encoded history of the first item it does
                                not cover
        summary_provenance map|null  turns it covers, when and by which model it was
                                written (``summary_provenance.py``)
        token_ratio  float      the provider's token counts over our estimate, calibrated
                                turn by turn
        paused       map|null   a run waiting for a person's approval: the pending calls and
                                the SDK's run state (``paused_runs.py`` has its bounds)
        approvals    array      the last approval decisions (who, when, which call, why)
        usage        map        running totals of this life's committed turns: requests,
                                input_tokens, cached_input_tokens, output_tokens (ints),
                                cost_usd (float; the summariser's calls included, a model
                                without a known price adds nothing); rewritten whole, as
                                absolute values, by each turn's commit
        created_at, updated_at  Timestamp
        expire_at    Timestamp  TTL field
    agent_sessions/{doc_id}/agent_history_chunks/{000000..}
        data         bytes      exactly CHUNK_BYTES of the encoded history
        expire_at    Timestamp  TTL field, never before the session's (see Expiry)
    agent_sessions/{doc_id}/agent_tool_runs/{generation}~{call_id}
                                                     one approved tool call's run, written
                                                     by store/tool_runs.py
    agent_idempotency/{sha256(principal, key)}       one Idempotency-Key's record,
                                                     written by store/idempotency_records.py
                                                     (its header has the fields)
    agent_spend/{sha256(principal)}_{day}/agent_spend_turns/{turn}
                                                     a principal's spend per UTC day, one
                                                     document per turn, written by
                                                     store/spend.py (its header has the
                                                     fields)

The encoded history is one byte stream: each item as compact JSON and a newline.
Chunks cut that stream every CHUNK_BYTES regardless of item boundaries, so an item
of any size fits and no document holds more than CHUNK_BYTES (512 KiB) of history,
whatever the history length. The session document's other large fields are bounded
too (the summary, a paused run's state and pending calls, the decision log), so that
with the tail they stay under Firestore's 1 MiB with room to spare (``doc_size.py``).
``doc_id`` is the session id, except that ids Firestore reserves (``__x__``) get a ``~``
prefix, a character session ids cannot contain.

Cost
----
Loading a whole history (``GET``) reads the session document and then ``chunks`` chunk
documents: one read per 512 KiB. A turn reads only what its model call may be sent: the
summary (on the session document) and the items after ``summary_offset``, from the
chunk that holds that offset on; so a turn costs one read and two commits (the claim and
the final commit) while that part is under 512 KiB, whatever the whole history's length.

Consistency
-----------
* A turn claims the session first: a write conditioned on the ``update_time`` it
  read, so of two concurrent claims exactly one wins and the other gets
  ``SessionBusy`` at once, without waiting on a lock. A claim whose condition fails
  looks again: only a claim that is really held is ``SessionBusy`` (a session deleted
  in between is simply created). A claim lapses at its ``claim_until`` (the turn's
  deadline), so a crashed instance never locks a session for good; the claim write
  also slides ``expire_at`` to at least ``claim_until`` (on the chunks too, when the
  TTL is shorter than the turn), so TTL deletion cannot take the history away in the
  middle of the turn.
* All items of a turn are written in one atomic commit, conditioned on the claim
  write's ``update_time``: if the claim was lost, nothing is written. A run that
  fails leaves the history exactly as it was.
* The usage totals ride in that commit as absolute values: the totals the claim read
  plus the turn's own usage. Nobody else writes the document while the claim is held,
  so no increment is needed and none is lost; a failed turn adds nothing. Whatever
  else must land with the turn and only with it (the Idempotency-Key record) joins the
  same commit through ``extra_writes``; the principal's spend does not (every model call
  is charged, whatever the turn's outcome: store/spend.py).
* A commit whose reply is lost (a reset, a timeout, a retry refused because the first
  attempt landed) has an unknown outcome, and ``commit`` finds it out before it
  answers: the commit adds its claim token to ``commits``, so a re-read tells whether
  it landed, even after later turns committed. A claim still held means not landed
  yet: the claim is then released by a write with the commit's own precondition (the
  fence, which marks ``fenced`` and never deletes the document, a first turn's
  included), after which the commit can never land. A claim released without our
  token in ``commits`` was released by our fence (whose reply may have been lost too)
  or lapsed: not landed. Landed returns the history; not landed raises
  ``CommitFailed`` (``ClaimLost`` when the claim had lapsed); a document gone, or
  Firestore not answering in time, ``CommitUnknown`` (nothing may be deleted that the
  turn might reference).
* A claim recognises itself: a claim write whose reply was lost is retried with the
  same token, and a re-read that finds our token is our claim, never ``SessionBusy``
  to our own request; one whose outcome is unknown is written again (one lands, the
  other's precondition fails), so no claim lands after its turn gave up.
* Each claim that starts a new life of an id (absent, expired, or a first turn that
  never committed) gives it a new random ``generation``. Deletes report the
  generation they removed, so callers clean up only that life's objects and records,
  never those of a life begun since under the same id.
* Ownership: ``load``, ``claim`` and ``delete`` take the caller's principal. A live
  session of another owner reads as absent, cannot be deleted, and cannot be
  claimed (``SessionTaken``); an expired one is taken over like an absent one.
* Reads are snapshots: ``load`` reads the chunks at the session document's
  ``read_time``, so a history is never stitched from two lives of an id (one deleted
  and re-created between the two reads). Sealed chunks are never rewritten (only
  their ``expire_at`` slides).
* A delete whose condition fails looks again: gone is ``ABSENT``, held is
  ``SessionBusy``, anything else is tried again. A delete empties the session document
  into a tombstone with its own token and the generation it removed, instead of
  removing it: a delete whose reply was lost finds its token and reports ``DELETED``;
  a later delete of the tombstone reports ``ABSENT`` with that generation, so the
  caller can still clean that life up. Tombstones expire by TTL.

Expiry
------
Every document carries ``expire_at``. Each commit slides the session document's to
now + ``SESSION_TTL_SECONDS`` (the TTL). Sliding every sealed chunk's too would make a
turn's writes grow with the history (one write per 512 KiB), so a chunk is written with
half a TTL more (now + 1.5 TTL) and a commit slides the sealed chunks only when the
earliest of their expiries (``chunk_expiry.at``) is before the session document's new
one, all of them in that commit (``chunks_to_refresh``): each chunk is rewritten at most
once per half TTL, and the commits in between write no chunk they do not seal. Hence
the invariant: **no chunk of a session expires before its session document** (every
write that moves either moves both in one atomic commit, the claim's slide included).
Firestore's TTL deletion is lazy (up to about 24 h) and the emulator never deletes:
an expired document may still be read, and a chunk may outlive its session. So the
session document alone decides: reads treat an expired session as absent, whatever
its chunks; a turn on an expired id starts a new, empty history under it (its dead
chunks are rewritten or deleted by its commit, never read); and a chunk the TTL sweep
takes has passed its ``expire_at``, hence so has its session. ``chunk_expiry`` is
trusted only while the commit that wrote it is ``last_commit``; otherwise (a document
written before it existed) the chunks are known to expire with the session document,
as older code kept them. docs/design.md ("Expiry") has the argument in full.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

from agent.base import tracing
from agent.base.clock import retry_after, utc_now
from agent.store.calls import OUTAGE, StoreUnavailable, bounded_retry, outage_as_unavailable
from agent.store.doc_size import clip_utf8
from agent.store.paused_runs import (
    Decision,
    PausedRun,
    PendingCall,
    check_claim,
    logged,
    paused_fields,
    paused_from,
)
from agent.store.schema import (
    APPROVALS,
    BYTES,
    CACHED_INPUT_TOKENS,
    CHUNK_COUNT,
    CHUNK_EXPIRY,
    CHUNKS,
    CLAIM_TOKEN,
    CLAIM_UNTIL,
    COMMITS,
    COST_USD,
    CREATED_AT,
    DATA,
    DELETED_BY,
    DELETED_GENERATION,
    EXPIRY_AT,
    EXPIRY_COMMIT,
    FENCED,
    GENERATION,
    INPUT_TOKENS,
    ITEMS,
    LAST_COMMIT,
    MAX_SUMMARY_BYTES,
    OUTPUT_TOKENS,
    OWNER,
    PAUSE_ATTEMPTS,
    PAUSE_FINGERPRINT,
    PAUSE_FOLDED,
    PAUSE_ID,
    PAUSE_PENDING,
    PAUSED,
    PAUSED_AT,
    REQUESTS,
    SESSIONS,
    SUMMARY,
    SUMMARY_ITEMS,
    SUMMARY_OFFSET,
    SUMMARY_PROVENANCE,
    TAIL,
    TOKEN_RATIO,
    TTL_FIELD,
    TURNS,
    UPDATED_AT,
    USAGE,
    UsageTotalsDoc,
    chunk_id,
)
from agent.store.summary_provenance import SummaryProvenance

log = logging.getLogger(__name__)

CHUNK_BYTES = 512 * 1024
MAX_TURN_BYTES = 3 * 1024 * 1024
"""Largest history growth one turn may add: our limit. Its commit is one gRPC message;
the emulator refuses messages over 4 MiB (real Firestore allows 10 MiB), and the tests
run on the emulator, so the service stays under the tighter cap."""
_ATTEMPTS = 3
"""How often a claim or a delete whose condition failed looks again before it gives
up: each failure means the document changed, and a session changes about once a second
at most."""
_MIN_CALL_SECONDS = 0.05
RECENT_COMMITS = 16
"""Commit tokens kept in ``commits``: a turn whose reply was lost re-reads within seconds,
so its token is still there unless 16 turns committed in between."""

Item = dict[str, Any]

# A commit refused with these did not land in that attempt; an earlier attempt of the
# same call (the client retries transient errors) may have.
_REFUSED = (gexc.FailedPrecondition, gexc.NotFound)
# A commit that ended with these may or may not have landed.
_UNKNOWN = (*OUTAGE, gexc.Aborted, gexc.Cancelled)


class StoreError(Exception):
    """Base of the errors this module raises on purpose."""


class SessionBusy(StoreError):
    """Another turn holds the session."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("session is busy")
        self.retry_after = retry_after


class SessionTaken(StoreError):
    """The id names a live session of another principal."""


class ClaimLost(StoreError):
    """The claim lapsed before the commit; nothing was written."""


class CommitFailed(StoreError):
    """Firestore failed the commit and the claim was fenced: nothing was written, and
    the commit can never land later."""


class CommitUnknown(StoreError):
    """Whether the commit landed could not be found out in time (Firestore did not
    answer). Anything the turn might reference must be kept."""


class TurnTooLarge(StoreError):
    """One turn's items exceed MAX_TURN_BYTES."""


class Deletion(enum.Enum):
    DELETED = "deleted"  # a live session of the caller's
    ABSENT = "absent"  # nothing live under this id (an expired history's leftovers went)
    NOT_YOURS = "not_yours"  # someone else's: left alone, reported to them as absent


@dataclass(frozen=True)
class Deleted:
    """What ``delete`` did, and the life (generation) whose documents it removed; for a
    session an earlier delete removed (its tombstone), the life that one removed, so a
    clean-up that failed then can be repeated."""

    outcome: Deletion
    generation: str | None = None


@dataclass(frozen=True)
class UsageTotals:
    """A session's running totals: what its committed turns spent on the model."""

    requests: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def plus(self, other: UsageTotals) -> UsageTotals:
        return UsageTotals(
            self.requests + other.requests,
            self.input_tokens + other.input_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.output_tokens + other.output_tokens,
            # Rounded as each cost is: sums of float dollars drift in the last digits.
            round(self.cost_usd + other.cost_usd, 8),
        )

    def as_doc(self) -> UsageTotalsDoc:
        return {
            REQUESTS: self.requests,
            INPUT_TOKENS: self.input_tokens,
            CACHED_INPUT_TOKENS: self.cached_input_tokens,
            OUTPUT_TOKENS: self.output_tokens,
            COST_USD: self.cost_usd,
        }

    @classmethod
    def from_doc(cls, doc: Any) -> UsageTotals:
        """From a stored map; a session written before totals existed has none (zero)."""
        if not isinstance(doc, dict):
            return cls()
        return cls(
            int(doc.get(REQUESTS) or 0),
            int(doc.get(INPUT_TOKENS) or 0),
            int(doc.get(CACHED_INPUT_TOKENS) or 0),
            int(doc.get(OUTPUT_TOKENS) or 0),
            float(doc.get(COST_USD) or 0.0),
        )


@dataclass(frozen=True)
class History:
    session_id: str
    items: list[Item]
    turns: int
    expire_at: dt.datetime
    summary: str | None = None
    summary_items: int = 0
    """How many leading items ``summary`` covers (they are still in ``items``)."""
    pending: tuple[PendingCall, ...] = ()
    """Tool calls of a paused run waiting for approval."""
    approvals: tuple[Decision, ...] = ()
    """The last approval decisions, oldest first."""
    totals: UsageTotals = UsageTotals()
    """The running usage totals of the session's committed turns."""
    pause_id: str | None = None
    """The paused run's id (what decisions name), when it waits for approval."""
    summary_provenance: SummaryProvenance | None = None
    """Where ``summary`` came from (None: no summary, or one older than provenance)."""


@dataclass(frozen=True)
class Summary:
    """A running summary, and where the items it does not cover begin."""

    text: str
    items: int
    """Leading items of the whole history it covers."""
    offset: int
    """Byte offset in the encoded history of the first item it does not cover."""
    provenance: SummaryProvenance | None = None


@dataclass(frozen=True)
class SessionInfo:
    """Who owns a live session, and which life of its id it is."""

    owner: str | None
    generation: str | None


@dataclass(frozen=True)
class Claim:
    """A running turn's hold on a session, with the history it loaded."""

    session_id: str
    token: str
    update_time: Any  # protobuf Timestamp of the claim write: the commit's precondition
    new_session: bool
    history: list[Item]
    turns: int
    tail: bytes
    chunks: int
    stale_chunks: int  # chunk documents of an expired history, deleted at commit
    total_bytes: int
    created_at: dt.datetime
    until: dt.datetime
    """When the claim lapses (the turn's deadline)."""
    generation: str
    """The life of the session this turn belongs to."""
    replaced: bool = False
    """The claim took over the document of an earlier, dead life of this id."""
    summary: Summary | None = None
    """The running summary; ``history`` then holds only the items after it."""
    item_count: int = 0
    """Items in the whole stored history (``history`` may be only its uncovered end)."""
    item_ends: tuple[int, ...] = ()
    """Byte offset, in the whole encoded history, just past each item of ``history``."""
    token_ratio: float = 1.0
    paused: PausedRun | None = None
    """The paused run this claim resumes (``claim(resume=...)``), with its state."""
    approvals: tuple[Decision, ...] = ()
    totals: UsageTotals = UsageTotals()
    """The session's usage totals as the claim read them: a turn commits them plus its
    own usage (nobody else writes them while the claim is held)."""
    commits: tuple[str, ...] = ()
    """The recent commit tokens as the claim read them (the commit adds its own)."""
    chunks_expire_at: dt.datetime | None = None
    """No sealed chunk expires before it (None: not known, no chunk)."""


def doc_id(session_id: str) -> str:
    if session_id.startswith("__") and session_id.endswith("__"):
        return "~" + session_id
    return session_id


def new_generation() -> str:
    return secrets.token_urlsafe(12)


def encode(items: Sequence[Item]) -> bytes:
    return b"".join(
        json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        for item in items
    )


def decode(data: bytes) -> list[Item]:
    return [json.loads(line) for line in data.split(b"\n") if line]


def decode_from(data: bytes, start: int, base: int) -> tuple[list[Item], tuple[int, ...]]:
    """The items of ``data[start:]`` (``start`` is an item boundary), and the offset just
    past each, counted from ``base`` (where ``data`` begins in the whole history)."""
    items: list[Item] = []
    ends: list[int] = []
    position = start
    for line in data[start:].split(b"\n"):
        position += len(line) + 1
        if line:
            items.append(json.loads(line))
            ends.append(base + position)
    return items, tuple(ends)


class HistoryStore:
    """Reads and writes conversation histories. Thread-safe; calls are synchronous."""

    def __init__(
        self, client: firestore.Client, *, ttl_seconds: int, timeout_seconds: float
    ) -> None:
        self._client = client
        self._ttl = dt.timedelta(seconds=ttl_seconds)
        self._timeout = timeout_seconds
        self._retry = bounded_retry(timeout_seconds)

    # -- reading -------------------------------------------------------------------

    def load(self, session_id: str, now: dt.datetime, owner: str | None = None) -> History | None:
        """The live history of a session, or None when absent or expired (or, with
        ``owner``, owned by someone else). A snapshot: the chunks are read as of the
        session document's read."""
        with outage_as_unavailable():
            snap = self._session_ref(session_id).get(retry=self._retry, timeout=self._timeout)
            data = snap.to_dict() if snap.exists else None
            if data is None or not _is_live(data, now) or not _owned_by(data, owner):
                return None
            stream = self._read_chunks(session_id, data[CHUNK_COUNT], snap.read_time)
        summary = _summary_of(data)
        paused = paused_from(data.get(PAUSED))
        return History(
            session_id,
            decode(stream + bytes(data[TAIL])),
            data[TURNS],
            data[TTL_FIELD],
            summary.text if summary else None,
            summary.items if summary else 0,
            paused.pending if paused else (),
            tuple(data.get(APPROVALS) or ()),
            UsageTotals.from_doc(data.get(USAGE)),
            paused.pause_id if paused else None,
            summary.provenance if summary else None,
        )

    def paused_run(
        self, session_id: str, now: dt.datetime, owner: str | None = None
    ) -> PausedRun | None:
        """The live session's paused run, without its state (None: the session is absent,
        someone else's, or not paused). What an approval checks before it claims."""
        fields = [OWNER, TURNS, TTL_FIELD] + [
            f"{PAUSED}.{name}"
            for name in (
                PAUSE_ID,
                PAUSE_PENDING,
                PAUSE_FINGERPRINT,
                PAUSED_AT,
                PAUSE_ATTEMPTS,
                PAUSE_FOLDED,
            )
        ]
        with outage_as_unavailable():
            snap = self._session_ref(session_id).get(
                fields, retry=self._retry, timeout=self._timeout
            )
            data = snap.to_dict() if snap.exists else None
        if data is None or not _is_live(data, now) or not _owned_by(data, owner):
            return None
        return paused_from(data.get(PAUSED))

    def info(self, session_id: str, now: dt.datetime) -> SessionInfo | None:
        """Owner and generation of the live session ``session_id``; None when absent or
        expired. For routes that act on a session without running a turn."""
        with outage_as_unavailable():
            snap = self._session_ref(session_id).get(
                [OWNER, TURNS, TTL_FIELD, GENERATION], retry=self._retry, timeout=self._timeout
            )
            data = snap.to_dict() if snap.exists else None
        if data is None or not _is_live(data, now):
            return None
        owner, generation = data.get(OWNER), data.get(GENERATION)
        return SessionInfo(
            owner if isinstance(owner, str) else None,
            generation if isinstance(generation, str) else None,
        )

    def owner_of(self, session_id: str, now: dt.datetime) -> str | None:
        """The owner of the live session ``session_id``; None when absent or expired."""
        found = self.info(session_id, now)
        return found.owner if found else None

    def current_generation(self, session_id: str, now: dt.datetime) -> str | None:
        """The generation of the life the id has now: a live session's, or that of a
        first turn still holding its claim. None when no life is current: everything
        of earlier lives may then be cleaned up."""
        with outage_as_unavailable():
            snap = self._session_ref(session_id).get(
                [TURNS, TTL_FIELD, GENERATION, CLAIM_TOKEN, CLAIM_UNTIL],
                retry=self._retry,
                timeout=self._timeout,
            )
            data = snap.to_dict() if snap.exists else None
        if data is None or not (_is_live(data, now) or _is_held(data, now)):
            return None
        generation = data.get(GENERATION)
        return generation if isinstance(generation, str) else None

    # -- a turn: claim, then commit or release ---------------------------------------

    def claim(
        self,
        session_id: str,
        now: dt.datetime,
        until: dt.datetime,
        owner: str | None = None,
        *,
        resume: str | None = None,
    ) -> Claim:
        """Take the session for one turn until ``until``; raises SessionBusy, and with
        ``owner`` SessionTaken when someone else's live session has this id. A paused
        session is taken only by ``resume`` naming its paused run (else RunPaused), and
        ``resume`` naming any other is PauseChanged (``paused_runs.py``)."""
        ref = self._session_ref(session_id)
        token = secrets.token_urlsafe(16)
        unknown: Exception | None = None
        tried: Any = None  # the snapshot our last claim write was conditioned on
        with outage_as_unavailable():
            for _ in range(_ATTEMPTS):
                snap = ref.get(retry=self._retry, timeout=self._timeout)
                data = snap.to_dict() if snap.exists else None
                if tried is not None and data is not None and data.get(CLAIM_TOKEN) == token:
                    # An earlier attempt of this very claim landed and its reply was lost:
                    # it is ours, never busy for our own request. What it claimed is what
                    # that attempt read.
                    generation = str(data.get(GENERATION))
                    return self._claimed(
                        session_id, tried, token, now, until, generation, snap.update_time
                    )
                tried = snap
                try:
                    return self._claim(session_id, ref, snap, token, now, until, owner, resume)
                except (gexc.AlreadyExists, gexc.Conflict, *_REFUSED):
                    # The document changed since we read it: another claim won (the next
                    # read says busy), a delete or a first turn's release removed it, or
                    # our own write landed and its reply was lost (``_claim`` saw that).
                    continue
                except _UNKNOWN as exc:
                    # Our write may be on its way: claiming again with the same token
                    # either finds it landed (ours) or lands first and fences it.
                    unknown = exc
                    continue
        if unknown is not None:
            raise StoreUnavailable(type(unknown).__name__) from unknown
        raise SessionBusy(1)

    def _claim(
        self,
        session_id: str,
        ref: firestore.DocumentReference,
        snap: Any,
        token: str,
        now: dt.datetime,
        until: dt.datetime,
        owner: str | None,
        resume: str | None,
    ) -> Claim:
        data: dict[str, Any] | None = snap.to_dict() if snap.exists else None
        hold: dict[str, Any] = {CLAIM_TOKEN: token, CLAIM_UNTIL: until}
        if owner is not None:
            hold[OWNER] = owner
        batch = self._client.batch()
        live = data is not None and _is_live(data, now)
        if data is not None:
            _raise_if_taken(data, now, owner)
            _raise_if_held(data, now)
        paused = paused_from(data.get(PAUSED)) if data is not None and live else None
        check_claim(paused, resume)
        if resume is not None:
            # Counted in the claim's own write: a later resume knows this one began.
            hold[f"{PAUSED}.{PAUSE_ATTEMPTS}"] = firestore.Increment(1)
        if data is None:
            generation = new_generation()
            batch.create(ref, _empty_session(now, until, 0) | hold | {GENERATION: generation})
        elif not live:
            # A dead life (expired, or a first turn that never committed) is replaced: the
            # document restarts empty under a new generation. Its chunks are counted as
            # stale, deleted by this turn's commit.
            generation = new_generation()
            fresh = _empty_session(now, until, int(data.get(CHUNK_COUNT, 0)))
            batch.update(
                ref,
                fresh | hold | {GENERATION: generation},
                option=self._precondition(snap.update_time),
            )
        else:
            assert data is not None
            generation = data.get(GENERATION) or new_generation()
            # TTL must not delete the document mid-turn: it lives at least as long as the claim.
            slide = {TTL_FIELD: max(data[TTL_FIELD], until), GENERATION: generation}
            batch.update(ref, hold | slide, option=self._precondition(snap.update_time))
            # A TTL shorter than the turn: its chunks too, none before the document.
            for index in chunks_to_refresh(data[CHUNK_COUNT], _chunk_floor(data), until):
                batch.update(self._chunk_ref(session_id, index), {TTL_FIELD: until})
        results = batch.commit(retry=self._retry, timeout=self._timeout)
        claimed_at = results[0].update_time
        return self._claimed(session_id, snap, token, now, until, generation, claimed_at)

    def reclaim(
        self, session_id: str, token: str, now: dt.datetime, owner: str | None = None
    ) -> Claim:
        """The claim ``token`` still holds (unexpired), taken up again: a fresh Claim of
        the session document as it is now, its history loaded as a claim loads it and its
        ``update_time`` the commit's precondition. What a background run's later slices
        continue (nobody else writes a held session, so it is the history the run began
        from). Reads only; raises ClaimLost when the token holds it no more."""
        ref = self._session_ref(session_id)
        with outage_as_unavailable():
            snap = ref.get(retry=self._retry, timeout=self._timeout)
            data = snap.to_dict() if snap.exists else None
            if data is None or data.get(CLAIM_TOKEN) != token or not _is_held(data, now):
                raise ClaimLost(session_id)
            if not _owned_by(data, owner):
                raise ClaimLost(session_id)
            until: dt.datetime = data[CLAIM_UNTIL]
            generation = str(data.get(GENERATION))
            claim = self._claimed(session_id, snap, token, now, until, generation, snap.update_time)
        # The first slice's claim dealt with any dead life it replaced.
        return dataclasses.replace(claim, replaced=False)

    def _claimed(
        self,
        session_id: str,
        snap: Any,
        token: str,
        now: dt.datetime,
        until: dt.datetime,
        generation: str,
        claimed_at: Any,
    ) -> Claim:
        """The claim our write made of the document as ``snap`` had it."""
        data: dict[str, Any] | None = snap.to_dict() if snap.exists else None
        live = data is not None and _is_live(data, now)
        paused = paused_from(data.get(PAUSED)) if data is not None and live else None
        commits = tuple(data.get(COMMITS) or ()) if data is not None else ()
        if not live:
            stale = 0 if data is None else int(data.get(CHUNK_COUNT, 0))
            return Claim(
                session_id,
                token,
                claimed_at,
                new_session=True,
                history=[],
                turns=0,
                tail=b"",
                chunks=0,
                stale_chunks=stale,
                total_bytes=0,
                created_at=now,
                until=until,
                generation=generation,
                replaced=data is not None,
                commits=commits,
            )
        assert data is not None
        tail = bytes(data[TAIL])
        summary = _summary_of(data)
        # Only what the model may be sent: from the chunk holding the summary's offset on.
        # Nobody else writes the session while we hold it: the snapshot we claimed is current.
        offset = summary.offset if summary else 0
        first = min(offset // CHUNK_BYTES, data[CHUNK_COUNT])
        with tracing.span("load_history", **{"agent.history_chunks": data[CHUNK_COUNT] - first}):
            stream = (
                self._read_chunks(session_id, data[CHUNK_COUNT], snap.read_time, first=first) + tail
            )
            items, ends = decode_from(stream, offset - first * CHUNK_BYTES, first * CHUNK_BYTES)
        return Claim(
            session_id,
            token,
            claimed_at,
            new_session=False,
            history=items,
            turns=data[TURNS],
            tail=tail,
            chunks=data[CHUNK_COUNT],
            stale_chunks=0,
            total_bytes=int(data.get(BYTES, first * CHUNK_BYTES + len(stream))),
            created_at=data[CREATED_AT],
            until=until,
            generation=generation,
            summary=summary,
            item_count=int(data.get(ITEMS, len(items))),
            item_ends=ends,
            token_ratio=float(data.get(TOKEN_RATIO) or 1.0),
            paused=paused,
            approvals=tuple(data.get(APPROVALS) or ()),
            totals=UsageTotals.from_doc(data.get(USAGE)),
            commits=commits,
            chunks_expire_at=_chunk_floor(data),
        )

    def commit(
        self,
        claim: Claim,
        new_items: Sequence[Item],
        now: dt.datetime,
        *,
        replace: bool = False,
        count_turn: bool = True,
        extra_writes: Callable[[Any, dt.datetime], None] | None = None,
        time_left: float | None = None,
        summary: Summary | None = None,
        token_ratio: float | None = None,
        paused: PausedRun | None = None,
        decisions: Sequence[Decision] = (),
        totals: UsageTotals | None = None,
    ) -> History:
        """Append ``new_items`` (or, with ``replace``, make them the whole history)
        and release the claim, in one atomic commit.

        ``extra_writes(batch, expire_at)`` adds writes of its own to that commit, so
        they land if and only if the turn does (the idempotency record).
        ``time_left`` (seconds) bounds the commit and, should its reply be lost,
        finding out whether it landed; without it each call gets the store's timeout.
        ``summary`` replaces the running summary in the same commit (a summary covers
        only stored items, so it lands with them or not at all); ``token_ratio`` updates
        the session's calibration; ``totals`` replaces the usage totals (absolute values:
        the claim's plus this turn's, so a commit that fails adds nothing). ``paused`` is
        the run the turn paused (None: the session has none after this commit, so a
        resumed run's state goes with it); ``decisions`` join the decision log.

        Returns when the turn is stored, also when the reply was lost but the turn
        landed. Raises ClaimLost (the claim had lapsed; nothing written),
        CommitFailed (not written, and fenced so it never will be) or CommitUnknown
        (could not be found out in time); the claim is no longer ours after any of
        them."""
        added = encode(new_items)
        if len(added) > MAX_TURN_BYTES:
            raise TurnTooLarge(f"{len(added)} bytes in one turn")
        if replace and claim.summary is not None:
            # The claim holds only the end of the history: rewriting it whole would drop
            # the rest. Only library use replaces, and it never summarises.
            raise ValueError("cannot replace a summarised history")
        if replace:
            first_chunk, tail, old_chunks = 0, added, claim.chunks
        else:
            first_chunk, tail, old_chunks = claim.chunks, claim.tail + added, claim.chunks
        expire_at = now + self._ttl
        chunk_expire_at = expire_at + self._ttl / 2  # see Expiry in the header
        ref = self._session_ref(claim.session_id)
        batch = self._client.batch()
        sealed = 0
        while len(tail) >= CHUNK_BYTES:
            chunk = {DATA: tail[:CHUNK_BYTES], TTL_FIELD: chunk_expire_at}
            batch.set(self._chunk_ref(claim.session_id, first_chunk + sealed), chunk)
            tail, sealed = tail[CHUNK_BYTES:], sealed + 1
        chunks = first_chunk + sealed
        # Sealed earlier: only their expiry slides, and only when it would fall before the
        # session document's.
        refresh = chunks_to_refresh(first_chunk, claim.chunks_expire_at, expire_at)
        for index in refresh:
            batch.update(self._chunk_ref(claim.session_id, index), {TTL_FIELD: chunk_expire_at})
        kept_floor = claim.chunks_expire_at if first_chunk and not refresh else None
        floor = min(kept_floor or chunk_expire_at, chunk_expire_at)
        for index in range(chunks, max(old_chunks, claim.stale_chunks)):
            batch.delete(self._chunk_ref(claim.session_id, index))
        before = claim.item_count or len(claim.history)
        items = len(new_items) if replace else before + len(new_items)
        total = len(added) if replace else claim.total_bytes + len(added)
        turns = claim.turns + (1 if count_turn else 0)
        fields = {
            TAIL: tail,
            CHUNK_COUNT: chunks,
            ITEMS: items,
            BYTES: total,
            TURNS: turns,
            CLAIM_TOKEN: None,
            CLAIM_UNTIL: None,
            LAST_COMMIT: claim.token,
            COMMITS: [*claim.commits, claim.token][-RECENT_COMMITS:],
            CHUNK_EXPIRY: {EXPIRY_AT: floor, EXPIRY_COMMIT: claim.token} if chunks else None,
            CREATED_AT: claim.created_at,
            **_summary_fields(summary or claim.summary),
            **({TOKEN_RATIO: token_ratio} if token_ratio is not None else {}),
            PAUSED: paused_fields(paused) if paused is not None else None,
            **({APPROVALS: logged(claim.approvals, decisions)} if decisions else {}),
            **({USAGE: totals.as_doc()} if totals is not None else {}),
            UPDATED_AT: now,
            TTL_FIELD: expire_at,
        }
        batch.update(ref, fields, option=self._precondition(claim.update_time))
        if extra_writes is not None:
            extra_writes(batch, expire_at)
        history = claim.history if not replace else []
        kept = summary or claim.summary
        stored = History(
            claim.session_id,
            [*history, *new_items],
            turns,
            expire_at,
            kept.text if kept else None,
            kept.items if kept else 0,
            paused.pending if paused else (),
            tuple(logged(claim.approvals, decisions)),
            totals or claim.totals,
            paused.pause_id if paused else None,
            kept.provenance if kept else None,
        )
        # Half of the time left for the commit, half for finding out its outcome.
        ends = time.monotonic() + (time_left if time_left is not None else 3 * self._timeout)
        timeout = min(self._timeout, (ends - time.monotonic()) / 2)
        if timeout < _MIN_CALL_SECONDS:
            raise ClaimLost(claim.session_id)  # no time to write: the claim lapses unused
        try:
            batch.commit(retry=bounded_retry(timeout), timeout=timeout)
        except (*_REFUSED, *_UNKNOWN) as exc:
            refused = isinstance(exc, _REFUSED)
            try:
                self._resolve(claim, ends, refused=refused)
            except StoreError as outcome:
                log.warning("commit failed (%s): %s", type(exc).__name__, type(outcome).__name__)
                raise
            log.warning("commit failed (%s) but had landed", type(exc).__name__)
        return stored

    def _resolve(self, claim: Claim, ends: float, *, refused: bool) -> None:
        """Find out whether a commit whose reply was lost landed: returns if it did,
        raises ClaimLost, CommitFailed or CommitUnknown if not (see the header)."""
        ref = self._session_ref(claim.session_id)
        for _ in range(_ATTEMPTS):
            snap = self._call_before(ends, lambda t: ref.get(retry=bounded_retry(t), timeout=t))
            data = snap.to_dict() if snap.exists else None
            if data is None:
                # Only a delete removes a claimed document (a first turn's fence empties
                # it, and a delete leaves a tombstone): gone, we cannot tell.
                raise CommitUnknown(claim.session_id)
            if claim.token in (data.get(COMMITS) or ()) or data.get(LAST_COMMIT) == claim.token:
                return  # landed: the commit's own mark, which later commits keep
            # Still ours: the commit has not landed, but it may still be on its way. Fence
            # it: release the claim under the commit's own precondition. Refused: the
            # document changed, which only our commit can have done; look again.
            if data.get(CLAIM_TOKEN) == claim.token and not self._call_before(
                ends, lambda t: self._release(claim, t, fence=True)
            ):
                continue
            # Not landed: our fence released the claim (its mark, or its reply was lost
            # and a later turn followed), or the claim lapsed and was taken over.
            if refused or (data.get(FENCED) != claim.token and utc_now() >= claim.until):
                raise ClaimLost(claim.session_id)
            raise CommitFailed(claim.session_id)
        raise CommitUnknown(claim.session_id)

    def _call_before(self, ends: float, call: Callable[[float], Any]) -> Any:
        timeout = min(self._timeout, ends - time.monotonic())
        if timeout < _MIN_CALL_SECONDS:
            raise CommitUnknown("no time left to find out")
        try:
            return call(timeout)
        except _UNKNOWN as exc:
            raise CommitUnknown(type(exc).__name__) from exc

    def release(self, claim: Claim) -> None:
        """Give the session back after a failed turn; history stays untouched.

        Best effort: if this fails too, the claim lapses at its deadline."""
        with contextlib.suppress(gexc.GoogleAPIError):
            self._release(claim, self._timeout)

    def _release(self, claim: Claim, timeout: float, *, fence: bool = False) -> bool:
        """Release the claim if the session is still as the claim left it; False when
        it is not (the condition failed). Raises what the client raises. A ``fence``
        leaves its mark (``FENCED``), also on a first turn's document, which it empties
        rather than deletes: a re-read after a lost reply tells it from the commit."""
        ref = self._session_ref(claim.session_id)
        option = self._precondition(claim.update_time)
        retry = bounded_retry(timeout)
        mark = {FENCED: claim.token} if fence else {}
        try:
            if not fence and claim.turns == 0 and claim.stale_chunks == 0 and not claim.history:
                ref.delete(option=option, retry=retry, timeout=timeout)
            else:
                ref.update(
                    {CLAIM_TOKEN: None, CLAIM_UNTIL: None, **mark},
                    option=option,
                    retry=retry,
                    timeout=timeout,
                )
        except _REFUSED:
            return False
        return True

    # -- deleting ----------------------------------------------------------------

    def delete(self, session_id: str, now: dt.datetime, owner: str | None = None) -> Deleted:
        """Delete every document of a session (an expired one's leftovers too), unless
        ``owner`` is given and someone else owns it. Raises SessionBusy while a turn
        holds it.

        The session document is not removed but emptied into a tombstone carrying the
        delete's own token (``DELETED_BY``) and the life it removed: a delete whose reply
        was lost finds its mark on re-read and reports what it did, never a 404 for a
        session it deleted. The tombstone holds no content and expires by TTL."""
        ref = self._session_ref(session_id)
        token = secrets.token_urlsafe(16)
        done: Deleted | None = None  # what our last write would have done, had it landed
        with outage_as_unavailable():
            for _ in range(_ATTEMPTS):
                snap = ref.get(retry=self._retry, timeout=self._timeout)
                if not snap.exists:
                    return Deleted(Deletion.ABSENT)
                data = snap.to_dict() or {}
                if done is not None and data.get(DELETED_BY) == token:
                    return done  # our write landed; its reply was lost
                if _is_tombstone(data):
                    # Deleted before: the caller may still clean that life up (a delete
                    # whose clean-up failed is repeated).
                    gone = data.get(DELETED_GENERATION)
                    return Deleted(Deletion.ABSENT, gone if isinstance(gone, str) else None)
                if not _owned_by(data, owner):
                    return Deleted(Deletion.NOT_YOURS)
                _raise_if_held(data, now)
                generation = data.get(GENERATION)
                life = generation if isinstance(generation, str) else None
                batch = self._client.batch()
                for index in range(data.get(CHUNK_COUNT, 0)):
                    batch.delete(self._chunk_ref(session_id, index))
                batch.update(
                    ref,
                    _tombstone(data, token, life, now + self._ttl),
                    option=self._precondition(snap.update_time),
                )
                outcome = Deletion.DELETED if _is_live(data, now) else Deletion.ABSENT
                done = Deleted(outcome, life)
                try:
                    batch.commit(retry=self._retry, timeout=self._timeout)
                except _REFUSED:
                    continue  # changed since we read it (or ours landed): look again
                except _UNKNOWN:
                    continue  # perhaps landed: the next read finds our mark
                return done
        raise SessionBusy(1)

    # -- internals -----------------------------------------------------------------

    def _precondition(self, update_time: Any) -> Any:
        """Write only if the document is still as we last saw or wrote it."""
        return self._client.write_option(last_update_time=update_time)

    def _session_ref(self, session_id: str) -> firestore.DocumentReference:
        ref: firestore.DocumentReference = self._client.collection(SESSIONS).document(
            doc_id(session_id)
        )
        return ref

    def _chunk_ref(self, session_id: str, index: int) -> firestore.DocumentReference:
        chunks = self._session_ref(session_id).collection(CHUNKS)
        ref: firestore.DocumentReference = chunks.document(chunk_id(index))
        return ref

    def _read_chunks(
        self, session_id: str, count: int, read_time: dt.datetime, *, first: int = 0
    ) -> bytes:
        """Chunks ``first..count-1`` as they were at ``read_time`` (the session
        document's read): one life's chunks, whatever happened to the id since."""
        if count <= first:
            return b""
        refs = [self._chunk_ref(session_id, i) for i in range(first, count)]
        snaps = self._client.get_all(
            refs, retry=self._retry, timeout=self._timeout, read_time=read_time
        )
        by_id = {snap.id: snap for snap in snaps}
        parts = []
        for ref in refs:
            snap = by_id.get(ref.id)
            if snap is None or not snap.exists:
                raise RuntimeError(f"chunk {ref.id} of a session missing at its read time")
            parts.append(bytes((snap.to_dict() or {})[DATA]))
        return b"".join(parts)


def _summary_of(data: dict[str, Any]) -> Summary | None:
    text = data.get(SUMMARY)
    if not isinstance(text, str):
        return None
    return Summary(
        text,
        int(data.get(SUMMARY_ITEMS, 0)),
        int(data.get(SUMMARY_OFFSET, 0)),
        SummaryProvenance.from_doc(data.get(SUMMARY_PROVENANCE)),
    )


def _summary_fields(summary: Summary | None) -> dict[str, Any]:
    if summary is None:
        return {}
    return {
        SUMMARY: clip_utf8(summary.text, MAX_SUMMARY_BYTES),  # bounds the document
        SUMMARY_ITEMS: summary.items,
        SUMMARY_OFFSET: summary.offset,
        SUMMARY_PROVENANCE: summary.provenance.as_doc() if summary.provenance else None,
    }


def _empty_session(now: dt.datetime, until: dt.datetime, stale_chunks: int) -> dict[str, Any]:
    # A claimed but never committed session expires with its claim, so TTL removes
    # the placeholder of a crashed first turn.
    return {
        TAIL: b"",
        CHUNK_COUNT: stale_chunks,
        ITEMS: 0,
        BYTES: 0,
        TURNS: 0,
        CREATED_AT: now,
        UPDATED_AT: now,
        TTL_FIELD: until,
        SUMMARY: None,
        SUMMARY_ITEMS: 0,
        SUMMARY_OFFSET: 0,
        SUMMARY_PROVENANCE: None,
        TOKEN_RATIO: None,
        USAGE: UsageTotals().as_doc(),
    }


_KEPT_BY_TOMBSTONE = (COMMITS, LAST_COMMIT, FENCED, TTL_FIELD)
"""What a delete leaves of a session: the marks a turn's lost reply is resolved by."""


def _tombstone(
    data: dict[str, Any], token: str, generation: str | None, expire_at: dt.datetime
) -> dict[str, Any]:
    """The fields of a deleted session's document: every field of ``data`` removed but
    the marks, and the delete's own mark."""
    gone = {name: firestore.DELETE_FIELD for name in data if name not in _KEPT_BY_TOMBSTONE}
    return gone | {
        TURNS: 0,
        CHUNK_COUNT: 0,
        DELETED_BY: token,
        DELETED_GENERATION: generation,
        TTL_FIELD: expire_at,
    }


def _is_tombstone(data: dict[str, Any]) -> bool:
    """A deleted session's document, untouched since: nothing in it to delete."""
    return DELETED_BY in data and GENERATION not in data and not data.get(CHUNK_COUNT)


def chunks_to_refresh(
    sealed: int, floor: dt.datetime | None, session_expire_at: dt.datetime
) -> range:
    """Which of ``sealed`` chunks a write that moves the session document's expiry to
    ``session_expire_at`` must slide: all when the earliest of their expiries (``floor``;
    None: not known) is before it, else none. So no chunk ever expires before its
    session document, and a chunk slid to half a TTL past the document is left alone
    until the document's expiry passes that (``Expiry`` in the header)."""
    if floor is not None and floor >= session_expire_at:
        return range(0)
    return range(sealed)


def _chunk_floor(data: dict[str, Any]) -> dt.datetime | None:
    """No sealed chunk of the session ``data`` expires before this (None: no chunk).
    The record is trusted only while the commit that wrote it is the last one; else
    the chunks expire with the document, as every commit before the record kept them."""
    if not data.get(CHUNK_COUNT):
        return None
    record = data.get(CHUNK_EXPIRY)
    if isinstance(record, dict) and record.get(EXPIRY_COMMIT) == data.get(LAST_COMMIT):
        at = record.get(EXPIRY_AT)
        if isinstance(at, dt.datetime):
            return at
    ttl: dt.datetime = data[TTL_FIELD]
    return ttl


def _is_live(data: dict[str, Any], now: dt.datetime) -> bool:
    return bool(data.get(TURNS, 0) > 0 and data[TTL_FIELD] > now)


def _is_held(data: dict[str, Any], now: dt.datetime) -> bool:
    held_until = data.get(CLAIM_UNTIL)
    return bool(data.get(CLAIM_TOKEN) and held_until and held_until > now)


def _owned_by(data: dict[str, Any], owner: str | None) -> bool:
    # A session without an owner (written before owners existed, or by library use)
    # belongs to no principal of the service.
    return owner is None or data.get(OWNER) == owner


def _raise_if_taken(data: dict[str, Any], now: dt.datetime, owner: str | None) -> None:
    if _owned_by(data, owner):
        return
    if _is_live(data, now) or _is_held(data, now):
        raise SessionTaken("the id names a live session of another principal")


def _raise_if_held(data: dict[str, Any], now: dt.datetime) -> None:
    if _is_held(data, now):
        raise SessionBusy(retry_after(data[CLAIM_UNTIL], now))
