"""Result objects in the Cloud Storage bucket: naming, upload, lookup, deletion, URLs.

Layout: ``results/<session_id>/<turn_id>.<ext>``, one object per offloaded answer, with
its content type, a ``Content-Disposition`` filename, and custom metadata
``session_id``, ``turn_id``, ``sha256`` and ``generation`` linking it to the conversation.
Listing the prefix ``results/<session_id>/`` finds every result of every life of a session
id, also objects whose turn was never stored (an upload that landed after the turn gave up
on it): ``sweep`` deletes those of every life but the current one, and the bucket's
lifecycle rule deletes whatever is left. ``generation`` is the life of the session the
object belongs to (``agent/store/history.py``); a re-sign is refused for any other life's
object, so an id taken over after expiry never reaches its previous life's results.

The storage client and the signer are created on first use, not at startup: most
instances never offload anything, and ``google.cloud.storage`` is not even imported
until then. Every call is bounded by ``STORAGE_TIMEOUT_SECONDS``, retries included.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from google.api_core import exceptions as gexc
from google.auth import exceptions as gauth_exceptions

from agent.base.settings import Settings
from agent.results.signing import UrlSigner, load_signer

if TYPE_CHECKING:
    import datetime as dt

    from google.cloud.storage import Bucket

PREFIX = "results"
TURN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class BucketUnavailable(Exception):
    """Cloud Storage failed or did not answer in time."""


@dataclass(frozen=True)
class StoredResult:
    """One result object's name and metadata."""

    session_id: str
    turn_id: str
    object_name: str
    size: int
    content_type: str
    sha256: str
    generation: str | None
    """The life of the session the object belongs to; None on objects made before
    generations existed, which belong to no life."""

    @property
    def filename(self) -> str:
        return f"result-{self.turn_id}.{self.object_name.rsplit('.', 1)[-1]}"


def object_name(session_id: str, turn_id: str, extension: str) -> str:
    return f"{PREFIX}/{session_id}/{turn_id}.{extension}"


class ResultBucket:
    """The results bucket: upload, find, sign, delete. The client is made on first use."""

    def __init__(self, settings: Settings) -> None:
        if not settings.results_bucket:
            raise ValueError("ResultBucket needs RESULTS_BUCKET")
        self._settings = settings
        self._bucket_name = settings.results_bucket
        self._bucket_lock = threading.Lock()
        self._signer_lock = threading.Lock()  # its first use may ask the metadata server
        self._bucket_handle: Bucket | None = None
        self._signer_instance: UrlSigner | None = None

    def put(self, stored: StoredResult, data: bytes, *, timeout: float) -> None:
        with _unavailable():  # making the client can fail too (no credentials)
            blob = self._bucket().blob(stored.object_name)
            blob.content_type = stored.content_type
            blob.content_disposition = f'attachment; filename="{stored.filename}"'
            blob.metadata = {
                "session_id": stored.session_id,
                "turn_id": stored.turn_id,
                "sha256": stored.sha256,
                "generation": stored.generation or "",
            }
            # Create-only makes the upload idempotent, so the client may retry it.
            blob.upload_from_string(
                data,
                content_type=stored.content_type,
                if_generation_match=0,
                timeout=timeout,
                retry=self._retry(timeout),
            )

    def find(self, session_id: str, turn_id: str) -> StoredResult | None:
        """The stored result of a turn, whatever its extension, or None."""
        prefix = f"{PREFIX}/{session_id}/{turn_id}."
        with _unavailable():
            blobs = list(self._bucket().list_blobs(prefix=prefix, max_results=1, **self._bounded()))
        if not blobs:
            return None
        blob = blobs[0]
        metadata = blob.metadata or {}
        return StoredResult(
            session_id=session_id,
            turn_id=turn_id,
            object_name=blob.name,
            size=int(blob.size or 0),
            content_type=str(blob.content_type),
            sha256=str(metadata.get("sha256", "")),
            generation=metadata.get("generation") or None,
        )

    def sign(self, stored: StoredResult) -> tuple[str, dt.datetime]:
        """A fresh V4 GET URL and its expiry; raises signing.SigningError."""
        with _unavailable():
            blob = self._bucket().blob(stored.object_name)
        return self._signer().sign_get(blob, filename=stored.filename)

    def delete(self, object_name: str) -> None:
        with _unavailable(), contextlib.suppress(gexc.NotFound):
            self._bucket().blob(object_name).delete(**self._bounded())

    def sweep(self, session_id: str, current: Callable[[], str | None]) -> int:
        """Delete the session's objects that belong to no current life: those of a
        deleted or expired life, and uploads whose turn was never stored. ``current()``
        is the id's current generation (None: no life), asked after the listing, so an
        object of a life that began meanwhile is never taken for a dead one's (its
        upload follows its claim, and the listing saw it). How many were deleted."""
        with _unavailable():
            blobs = list(
                self._bucket().list_blobs(prefix=f"{PREFIX}/{session_id}/", **self._bounded())
            )
        if not blobs:
            return 0
        keep = current()
        doomed = [b for b in blobs if keep is None or (b.metadata or {}).get("generation") != keep]
        with _unavailable():
            for blob in doomed:
                with contextlib.suppress(gexc.NotFound):  # deleted concurrently: goal reached
                    blob.delete(**self._bounded())
        return len(doomed)

    # -- lazily built clients ----------------------------------------------------------

    def _bucket(self) -> Bucket:
        with self._bucket_lock:
            if self._bucket_handle is None:
                from google.cloud import storage  # 0.3 s of imports, paid on first use

                client = storage.Client(project=self._settings.google_cloud_project)
                self._bucket_handle = client.bucket(self._bucket_name)
            return self._bucket_handle

    def _signer(self) -> UrlSigner:
        with self._signer_lock:
            if self._signer_instance is None:
                self._signer_instance = load_signer(self._settings)
            return self._signer_instance

    def _retry(self, timeout: float) -> Any:
        from google.cloud.storage.retry import DEFAULT_RETRY

        return DEFAULT_RETRY.with_timeout(timeout)

    def _bounded(self) -> dict[str, Any]:
        timeout = self._settings.storage_timeout_seconds
        return {"timeout": timeout, "retry": self._retry(timeout)}


class _unavailable:
    """Turns Cloud Storage failing, refusing or timing out into BucketUnavailable."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> Literal[False]:
        if exc is not None and isinstance(
            exc, gexc.GoogleAPIError | gauth_exceptions.GoogleAuthError | OSError
        ):
            raise BucketUnavailable(type(exc).__name__) from exc
        return False
