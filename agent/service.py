"""Wiring: builds the process-wide objects once, from ``Settings``.

Nothing here touches the network: clients connect on first use, so building the
service at import time costs only the imports, and ``/healthz`` answers without
Firestore or the model.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from google.cloud import firestore

from . import errors
from .auth import Authenticator, build_authenticator
from .definition import build_agent
from .event_loop import BackgroundLoop
from .firestore_calls import StoreUnavailable
from .firestore_session import utc_now
from .history_store import Deletion, History, HistoryStore, SessionBusy
from .idempotency import IdempotencyStore
from .model import build_model
from .ownership import require_owner
from .result_store import ResultStore
from .results import ResultLink, Results
from .settings import Settings
from .turn import TurnRunner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Service:
    settings: Settings
    store: HistoryStore
    turns: TurnRunner
    loop: BackgroundLoop
    results: Results
    auth: Authenticator
    idempotency: IdempotencyStore
    project: str | None
    """The Google Cloud project, for the trace field of the logs."""

    @staticmethod
    def new_session_id() -> str:
        return secrets.token_urlsafe(24)  # 192 random bits

    def load(self, session_id: str, owner: str) -> History | None:
        try:
            return self.store.load(session_id, utc_now(), owner)
        except StoreUnavailable:
            raise errors.storage_unavailable() from None

    def delete(self, session_id: str, owner: str) -> bool:
        """True when the caller's live session was deleted; False reads as 404."""
        try:
            deletion = self.store.delete(session_id, utc_now(), owner)
        except SessionBusy as busy:
            raise errors.session_busy(busy.retry_after) from None
        except StoreUnavailable:
            raise errors.storage_unavailable() from None
        if deletion is Deletion.NOT_YOURS:
            return False  # and its results are not ours to touch
        # After the documents: should this fail, a retried DELETE (404) still cleans up.
        self.results.delete_session(session_id)
        return deletion is Deletion.DELETED

    def resign_result(self, session_id: str, turn_id: str, owner: str) -> ResultLink:
        """A fresh signed URL for a stored result; 404 unless the caller owns the
        live session."""
        require_owner(self.store, session_id, owner)
        return self.results.resign(session_id, turn_id)

    def close(self) -> None:
        self.loop.close()


def build_service(settings: Settings) -> Service:
    client = firestore.Client(
        project=settings.google_cloud_project, database=settings.firestore_database
    )
    store = HistoryStore(
        client,
        ttl_seconds=settings.session_ttl_seconds,
        timeout_seconds=settings.firestore_timeout_seconds,
    )
    agent = build_agent(settings, build_model(settings))
    loop = BackgroundLoop()
    # No network, no storage import: the bucket's client is made on the first offload.
    results = Results(settings, ResultStore(settings) if settings.results_bucket else None)
    log.info(
        "agent %r ready: model %s via %s (%s API); tracing upload %s",
        settings.agent_name,
        settings.agent_model,
        settings.openai_base_url or "OpenAI",
        settings.model_api,
        "on" if settings.tracing_enabled else "off",
    )
    idempotency = IdempotencyStore(
        client,
        ttl_seconds=settings.session_ttl_seconds,
        timeout_seconds=settings.firestore_timeout_seconds,
    )
    return Service(
        settings,
        store,
        TurnRunner(agent, store, loop, settings, results),
        loop,
        results=results,
        auth=build_authenticator(settings),
        idempotency=idempotency,
        project=settings.google_cloud_project or client.project,
    )
