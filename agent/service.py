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
from .definition import build_agent
from .event_loop import BackgroundLoop
from .firestore_session import utc_now
from .history_store import History, HistoryStore, SessionBusy, StoreUnavailable
from .model import build_model
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
    results: Results | None = None

    @staticmethod
    def new_session_id() -> str:
        return secrets.token_urlsafe(24)  # 192 random bits

    def load(self, session_id: str) -> History | None:
        try:
            return self.store.load(session_id, utc_now())
        except StoreUnavailable:
            raise errors.storage_unavailable() from None

    def delete(self, session_id: str) -> bool:
        try:
            found = self.store.delete(session_id, utc_now())
        except SessionBusy as busy:
            raise errors.session_busy(busy.retry_after) from None
        except StoreUnavailable:
            raise errors.storage_unavailable() from None
        # After the documents: should this fail, a retried DELETE (404) still cleans up.
        if self.results is not None:
            self.results.delete_session(session_id)
        return found

    def resign_result(self, session_id: str, turn_id: str) -> ResultLink:
        """A fresh signed URL for a stored result; 404 when the session is gone."""
        try:
            live = self.store.is_live(session_id, utc_now())
        except StoreUnavailable:
            raise errors.storage_unavailable() from None
        if not live:
            raise errors.session_not_found()
        if self.results is None:
            raise errors.result_not_found()
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
    turns = TurnRunner(agent, store, loop, settings, results)
    return Service(settings, store, turns, loop, results)
