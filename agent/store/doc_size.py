"""How big a Firestore document is, by Firestore's own rules, and the session
document's budget under its 1 MiB limit.

Firestore counts a document as its name, plus each field's name and value, plus 32
bytes: a string is its UTF-8 bytes plus 1, bytes their length, a boolean or null 1, an
integer, a float or a timestamp 8, an array the sum of its values, a map the sum of its
keys (as strings) and values (Google's "Storage size calculations"). The session
document carries the newest part of the history, the running summary, a paused run and
the decision log; each is bounded (``history.CHUNK_BYTES`` for the tail,
``schema.MAX_SUMMARY_BYTES``, ``paused_runs.MAX_STATE_BYTES``, ``MAX_PENDING_BYTES`` and
``MAX_DECISION_LOG_BYTES``, ``schema.MAX_OTHER_FIELDS_BYTES`` for the rest) so that their
sum stays under the limit with room to spare: ``tests/test_doc_size.py`` checks the sum,
and commits a document with every field at its bound to the emulator.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

DOC_LIMIT_BYTES = 1024 * 1024
"""Firestore's maximum document size."""
DOC_OVERHEAD_BYTES = 32


def value_size(value: Any) -> int:
    """The storage size of one field value."""
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, int | float | dt.datetime):
        return 8
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass")) + 1
    if isinstance(value, bytes | bytearray | memoryview):
        return len(value)
    if isinstance(value, Mapping):
        return sum(value_size(str(key)) + value_size(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return sum(value_size(item) for item in value)
    return 8  # sentinels (server timestamps, increments) and anything numeric-like


def document_size(name: str, fields: Mapping[str, Any]) -> int:
    """The storage size of a document named ``name`` (its path, for the estimate)."""
    return value_size(name) + value_size(fields) + DOC_OVERHEAD_BYTES


def clip_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes, never inside a character."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", "ignore")
