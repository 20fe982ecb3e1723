"""Wiring: builds the process-wide objects once, from ``Settings``.

Nothing here touches the network: clients connect on first use, so building the
service at import time costs only the imports, and ``/healthz`` answers without
Firestore or the model. ``HISTORY_BACKEND`` picks the store: Firestore, or SQLite (a
local file, opened here; no Google client is built then, so no credentials are needed).
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from google.cloud import firestore

from agent.auth.modes import Authenticator, build_authenticator
from agent.auth.tasks import TaskAuth, build_task_auth
from agent.base import tracing
from agent.base.clock import utc_now
from agent.base.settings import Settings, redact_url
from agent.results.bucket import ResultBucket
from agent.results.policy import OffloadPolicy
from agent.runs.cloud_tasks import CloudTasksQueue
from agent.runs.engine import Runs
from agent.runs.queue import TASK_SECRET_HEADER, LocalQueue, Queue
from agent.runtime import catalog
from agent.runtime.context import default_budget
from agent.runtime.event_loop import BackgroundLoop
from agent.runtime.factory import build_agent
from agent.runtime.model import build_model
from agent.runtime.pricing import PriceTable, PriceTableError, parse_prices
from agent.store.backend import (
    HistoryBackend,
    IdempotencyBackend,
    RunBackend,
    SpendBackend,
    ToolRunBackend,
)
from agent.store.history import HistoryStore
from agent.store.idempotency_records import IdempotencyStore
from agent.store.runs import RunStore
from agent.store.spend import SpendStore
from agent.store.sqlite_db import Database
from agent.store.sqlite_history import SqliteHistoryStore
from agent.store.sqlite_idempotency import SqliteIdempotencyStore
from agent.store.sqlite_runs import SqliteRunStore
from agent.store.sqlite_spend import SqliteSpendStore
from agent.store.sqlite_tool_runs import SqliteToolRunStore
from agent.store.tool_runs import ToolRunStore
from agent.turn.budget import Budget
from agent.turn.context_window import ContextKeeper
from agent.turn.runner import TurnRunner
from agent.turn.sessions import Sessions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Service:
    """The process-wide objects the HTTP layer uses, built once by ``build_service``."""

    settings: Settings
    store: HistoryBackend
    turns: TurnRunner
    loop: BackgroundLoop
    results: OffloadPolicy
    auth: Authenticator
    idempotency: IdempotencyBackend
    tool_runs: ToolRunBackend
    sessions: Sessions
    project: str | None
    """The Google Cloud project, for the trace field of the logs."""
    spend: SpendBackend
    """Principals' daily spend (written only when a budget is set)."""
    runs: Runs
    """Background runs (``agent/runs``)."""
    task_auth: TaskAuth
    """Who may deliver a run's task (``agent/auth/tasks.py``)."""
    queue: Queue | None = None
    """What delivers the runs' tasks (None: background runs are refused)."""

    @staticmethod
    def new_session_id() -> str:
        return secrets.token_urlsafe(24)  # 192 random bits

    def close(self) -> None:
        if isinstance(self.queue, LocalQueue):
            self.queue.close()
        self.loop.close()


def build_service(
    settings: Settings,
    *,
    clock: Callable[[], dt.datetime] = utc_now,
    queue: Queue | None = None,
) -> Service:
    """Build every process-wide object from ``settings``; makes no network call.
    ``clock`` tells the budget which UTC day it is (tests move it); ``queue`` replaces
    the queue ``RUNS_QUEUE`` implies (tests: a local queue that delivers twice)."""
    prices = _prices(settings)  # first: a bad table starts nothing
    tracing.configure(settings)
    model = build_model(settings)
    # Before any store is opened: a factory that fails (FactoryError) starts nothing.
    agent = build_agent(settings, model)
    store, idempotency, tool_runs, spend, project, run_store = _stores(settings)
    if queue is None:
        queue = _queue(settings)
    secret = queue.secret if isinstance(queue, LocalQueue) else None
    limit = settings.budget_usd_per_principal_per_day
    spending = None
    if limit is not None:
        reserve = settings.budget_reserve_usd_per_turn
        spending = Budget(spend, limit, clock, reserve_usd=reserve)
    _warn_of_retirement(settings, clock().date())
    summarizer = model
    if settings.context_summary_model not in (None, settings.agent_model):
        summarizer = build_model(settings, settings.context_summary_model)
    budget = settings.context_max_tokens or default_budget(settings.agent_model)
    summary_model_name = settings.context_summary_model or settings.agent_model
    context = ContextKeeper(
        agent, summarizer, budget, summary_model_name=summary_model_name, settings=settings
    )
    loop = BackgroundLoop()
    # No network, no storage import: the bucket's client is made on the first offload.
    results = OffloadPolicy(settings, ResultBucket(settings) if settings.results_bucket else None)
    log.info(
        "agent %r ready: model %s via %s (%s API); tracing upload %s; trace export %s",
        agent.name,
        settings.agent_model,
        redact_url(settings.openai_base_url) or "OpenAI",  # never its credentials
        settings.model_api,
        "on" if settings.tracing_enabled else "off",
        settings.trace_export,
    )
    turns = TurnRunner(
        agent,
        store,
        loop,
        settings,
        results,
        prices,
        context,
        budget=spending,
        tool_runs=tool_runs,
    )
    return Service(
        settings,
        store,
        turns,
        loop,
        results=results,
        auth=build_authenticator(settings),
        idempotency=idempotency,
        tool_runs=tool_runs,
        sessions=Sessions(store, results, idempotency, tool_runs),
        project=project,
        spend=spend,
        runs=Runs(runs=run_store, history=store, turns=turns, queue=queue, settings=settings),
        task_auth=build_task_auth(settings, secret, TASK_SECRET_HEADER),
        queue=queue,
    )


def _queue(settings: Settings) -> Queue | None:
    """The queue of background runs: the process itself off Cloud Functions (unless
    ``RUNS_QUEUE``); on Cloud Functions without ``RUNS_QUEUE``, none (runs refused)."""
    if settings.runs_queue is not None:
        # Cloud Tasks; its client library is imported on the first enqueue, not here.
        return CloudTasksQueue(settings)
    if settings.k_service:
        return None
    # A task is one slice: its attempt may last the whole turn budget and its commit.
    return LocalQueue(
        dispatch_deadline=settings.function_timeout_seconds + 5.0,
        secret=settings.runs_task_secret,
    )


class UnpricedModelError(PriceTableError):
    """A budget is set and a configured model has no price: its calls would cost
    nothing against the budget."""


def _prices(settings: Settings) -> PriceTable:
    """The price table of this deployment. With a budget, every model the service calls
    must have a price, or it refuses to start."""
    vertex = settings.model_provider == "vertex"
    endpoint = settings.vertex_base_url if vertex else settings.openai_base_url
    prices = parse_prices(settings.model_prices, endpoint=endpoint)
    if settings.budget_usd_per_principal_per_day is None:
        return prices
    for name, model in _models(settings):
        if not prices.has_price(model):
            raise UnpricedModelError(
                f"BUDGET_USD_PER_PRINCIPAL_PER_DAY is set but {name}={model} has no price:"
                " add it to MODEL_PRICES (US dollars per million tokens)"
            )
    return prices


def _models(settings: Settings) -> list[tuple[str, str]]:
    """(setting, model) of every model the service calls."""
    models = [("AGENT_MODEL", settings.agent_model)]
    if settings.context_summary_model not in (None, settings.agent_model):
        models.append(("CONTEXT_SUMMARY_MODEL", settings.context_summary_model))
    return models


def _warn_of_retirement(settings: Settings, today: dt.date) -> None:
    """One log line per configured model past (or near) its retirement date."""
    for name, model in _models(settings):
        warning = catalog.retirement_warning(name, model, today)
        if warning is not None:
            log.warning(warning)


def _stores(
    settings: Settings,
) -> tuple[
    HistoryBackend, IdempotencyBackend, ToolRunBackend, SpendBackend, str | None, RunBackend
]:
    """The history, idempotency, tool-run and spend stores of ``HISTORY_BACKEND``, the
    project, and the run store."""
    ttl, timeout = settings.session_ttl_seconds, settings.store_timeout
    if settings.history_backend == "sqlite":
        database = Database(settings.sqlite_path, timeout_seconds=timeout)
        log.info("history store: SQLite at %s", settings.sqlite_path)
        return (
            SqliteHistoryStore(database, ttl_seconds=ttl),
            SqliteIdempotencyStore(database, ttl_seconds=ttl),
            SqliteToolRunStore(database, ttl_seconds=ttl),
            SqliteSpendStore(database),
            settings.google_cloud_project,
            SqliteRunStore(database),
        )
    client = firestore.Client(
        project=settings.google_cloud_project, database=settings.firestore_database
    )
    return (
        HistoryStore(client, ttl_seconds=ttl, timeout_seconds=timeout),
        IdempotencyStore(client, ttl_seconds=ttl, timeout_seconds=timeout),
        ToolRunStore(client, ttl_seconds=ttl, timeout_seconds=timeout),
        SpendStore(client, timeout_seconds=timeout),
        settings.google_cloud_project or client.project,
        RunStore(client, timeout_seconds=timeout),
    )
