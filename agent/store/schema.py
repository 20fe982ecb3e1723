"""The Firestore schema: every collection group, field name and document shape.

This is the one place a collection or field name is spelled. The store's modules
read it, and so does ``deploy/collection_groups.py`` (statically, with ``ast``), which
creates one TTL policy per collection group on ``TTL_FIELD``: a group missing from
``COLLECTION_GROUPS`` would keep its documents forever.

Layout::

    agent_sessions/{doc_id}                          one conversation (SessionDoc)
    agent_sessions/{doc_id}/agent_history_chunks/{000000..}
                                                     sealed parts of its history (ChunkDoc)
    agent_idempotency/{sha256(principal, key)}       one Idempotency-Key (KeyDoc)
    agent_spend/{sha256(principal)}_{YYYY-MM-DD}/agent_spend_turns/{turn}
                                                     what one turn of a principal held
                                                     and was charged on one UTC day
                                                     (SpendDoc; the parent document is
                                                     never written)
    agent_sessions/{doc_id}/agent_tool_runs/{generation}~{sha256(pause_id, call_id)}
                                                     one approved tool call (ToolRunDoc)
    agent_runs/{run_id}                              one background run (RunDoc)
    agent_runs/{run_id}/agent_run_events/{seq:010d}  one event of its log (RunEventDoc)
    agent_runs/{run_id}/agent_run_state/{part:02d}   part of a large state (RunStateDoc)
    agent_session_runs/{doc_id}                      a session's runs not ended, first
                                                     in first out (SessionRunsDoc)

``store/history.py`` states the size bounds and consistency guarantees of the first
two, ``store/idempotency_records.py`` those of the third, ``store/spend.py`` those of
the fourth, ``store/tool_runs.py`` those of the fifth, ``store/runs.py`` those of the
runs (the last four), and ``store/paused_runs.py`` those of a paused run (a field of
the session document).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final, NotRequired, TypedDict

SESSIONS: Final = "agent_sessions"
CHUNKS: Final = "agent_history_chunks"
IDEMPOTENCY: Final = "agent_idempotency"
SPEND: Final = "agent_spend"
SPEND_TURNS: Final = "agent_spend_turns"
"""One principal's turns of one day, under ``agent_spend``; on SQLite the table of them
(``agent_spend`` is the older per-day table there)."""
TOOL_RUNS: Final = "agent_tool_runs"
RUNS: Final = "agent_runs"
RUN_EVENTS: Final = "agent_run_events"
RUN_STATE: Final = "agent_run_state"
SESSION_RUNS: Final = "agent_session_runs"
COLLECTION_GROUPS: tuple[str, ...] = (
    SESSIONS,
    CHUNKS,
    IDEMPOTENCY,
    SPEND,
    SPEND_TURNS,
    TOOL_RUNS,
    RUNS,
    RUN_EVENTS,
    RUN_STATE,
    SESSION_RUNS,
)
"""Every collection group the service writes; each needs a TTL policy on TTL_FIELD."""

TTL_FIELD: Final = "expire_at"
"""The Timestamp field Firestore's TTL policies delete by, on every document."""

# -- agent_sessions ------------------------------------------------------------------
TAIL: Final = "tail"
CHUNK_COUNT: Final = "chunks"
ITEMS: Final = "items"
BYTES: Final = "bytes"
TURNS: Final = "turns"
CLAIM_TOKEN: Final = "claim_token"
CLAIM_UNTIL: Final = "claim_until"
OWNER: Final = "owner"
GENERATION: Final = "generation"
"""A random id of one life of a session, on its document and on its idempotency records
(and, outside Firestore, on its result objects): what a session's clean-up and re-signs
check, so that they never touch a later life of the same id."""
LAST_COMMIT: Final = "last_commit"
"""The claim token of the turn whose commit wrote the document last: how a turn whose
commit reply was lost finds out whether it landed."""
COMMITS: Final = "commits"
"""The claim tokens of the last few commits, newest last: a commit's own mark, which a
later turn's commit does not erase (``last_commit`` alone is overwritten by it)."""
FENCED: Final = "fenced"
"""The claim token of the last claim released by a fence: the fence's own mark, so that a
fence whose reply was lost is told apart from the commit it fenced."""
DELETED_BY: Final = "deleted_by"
"""A delete's random token, on the emptied document it leaves (a tombstone): the delete's
own mark, so a delete whose reply was lost knows it deleted."""
DELETED_GENERATION: Final = "deleted_generation"
"""On a tombstone: the life (generation) the delete removed."""
WRITER: Final = "writer"
"""On an Idempotency-Key record and a tool-run record: a random token of the request that
created it, so that a create whose reply was lost recognises itself on re-read."""
CHUNK_EXPIRY: Final = "chunk_expiry"
"""A map: ``at``, no later than the ``expire_at`` of any sealed chunk, and ``commit``, the
claim token of the commit that wrote it (the record is trusted only while that commit is
``last_commit``): what lets a commit skip sliding the chunks' expiry (``history.py``)."""
EXPIRY_AT: Final = "at"
EXPIRY_COMMIT: Final = "commit"
SUMMARY: Final = "summary"
SUMMARY_ITEMS: Final = "summary_items"
SUMMARY_OFFSET: Final = "summary_offset"
SUMMARY_PROVENANCE: Final = "summary_provenance"
"""Where the running summary came from (SummaryProvenanceDoc), or null."""
TOKEN_RATIO: Final = "token_ratio"
USAGE: Final = "usage"
"""The session's running totals (UsageTotalsDoc), rewritten whole by each turn's commit."""
CREATED_AT: Final = "created_at"
UPDATED_AT: Final = "updated_at"
PAUSED: Final = "paused"
"""A run waiting for approval (PausedDoc), or null."""
APPROVALS: Final = "approvals"
"""The log of approval decisions (a list of maps)."""

# -- size bounds of the session document (store/doc_size.py sums them) --------------------
MAX_SUMMARY_BYTES: Final = 48 * 1024
"""The running summary's text, in UTF-8 (the runtime caps it at 12,000 characters; the
store cuts anything longer, so the document's bound does not depend on the caller)."""
MAX_OTHER_FIELDS_BYTES: Final = 8 * 1024
"""Everything on the session document but the tail, the summary, the paused run's state
and pending calls and the decision log: counters, owner, tokens, times, usage totals,
the summary's provenance, the paused run's scalars, field names. Not enforced: each of
them is small by construction (the test measures the worst case)."""

# -- the paused run (a map on the session document) -------------------------------------
PAUSE_ID: Final = "id"
PAUSE_PENDING: Final = "pending"
PAUSE_FINGERPRINT: Final = "fingerprint"
PAUSED_AT: Final = "paused_at"
PAUSE_STATE: Final = "state"
PAUSE_ATTEMPTS: Final = "attempts"
PAUSE_FOLDED: Final = "folded"

# -- the summary's provenance (a map on the session document) ---------------------------
SUMMARY_TURNS: Final = "turns"
SUMMARY_AT: Final = "at"
SUMMARY_MODEL: Final = "model"

# -- usage totals (a map on agent_sessions) -----------------------------------------
REQUESTS: Final = "requests"
INPUT_TOKENS: Final = "input_tokens"
CACHED_INPUT_TOKENS: Final = "cached_input_tokens"
OUTPUT_TOKENS: Final = "output_tokens"
COST_USD: Final = "cost_usd"

# -- agent_history_chunks --------------------------------------------------------------
DATA: Final = "data"

# -- agent_tool_runs -----------------------------------------------------------------
OUTPUT: Final = "output"
STARTED_AT: Final = "started_at"
CALL_ID: Final = "call_id"
RUN_PAUSE_ID: Final = "pause_id"
TOOL: Final = "tool"
ARGUMENTS_DIGEST: Final = "arguments_sha256"

# -- agent_runs, agent_run_events, agent_run_state, agent_session_runs ----------------
RUN_STATUS: Final = "status"
DEADLINE: Final = "deadline"
REQUEST: Final = "request"
STEP: Final = "step"
STATE_PARTS: Final = "state_parts"
"""Documents of ``agent_run_state`` holding the state (0: it is on the run document)."""
LEASE: Final = "lease"
LEASE_UNTIL: Final = "lease_until"
CANCEL: Final = "cancel"
ERROR: Final = "error"
RUN_PENDING: Final = "pending"
AFTER: Final = "after"
RELEASED_BY: Final = "released_by"
NEXT_RUN: Final = "next_run"
EVENT_TYPE: Final = "type"
QUEUE: Final = "queue"
RUN_ID: Final = "run_id"

# -- agent_idempotency ---------------------------------------------------------------
FINGERPRINT: Final = "fingerprint"
SESSION_ID: Final = "session_id"
STATE: Final = "state"
RUNNING_UNTIL: Final = "running_until"
RESPONSE: Final = "response"
RUNNING: Final = "running"
DONE: Final = "done"

# -- agent_spend ---------------------------------------------------------------------
DAY: Final = "day"
"""A UTC day as ``YYYY-MM-DD``."""
COST_MICROS: Final = "cost_micros"
"""SQLite: what a turn's model calls were charged, in integer micro-dollars."""
HELD_MICROS: Final = "held_micros"
"""SQLite: what a turn in flight holds of its principal's budget (0 once settled)."""
CHARGE_MICROS: Final = "charge_micros"
"""What the day counts for a turn: its hold while it runs, then its charge."""
HOLDING: Final = "holding"
"""True while a turn's hold is in place (a field to filter the holds by equality)."""
CALLS: Final = "calls"


class SessionDoc(TypedDict, total=False):
    """``agent_sessions/{doc_id}``. ``turns`` 0 means claimed, nothing committed yet."""

    tail: bytes  # newest part of the encoded history, shorter than a chunk
    chunks: int  # sealed chunk documents
    items: int  # items in the whole history
    bytes: int  # size of the encoded history
    turns: int  # completed turns
    claim_token: str | None  # who runs a turn on it ...
    claim_until: dt.datetime | None  # ... and until when
    owner: str  # the principal that created it
    generation: str  # this life of the id (a new one when an absent or expired id is claimed)
    last_commit: str  # claim token of the last committed turn
    commits: list[str]  # claim tokens of the last few commits
    fenced: str  # claim token of the last claim a fence released
    deleted_by: str  # on a tombstone: the delete's token
    deleted_generation: str  # on a tombstone: the life it removed
    chunk_expiry: ChunkExpiryDoc  # how long the sealed chunks live at least
    created_at: dt.datetime
    updated_at: dt.datetime
    expire_at: dt.datetime
    summary: str | None  # running summary of the oldest items, for the model's context
    summary_items: int  # how many leading items it covers
    summary_offset: int  # byte offset in the encoded history of the first item it does not
    summary_provenance: SummaryProvenanceDoc | None  # who wrote the summary, when, covering what
    token_ratio: float  # provider's token count over the local estimate, per session
    paused: PausedDoc | None  # a run waiting for approval
    approvals: list[dict[str, Any]]  # the last decisions: call_id, tool, approved, reason, by, at
    usage: UsageTotalsDoc  # running totals of every committed turn of this life


class ChunkExpiryDoc(TypedDict):
    """``chunk_expiry`` on a session document (``store/history.py``, "Expiry")."""

    at: dt.datetime  # no sealed chunk expires before it
    commit: str  # the commit that wrote it: trusted only while it is ``last_commit``


class SummaryProvenanceDoc(TypedDict):
    """``summary_provenance`` on a session document (``store/summary_provenance.py``)."""

    turns: int  # user messages (turns) among the items it covers
    at: dt.datetime  # when it was written
    model: str  # the model that wrote it


class PausedDoc(TypedDict):
    """``paused`` on a session document (``store/paused_runs.py``)."""

    id: str  # what a resume names
    pending: list[dict[str, str]]  # call_id, tool, arguments
    fingerprint: str  # of the agent definition that paused
    paused_at: dt.datetime
    state: bytes  # the SDK's RunState JSON, zlib-compressed
    attempts: int  # resumes that claimed the session
    folded: int  # leading items of the run's input the summary covers


class ToolRunDoc(TypedDict):
    """``.../agent_tool_runs/{generation}~{sha256(pause_id, call_id)}``: one approved
    call, created before it runs (``store/tool_runs.py``)."""

    state: str  # RUNNING or DONE
    output: str | None  # the tool's result, once DONE
    started_at: dt.datetime
    writer: str  # token of the guard call that created it
    expire_at: dt.datetime  # never before the session's, while any claim of its pause holds
    generation: str  # the life of the session
    pause_id: str  # the pause the call was approved in
    call_id: str  # the model's id of the call
    tool: str  # the tool's name
    arguments_sha256: str  # SHA-256 hex of the canonical arguments that were approved


class UsageTotalsDoc(TypedDict):
    """The ``usage`` map of a session: model calls, tokens and dollars of its committed
    turns, the history summariser's calls included."""

    requests: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    cost_usd: float  # turns of a model without a known price add nothing


class ChunkDoc(TypedDict):
    """``.../agent_history_chunks/{index:06d}``: exactly one chunk of the history."""

    data: bytes
    expire_at: dt.datetime  # never before the session's: up to half a TTL after it


class KeyDoc(TypedDict):
    """``agent_idempotency/{sha256(principal, key)}``."""

    owner: str
    fingerprint: str  # SHA-256 of the request
    session_id: str
    state: str  # RUNNING or DONE
    running_until: dt.datetime
    response: dict[str, Any] | None
    expire_at: dt.datetime  # when running: never before running_until
    generation: NotRequired[str]  # the session life its turn was stored in (set when done)
    writer: NotRequired[str]  # token of the request that wrote it while running


class SpendDoc(TypedDict):
    """``agent_spend/{sha256(principal)}_{day}/agent_spend_turns/{turn}``: one turn's hold,
    then its charge."""

    owner: str
    day: str  # YYYY-MM-DD (UTC)
    charge_micros: int  # its hold while it runs, then what its model calls were charged
    holding: bool  # true until settled
    calls: int  # its model calls
    expire_at: dt.datetime  # a couple of days after the day ends


class SpendShardDoc(TypedDict):
    """``agent_spend/{sha256(principal)}_{day}_{shard}``: a day's spend shard as releases
    before the per-turn spend wrote it. Nothing writes it now; its group keeps its TTL
    policy and exemptions so that the shards left by an upgrade expire."""

    owner: str
    day: str  # YYYY-MM-DD (UTC)
    cost_usd: float
    expire_at: dt.datetime  # a couple of days after the day ends


class RunDoc(TypedDict):
    """``agent_runs/{run_id}``: a background run (``store/runs.py``). The maps of the
    record are compact JSON text, so any JSON value round-trips."""

    session_id: str
    owner: str | None
    status: str  # queued, running, approval_required, completed, failed, cancelled
    created_at: dt.datetime
    updated_at: dt.datetime
    expire_at: dt.datetime  # the caller's; never slides (events expire with it)
    deadline: dt.datetime
    request: str  # JSON: message, target, webhook, resume
    claim_token: str | None
    generation: str | None
    step: int  # steps checkpointed
    state: bytes | None  # the SDK's state, compressed, when small (else in parts)
    state_parts: int  # agent_run_state documents holding it
    usage: str  # JSON
    seq: int  # the last event's sequence number
    lease: str | None
    lease_until: dt.datetime | None
    cancel: str | None
    response: str | None  # JSON
    error: str | None  # JSON
    pending: str | None  # JSON
    after: str | None  # the run it waits behind
    released_by: str | None  # the lease token of the end that released it
    next_run: str | None  # the run it handed the session to when it ended


class RunEventDoc(TypedDict):
    """``agent_runs/{run_id}/agent_run_events/{seq:010d}``: one event, written once."""

    type: str
    data: str  # JSON
    expire_at: dt.datetime  # the run's


class RunStateDoc(TypedDict):
    """``agent_runs/{run_id}/agent_run_state/{part:02d}``: part of a large state."""

    data: bytes
    expire_at: dt.datetime  # the run's


class SessionRunsDoc(TypedDict):
    """``agent_session_runs/{doc_id}``: the session's runs not ended, first in flight."""

    queue: list[dict[str, Any]]  # {run_id, deadline}, oldest first
    expire_at: dt.datetime  # the latest of its runs'


def run_event_id(seq: int) -> str:
    return f"{seq:010d}"


def chunk_id(index: int) -> str:
    return f"{index:06d}"


# -- the SQLite backend (HISTORY_BACKEND=sqlite; store/sqlite_db.py) -----------------------
# Its tables reuse the names above (SESSIONS, IDEMPOTENCY and their fields); a history is
# rows of one more table instead of a tail and chunk documents. Not in COLLECTION_GROUPS:
# nothing of it is deployed.
HISTORY_ITEMS: Final = "agent_history_items"
ID: Final = "id"
SEQ: Final = "seq"
ITEM: Final = "item"
VERSION: Final = "version"

SQLITE_SCHEMA_VERSION: Final = 7
"""The tables' version (``PRAGMA user_version``); 2 added generations, summaries and the
token ratio; 3 the sessions' usage totals and the spend table; 4 paused runs, the
decision log and the tool-run table; 5 the tool runs' life, pause, call id, tool and
argument digest; 6 the summary's provenance; 7 background runs, their events and the
sessions' run queues."""
PAUSED_STATE: Final = f"{PAUSED}_{PAUSE_STATE}"
"""SQLite: the paused run's compressed state, apart from its JSON (column ``paused``)."""

SQLITE_TABLES: Final = f"""
CREATE TABLE IF NOT EXISTS {SESSIONS} (
    {ID} TEXT PRIMARY KEY,
    {OWNER} TEXT,
    {TURNS} INTEGER NOT NULL,
    {ITEMS} INTEGER NOT NULL,
    {BYTES} INTEGER NOT NULL,
    {CLAIM_TOKEN} TEXT,
    {CLAIM_UNTIL} INTEGER,
    {GENERATION} TEXT NOT NULL,
    {SUMMARY} TEXT,
    {SUMMARY_ITEMS} INTEGER NOT NULL DEFAULT 0,
    {SUMMARY_OFFSET} INTEGER NOT NULL DEFAULT 0,
    {SUMMARY_PROVENANCE} TEXT,
    {TOKEN_RATIO} REAL,
    {PAUSED} TEXT,
    {PAUSED_STATE} BLOB,
    {APPROVALS} TEXT,
    {USAGE} TEXT,
    {CREATED_AT} INTEGER NOT NULL,
    {UPDATED_AT} INTEGER NOT NULL,
    {TTL_FIELD} INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS {SESSIONS}_{TTL_FIELD} ON {SESSIONS} ({TTL_FIELD});
CREATE TABLE IF NOT EXISTS {HISTORY_ITEMS} (
    {SESSION_ID} TEXT NOT NULL,
    {SEQ} INTEGER NOT NULL,
    {ITEM} TEXT NOT NULL,
    PRIMARY KEY ({SESSION_ID}, {SEQ})
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {IDEMPOTENCY} (
    {ID} TEXT PRIMARY KEY,
    {OWNER} TEXT NOT NULL,
    {FINGERPRINT} TEXT NOT NULL,
    {SESSION_ID} TEXT NOT NULL,
    {STATE} TEXT NOT NULL,
    {RUNNING_UNTIL} INTEGER NOT NULL,
    {RESPONSE} TEXT,
    {TTL_FIELD} INTEGER NOT NULL,
    {GENERATION} TEXT,
    {VERSION} INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS {IDEMPOTENCY}_{SESSION_ID} ON {IDEMPOTENCY} ({SESSION_ID});
CREATE INDEX IF NOT EXISTS {IDEMPOTENCY}_{TTL_FIELD} ON {IDEMPOTENCY} ({TTL_FIELD});
CREATE TABLE IF NOT EXISTS {TOOL_RUNS} (
    {ID} TEXT PRIMARY KEY,
    {SESSION_ID} TEXT NOT NULL,
    {STATE} TEXT NOT NULL,
    {OUTPUT} TEXT,
    {STARTED_AT} INTEGER NOT NULL,
    {TTL_FIELD} INTEGER NOT NULL,
    {GENERATION} TEXT,
    {RUN_PAUSE_ID} TEXT,
    {CALL_ID} TEXT,
    {TOOL} TEXT,
    {ARGUMENTS_DIGEST} TEXT
);
CREATE INDEX IF NOT EXISTS {TOOL_RUNS}_{SESSION_ID} ON {TOOL_RUNS} ({SESSION_ID});
CREATE TABLE IF NOT EXISTS {SPEND} (
    {OWNER} TEXT NOT NULL,
    {DAY} TEXT NOT NULL,
    {COST_USD} REAL NOT NULL,
    {TTL_FIELD} INTEGER NOT NULL,
    PRIMARY KEY ({OWNER}, {DAY})
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {SPEND}_{TTL_FIELD} ON {SPEND} ({TTL_FIELD});
CREATE TABLE IF NOT EXISTS {SPEND_TURNS} (
    {ID} TEXT PRIMARY KEY,
    {OWNER} TEXT NOT NULL,
    {DAY} TEXT NOT NULL,
    {HELD_MICROS} INTEGER NOT NULL,
    {COST_MICROS} INTEGER NOT NULL,
    {CALLS} INTEGER NOT NULL,
    {TTL_FIELD} INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {SPEND_TURNS}_{OWNER}_{DAY} ON {SPEND_TURNS} ({OWNER}, {DAY});
CREATE INDEX IF NOT EXISTS {SPEND_TURNS}_{TTL_FIELD} ON {SPEND_TURNS} ({TTL_FIELD});
CREATE TABLE IF NOT EXISTS {RUNS} (
    {ID} TEXT PRIMARY KEY,
    {SESSION_ID} TEXT NOT NULL,
    {OWNER} TEXT,
    {RUN_STATUS} TEXT NOT NULL,
    {CREATED_AT} INTEGER NOT NULL,
    {UPDATED_AT} INTEGER NOT NULL,
    {TTL_FIELD} INTEGER NOT NULL,
    {DEADLINE} INTEGER NOT NULL,
    {REQUEST} TEXT NOT NULL,
    {CLAIM_TOKEN} TEXT,
    {GENERATION} TEXT,
    {STEP} INTEGER NOT NULL,
    {STATE} BLOB,
    {USAGE} TEXT NOT NULL,
    {SEQ} INTEGER NOT NULL,
    {LEASE} TEXT,
    {LEASE_UNTIL} INTEGER,
    {CANCEL} TEXT,
    {RESPONSE} TEXT,
    {ERROR} TEXT,
    {RUN_PENDING} TEXT,
    {AFTER} TEXT,
    {RELEASED_BY} TEXT,
    {NEXT_RUN} TEXT
);
CREATE INDEX IF NOT EXISTS {RUNS}_{TTL_FIELD} ON {RUNS} ({TTL_FIELD});
CREATE TABLE IF NOT EXISTS {RUN_EVENTS} (
    {RUN_ID} TEXT NOT NULL,
    {SEQ} INTEGER NOT NULL,
    {EVENT_TYPE} TEXT NOT NULL,
    {DATA} TEXT NOT NULL,
    {TTL_FIELD} INTEGER NOT NULL,
    PRIMARY KEY ({RUN_ID}, {SEQ})
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {RUN_EVENTS}_{TTL_FIELD} ON {RUN_EVENTS} ({TTL_FIELD});
CREATE TABLE IF NOT EXISTS {SESSION_RUNS} (
    {ID} TEXT PRIMARY KEY,
    {QUEUE} TEXT NOT NULL,
    {TTL_FIELD} INTEGER NOT NULL
) WITHOUT ROWID;
"""
"""The SQLite backend's tables. Times are INTEGER microseconds since the Unix epoch (UTC),
exact and comparable in SQL; items and responses are compact JSON text."""

SQLITE_MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    2: (f"ALTER TABLE {SESSIONS} ADD COLUMN {USAGE} TEXT",),
    3: (
        f"ALTER TABLE {SESSIONS} ADD COLUMN {PAUSED} TEXT",
        f"ALTER TABLE {SESSIONS} ADD COLUMN {PAUSED_STATE} BLOB",
        f"ALTER TABLE {SESSIONS} ADD COLUMN {APPROVALS} TEXT",
    ),
    # Version 4's tool-run rows are keyed on the call id alone, which no version-5 key
    # ever meets: the table is made again (by SQLITE_TABLES) with the new columns.
    4: (f"DROP TABLE IF EXISTS {TOOL_RUNS}",),
    5: (f"ALTER TABLE {SESSIONS} ADD COLUMN {SUMMARY_PROVENANCE} TEXT",),
    6: (),  # only new tables: the runs, their events, the sessions' run queues
}
"""Version -> the statements that bring a file of that version to the next one (the new
tables come from SQLITE_TABLES, which creates what is missing). A version not listed is
refused."""
