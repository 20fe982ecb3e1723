"""What a turn's final answer becomes: inline text, or a file behind a signed URL.

* An answer of at most ``RESULT_INLINE_MAX_BYTES`` (UTF-8) is returned in ``reply`` and
  kept whole in the history, as without a bucket.
* A larger one is uploaded (``bucket.py``); ``reply`` holds its first
  ``PREVIEW_BYTES`` and a truncation marker, and ``result`` a V4 signed URL.
* **What later turns see.** The history keeps the same preview plus a note with the
  size and the ``turn_id``, not the full answer. The whole history is sent to the model
  on every turn: a multi-megabyte answer kept there would be paid for again on every
  later turn, would crowd the model's context window, and would not fit a turn's 3 MiB
  commit anyway. So the model knows that it wrote a long answer, how it began and that
  the user has it as a file; it cannot quote the rest back. The full text stays
  available to people through ``GET /sessions/<id>/results/<turn_id>``.
* **Failure.** If the upload or the signing fails, the answer is not lost: when its JSON
  fits ``INLINE_FALLBACK_MAX_BYTES`` it is returned in full in ``reply`` with a
  ``warnings`` entry (the history still keeps only the preview); otherwise the turn
  ends with 503 and the history is unchanged.
* **No orphans, no dangling links.** An object is deleted (``discard``) only when its
  turn is known not to be stored: a stored turn never points at a missing file. An
  object whose turn's outcome could not be found out, or whose upload landed after the
  turn gave up on it, stays under ``results/<session_id>/`` tagged with the session's
  generation, where ``sweep`` (on ``DELETE``, and when an expired id is taken over) and
  the bucket's lifecycle rule find it.
* **One life.** Objects carry the generation of the session life that made them;
  ``resign`` signs only the current life's objects.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydantic_core

from agent.base import errors, tracing
from agent.base.settings import Settings
from agent.results.bucket import TURN_ID, BucketUnavailable, ResultBucket, StoredResult, object_name
from agent.results.signing import SigningError

log = logging.getLogger(__name__)

Item = dict[str, Any]

PREVIEW_BYTES = 4096
INLINE_FALLBACK_MAX_BYTES = 8 * 1024 * 1024
"""Largest answer (as JSON text) returned inline when offloading failed: under the
platform's 10 MB cap on streamed responses, the tighter of its two limits."""
NOT_OFFLOADED = {
    "code": "result_not_offloaded",
    "message": "The result could not be stored for download, so it is returned in full"
    " in reply; it has no URL.",
}


@dataclass(frozen=True)
class ResultLink:
    """A stored result as the caller sees it: a signed URL and what it points at."""

    turn_id: str
    url: str
    bytes: int
    content_type: str
    expires_at: dt.datetime
    sha256: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResultLink:
        fields = dict(data)
        fields["expires_at"] = dt.datetime.fromisoformat(fields["expires_at"])
        return cls(**fields)

    def as_json(self) -> dict[str, Any]:
        expires = self.expires_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "turn_id": self.turn_id,
            "url": self.url,
            "bytes": self.bytes,
            "content_type": self.content_type,
            "expires_at": expires,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class Delivery:
    """How one answer reaches the caller, and what the history keeps of it."""

    reply: str
    result: ResultLink | None = None
    warnings: tuple[dict[str, str], ...] = ()
    object_name: str | None = None  # uploaded by this turn: deleted if the commit fails
    history_text: str | None = None
    """What the history keeps instead of the answer (``shrink_answer``), when the
    answer is too large to keep whole."""


class OffloadPolicy:
    """Decides whether an answer goes inline or to the bucket; ``store`` is None when
    no RESULTS_BUCKET is configured (every answer inline)."""

    def __init__(self, settings: Settings, store: ResultBucket | None) -> None:
        self._settings = settings
        self._store = store

    @property
    def reserve_seconds(self) -> float:
        """Time a turn keeps back after the run for uploading and signing."""
        if self._store is None:
            return 0.0
        return min(self._settings.storage_timeout_seconds, self._settings.turn_budget_seconds / 5)

    def deliver(
        self, session_id: str, final_output: object, time_left: float, generation: str | None
    ) -> Delivery:
        """Decide how the answer reaches the caller, and what the history keeps of it;
        an uploaded object is tagged with the session's ``generation``. Raises ApiError
        (503) when it cannot be delivered at all."""
        text, content_type, extension = render(final_output)
        data = text.encode()
        if self._store is None or len(data) <= self._settings.result_inline_max_bytes:
            return Delivery(reply=text)
        turn_id = secrets.token_urlsafe(12)
        stored = StoredResult(
            session_id=session_id,
            turn_id=turn_id,
            object_name=object_name(session_id, turn_id, extension),
            size=len(data),
            content_type=content_type,
            sha256=hashlib.sha256(data).hexdigest(),
            generation=generation,
        )
        uploaded = False
        try:
            timeout = min(self._settings.storage_timeout_seconds, time_left)
            if timeout < 0.5:
                raise BucketUnavailable("no time left before the deadline")
            with tracing.span("offload", **{"agent.result_bytes": len(data)}):
                self._store.put(stored, data, timeout=timeout)
            uploaded = True
            with tracing.span("sign"):
                url, expires_at = self._store.sign(stored)
        except (BucketUnavailable, SigningError) as failure:
            log.warning("result of %d bytes not offloaded: %s", len(data), failure)
            if uploaded:
                self.discard(stored.object_name)
            if len(json.dumps(text)) > INLINE_FALLBACK_MAX_BYTES:
                if isinstance(failure, SigningError):
                    raise errors.url_signing_failed() from None
                raise errors.result_storage_unavailable() from None
            note = "the user received all of it in the reply; it was not stored"
            return Delivery(
                reply=text, warnings=(NOT_OFFLOADED,), history_text=truncated(text, note)
            )
        note = f"the user received all of it as a file (result turn_id {turn_id})"
        marker = f"the full result is at result.url (turn_id {turn_id})"
        link = ResultLink(turn_id, url, len(data), content_type, expires_at, stored.sha256)
        return Delivery(
            truncated(text, marker),
            link,
            object_name=stored.object_name,
            history_text=truncated(text, note),
        )

    def resign(self, session_id: str, turn_id: str, generation: str | None) -> ResultLink:
        """A fresh URL for a stored result of the live session whose life is
        ``generation``; an object of any other life of the id is not found."""
        if self._store is None or not TURN_ID.fullmatch(turn_id) or generation is None:
            raise errors.result_not_found()
        try:
            stored = self._store.find(session_id, turn_id)
            if stored is None or stored.generation != generation:
                raise errors.result_not_found()
            with tracing.span("sign"):
                url, expires_at = self._store.sign(stored)
        except BucketUnavailable:
            raise errors.result_storage_unavailable() from None
        except SigningError as failure:
            log.warning("result URL not signed: %s", failure)
            raise errors.url_signing_failed() from None
        return ResultLink(turn_id, url, stored.size, stored.content_type, expires_at, stored.sha256)

    def sweep(self, session_id: str, current: Callable[[], str | None]) -> None:
        """Delete the session id's objects of every life but ``current()``'s (see
        ``ResultBucket.sweep``). Raises ApiError 503 when the bucket fails."""
        if self._store is None:
            return
        try:
            self._store.sweep(session_id, current)
        except BucketUnavailable:
            raise errors.result_storage_unavailable() from None

    def discard(self, name: str) -> None:
        """Best effort: an object whose turn was not committed is deleted."""
        if self._store is None:
            return
        try:
            self._store.delete(name)
        except BucketUnavailable:
            log.warning("orphaned result object left for the bucket's lifecycle rule")


def render(final_output: object) -> tuple[str, str, str]:
    """(text, content type, file extension) of an agent's final output."""
    if isinstance(final_output, str):
        return final_output, "text/markdown; charset=utf-8", "md"
    return pydantic_core.to_json(final_output).decode(), "application/json", "json"


def truncated(text: str, note: str) -> str:
    """The first PREVIEW_BYTES of ``text``, whole characters only, and a marker."""
    head = text.encode()[:PREVIEW_BYTES].decode(errors="ignore")
    size = len(text.encode())
    return f"{head}\n\n[… truncated: {len(head.encode())} of {size} bytes shown; {note}.]"


def shrink_answer(items: list[Item], text: str) -> list[Item]:
    """``items`` with the last assistant message's text replaced by ``text``."""
    for index in range(len(items) - 1, -1, -1):
        item = items[index]
        if item.get("role") == "assistant" and isinstance(item.get("content"), list):
            # A fresh part: the old one's annotations and logprobs grow with the answer.
            part: Item = {"type": "output_text", "text": text, "annotations": []}
            if any("logprobs" in p for p in item["content"]):
                part["logprobs"] = []
            return [*items[:index], item | {"content": [part]}, *items[index + 1 :]]
    log.warning("no assistant message to shrink in this turn's items")
    return items
