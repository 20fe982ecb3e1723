"""Every setting of the service, read from the environment in one place.

Each field is mirrored by an environment variable of the same name in upper case
(``session_ttl_seconds`` <- ``SESSION_TTL_SECONDS``). ``Settings.from_env()`` is the
only code that reads ``os.environ`` for configuration; everything else receives a
``Settings``. Invalid values fail at startup with a message naming the variable, so a
bad deploy never serves a single request.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Literal

ModelApi = Literal["responses", "chat_completions"]
ModelProvider = Literal["openai", "vertex"]
VERTEX_DEFAULT_MODEL = "google/gemini-3.8-flash"
"""Vertex AI's default model: a GA model far from its retirement date (agent/runtime/catalog.py)."""
AuthMode = Literal["iam", "api_key", "none"]
TraceExport = Literal["none", "cloud_trace", "otlp"]
HistoryBackendName = Literal["firestore", "sqlite"]
GOOGLE_ID_TOKEN_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"

RESULT_INLINE_LIMIT_BYTES = 2 * 1024 * 1024
"""Highest RESULT_INLINE_MAX_BYTES. An inline answer goes whole into the history, whose one
turn commit is capped at 3 MiB (store/history.py MAX_TURN_BYTES), and JSON escaping can grow
text; 2 MiB also stays far under the platform's 10 MB streamed / 32 MB buffered responses."""
KEY_SIGNED_URL_MAX_SECONDS = 7 * 86400
"""V4 signed URLs live at most 7 days, whatever signs them."""
IAM_SIGNED_URL_MAX_SECONDS = 12 * 3600
"""Our cap for URLs signed through IAM signBlob (keyless runtime credentials): hours, not
days, so a leaked link dies soon; the deployed function signs this way."""


class SettingsError(ValueError):
    """A setting is missing or out of range; raised at startup."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    # --- Google Cloud -------------------------------------------------------------
    google_cloud_project: str | None = None
    """Project holding the Firestore database. Unset: taken from the runtime's
    credentials (on Cloud Functions) or the emulator's default."""

    firestore_database: str = "(default)"
    """Firestore database id."""

    firestore_timeout_seconds: float = 5.0
    """Upper bound for each Firestore call, retries included (0.5-60). With Firestore
    down a request gets 503 within about this time instead of hanging. The older name
    of ``STORE_TIMEOUT_SECONDS``, which it stands for when that is unset."""

    store_timeout_seconds: float | None = None
    """Upper bound for each history-store call, whichever ``HISTORY_BACKEND``: a Firestore
    call with its retries, or the SQLite store's wait for its write lock (0.5-60). Unset:
    ``FIRESTORE_TIMEOUT_SECONDS``; set, it sets that too (both set differently: refused)."""

    history_backend: HistoryBackendName = "firestore"
    """Where conversations are kept: ``firestore``, or ``sqlite`` (one local file, for a
    machine without the Firestore emulator; refused where ``K_SERVICE`` is set, since
    instances share no disk)."""

    sqlite_path: str = ".local/history.sqlite3"
    """The SQLite store's file (relative to the working directory), or ``:memory:``."""

    # --- Conversations ------------------------------------------------------------
    session_ttl_seconds: int = 3600
    """Idle time after which a conversation expires (1 s - 30 days). Each turn slides
    it; Firestore's TTL policy on ``expire_at`` deletes expired documents."""

    function_timeout_seconds: int = 300
    """The platform's request timeout; must equal the deploy's ``--timeout`` (10-3600)."""

    deadline_margin_seconds: float = 5.0
    """Time kept back from the platform timeout to cancel a run and answer 504 cleanly
    (0.1 s up to a third of ``function_timeout_seconds``). Left unset, it scales with the
    timeout (``default_deadline_margin``) so that no valid timeout is refused for it."""

    # --- HTTP limits --------------------------------------------------------------
    max_request_bytes: int = 262_144
    """Largest accepted request body (1 KiB - 32 MiB, the platform's request cap)."""

    max_message_chars: int = 32_000
    """Longest accepted ``message`` in characters."""

    # --- The agent and its model --------------------------------------------------
    agent_factory: str | None = None
    """``package.module:name`` of the function ``name(model, settings)`` that returns the
    Agents SDK ``Agent`` to run, or of an ``Agent`` object (``agent/runtime/factory.py``).
    Unset: the demo agent, ``agent_examples.demo.agent:build_agent``."""

    agent_name: str = "assistant"
    """The demo agent's name (a factory may read it too)."""
    agent_instructions: str = (
        "You are a concise, helpful assistant. Use the calculate tool for arithmetic."
    )
    """The demo agent's instructions."""
    agent_model: str = "gpt-4o-mini"
    agent_max_turns: int = 10
    """Model calls one request may make (tool round trips count); 1-100."""

    model_provider: ModelProvider = "openai"
    """``openai``: OpenAI, or any OpenAI-compatible server at ``OPENAI_BASE_URL``, with
    ``OPENAI_API_KEY``. ``vertex``: Gemini on Vertex AI's OpenAI-compatible endpoint,
    authenticated with the runtime's own access token (no key); Chat Completions only,
    ``AGENT_MODEL`` defaults to ``google/gemini-3.8-flash`` and ``GOOGLE_CLOUD_PROJECT``
    is required."""

    vertex_location: str = "global"
    """Vertex AI location of the model (``global``, ``us-central1``, ...). Unset:
    ``GOOGLE_CLOUD_LOCATION``, else ``global``."""

    google_cloud_location: str | None = None
    """The location google-genai and the Vertex AI SDK read; ``VERTEX_LOCATION``'s value
    when that is unset."""

    vertex_endpoint: str | None = None
    """Base URL of the Vertex AI API. Unset: ``https://aiplatform.googleapis.com`` for
    the ``global`` location, else ``https://LOCATION-aiplatform.googleapis.com``. https,
    except on loopback (tests serve a stand-in there)."""

    openai_api_key: str | None = field(default=None, repr=False)
    """Key for OpenAI or the compatible server. Never logged (``repr=False``)."""

    openai_base_url: str | None = None
    """Any OpenAI-compatible server (Ollama, vLLM, LiteLLM, Vertex AI's endpoint)."""

    model_api: ModelApi = "responses"
    """``responses`` or ``chat_completions``. Unset: chat_completions whenever
    ``OPENAI_BASE_URL`` is set (most compatible servers speak only that), else
    responses."""

    model_timeout_seconds: float = 60.0
    """Timeout of one model HTTP call (1-3600)."""

    model_max_retries: int = 2
    """Retries of a failed model call by the OpenAI client (0-10), with backoff."""

    model_call_min_seconds: float = 1.0
    """A model call is not started with less than this left of the turn; the turn
    ends with 504 at once instead (0 up to half the turn's budget). Left unset, it is
    capped at half the turn's budget, for the same reason as the margin."""

    tool_timeout_seconds: float = 30.0
    """Bound on each tool call (0.1-3600); on timeout the model gets an error result and
    the turn goes on. A sync tool's worker thread cannot be killed: the bound stops the
    waiting, not the work, so tools that compute must bound themselves."""

    approval_required_tools: str | None = None
    """Tools that need a person's approval before each call, comma-separated names, or
    ``*`` for every tool; on top of those whose code says so (``send_message``). Unset:
    only those."""

    outbox_path: str | None = None
    """A file the demo tool ``send_message`` appends each sent message to (JSON lines).
    Unset: it only logs that it sent one."""

    context_max_tokens: int | None = None
    """The most tokens of history (instructions and tool schemas included) one model call
    is sent (1,000 - 10,000,000). Past it the oldest part is folded into a running summary.
    Unset: the model's context window less room for the answer, from the table of known
    models (``agent/runtime/catalog.py``), else 32,000."""

    context_summary_model: str | None = None
    """The model that writes the running summary. Unset: ``AGENT_MODEL``."""

    model_prices: str | None = None
    """Prices per million tokens as JSON, ``{"model": {"input": 0.15, "cached_input":
    0.075, "output": 0.6}}``, by exact model name, over the list prices of the locked
    ``genai-prices`` package (``agent/runtime/pricing.py``). A model in neither gets
    ``cost_usd: null``."""

    budget_usd_per_principal_per_day: float | None = None
    """What one principal's turns may cost per UTC day, in US dollars at the price table's
    rates (> 0). Past it the caller gets 429 ``budget_exceeded`` until midnight UTC, and no
    model call is made. Unset: no budget. With a budget, the service refuses to start
    when ``AGENT_MODEL`` or ``CONTEXT_SUMMARY_MODEL`` has no price."""

    budget_reserve_usd_per_turn: float | None = None
    """With a budget: what each turn in flight holds of its principal's budget, in US
    dollars, from its check until it ends (> 0): the estimated worst case of one turn.
    A turn that has been charged it starts no further model call (429
    ``budget_exceeded``). Unset: a tenth of ``BUDGET_USD_PER_PRINCIPAL_PER_DAY``."""

    tracing_enabled: bool = False
    """Upload traces to OpenAI. Off unless the operator opts in: the SDK would
    otherwise upload every conversation as soon as any key is configured."""

    openai_agents_disable_tracing: bool = False
    """The Agents SDK's own switch, honoured as the SDK documents it: true, and the SDK
    makes no traces at all, whatever ``TRACING_ENABLED`` says (nothing goes to OpenAI, and
    ``TRACE_EXPORT``'s spans lack the model and tool spans)."""

    trace_export: TraceExport = "none"
    """Where OpenTelemetry spans of each request go: ``none`` (no OpenTelemetry SDK is
    even imported), ``cloud_trace`` (Cloud Trace, through Google's Telemetry API, as the
    runtime's credentials) or ``otlp`` (OTLP/HTTP to a collector). Independent of
    ``TRACING_ENABLED``."""

    otel_traces_exporter: str | None = None
    """OpenTelemetry's exporter variable: ``otlp`` or ``none``, taken as ``TRACE_EXPORT``
    when that is unset (``TRACE_EXPORT`` wins). Any other exporter is refused."""

    trace_content: bool = False
    """Put prompt, reply and tool argument text in spans, OpenTelemetry's and the ones
    ``TRACING_ENABLED`` uploads to OpenAI (the SDK's ``trace_include_sensitive_data``).
    Off: spans carry names, models, token counts and timings, never what anyone wrote."""

    otel_instrumentation_genai_capture_message_content: str | None = None
    """OpenTelemetry's GenAI content switch, taken as ``TRACE_CONTENT`` when that is
    unset: ``true`` or ``SPAN_ONLY`` / ``SPAN_AND_EVENT`` put the text in spans; ``false``,
    ``NO_CONTENT`` or ``EVENT_ONLY`` (this service sends no events) do not."""

    otel_service_name: str | None = None
    """The spans' ``service.name``. Unset: ``service.name`` from
    ``OTEL_RESOURCE_ATTRIBUTES``, else ``K_SERVICE``, else ``agent-cloud-function``."""

    otel_resource_attributes: str | None = None
    """More resource attributes of the spans, ``key=value,key2=value2`` (values
    URL-encoded), as OpenTelemetry's specification has them."""

    trace_otlp_endpoint: str | None = None
    """The OTLP/HTTP traces URL, over the OpenTelemetry variables below. Unset, for
    ``otlp``: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, else ``OTEL_EXPORTER_OTLP_ENDPOINT``
    with ``/v1/traces`` appended, else ``http://localhost:4318/v1/traces`` (a collector
    beside the process); for ``cloud_trace``: ``https://telemetry.googleapis.com/v1/traces``,
    which sends a bearer token and so needs https (or loopback http)."""

    otel_exporter_otlp_endpoint: str | None = None
    """OpenTelemetry's base OTLP/HTTP URL (specification): the traces go to it with
    ``/v1/traces`` appended. Used with ``TRACE_EXPORT=otlp`` only."""

    otel_exporter_otlp_traces_endpoint: str | None = None
    """OpenTelemetry's traces URL, used as given; wins over the base one."""

    otel_exporter_otlp_headers: str | None = field(default=None, repr=False)
    """Headers of each export (``key=value,key2=value2``), a collector's credentials
    typically; never logged. With any set, the export must go over https (or to
    loopback): startup refuses plain http to another host."""

    otel_exporter_otlp_traces_headers: str | None = field(default=None, repr=False)
    """The traces' own headers; when set, used instead of ``OTEL_EXPORTER_OTLP_HEADERS``
    (as the OpenTelemetry exporter does)."""

    trace_flush_seconds: float = 2.0
    """Bound on exporting a request's spans before its response completes (0-30). The
    platform throttles the CPU once the response is sent, so spans left to a background
    exporter may wait until the next request; 0 leaves them to it (for CPU always
    allocated)."""

    # --- Large results in Cloud Storage --------------------------------------------
    results_bucket: str | None = None
    """Bucket for final answers over ``RESULT_INLINE_MAX_BYTES``. Unset: every answer
    stays inline, as large as the history can hold."""

    result_inline_max_bytes: int = 262_144
    """Largest final answer (UTF-8 bytes) returned inline; larger ones go to the bucket
    and the reply holds a preview (8 KiB - 2 MiB, see RESULT_INLINE_LIMIT_BYTES)."""

    signed_url_ttl_seconds: int = 900
    """Lifetime of a result's V4 signed URL: at most 7 days when a private key signs,
    12 hours when IAM signBlob signs (decided from GOOGLE_APPLICATION_CREDENTIALS)."""

    signing_service_account: str | None = None
    """Service account that signs URLs. Unset: the credentials' own account (the
    function's runtime service account when deployed)."""

    google_application_credentials: str | None = None
    """A service-account key file. Read by Google's libraries; here it tells at startup
    whether URLs are signed with a private key (a key file) or through IAM (anything
    else: Cloud Functions' runtime credentials have no private key)."""

    iam_credentials_endpoint: str = "https://iamcredentials.googleapis.com"
    """Base URL of the IAM Service Account Credentials API (signBlob): a Private Service
    Connect endpoint, or a loopback stand-in in tests. https unless loopback."""

    storage_timeout_seconds: float = 10.0
    """Upper bound for each Cloud Storage or signBlob call, retries included (1-60)."""

    # --- Streaming ----------------------------------------------------------------
    stream_max_delta_bytes: int = 4 * 1024 * 1024
    """Text and tool events a streamed reply sends before it stops sending them (the
    ``done`` event still carries the whole reply). Keeps a streamed body under Cloud
    Run's 10 MB limit together with the ``done`` event (64 KiB - 6 MiB)."""

    # --- Process ------------------------------------------------------------------
    log_level: str = "INFO"

    k_service: str | None = None
    """Set by the platform (Cloud Functions gen2, Cloud Run), never by hand: its
    presence means the process is deployed, not on a developer's machine."""

    # --- Who may call (agent/auth) ----------------------------------------------------
    auth_mode: AuthMode = "iam"
    """``iam``: a Google identity token in ``Authorization: Bearer``, verified here
    too (signature, audience, expiry); ``api_key``: a key in ``X-API-Key``;
    ``none``: no authentication, refused on the platform (see
    ``auth_force_none_on_cloud``)."""

    auth_audience: str | None = None
    """Accepted ``aud`` values of identity tokens, comma-separated (the function's
    URLs). Required where ``K_SERVICE`` is set in ``iam`` mode: the audience is
    configuration, never taken from the request. Unset off the platform: derived from
    the request's ``Host`` only when that is a loopback host (local development)."""

    auth_platform_verified: bool = False
    """True when Google's front end checks identity tokens before the request arrives
    (deployed with ``--no-allow-unauthenticated``): it forwards them with the signature
    replaced by ``SIGNATURE_REMOVED_BY_GOOGLE``, and such a token is then accepted after
    its issuer and expiry are checked. False: such a token is refused (401)."""

    auth_certs_url: str = GOOGLE_ID_TOKEN_CERTS_URL
    """Where Google publishes the keys that sign identity tokens; https, except on
    loopback (tests serve a stand-in there)."""

    auth_allowed_principals: str | None = None
    """Optional allow-list of principals, comma-separated: a token's email or
    ``sub:<id>`` (the account's stable id, which every token carries). Unset:
    any identity the platform's IAM let through. Set it if the function might ever
    be deployed public: any Google account can mint a token for any audience."""

    auth_api_keys: str | None = field(default=None, repr=False)
    """``api_key`` mode's keys, from Secret Manager: ``name:key,name2:key2`` or a
    JSON object ``{"name": "key"}``; each name is a principal. Keys of at least 16
    characters. Never logged (``repr=False``); held hashed once parsed."""

    auth_force_none_on_cloud: bool = False
    """Allow ``AUTH_MODE=none`` although ``K_SERVICE`` is set. Off: such a deploy
    refuses to start."""

    cors_allowed_origins: str | None = None
    """Browser origins allowed to call the API, comma-separated
    (``https://app.example.com``). Unset: no cross-origin access."""

    # --- Background runs (agent/runs) ---------------------------------------------
    runs_queue: str | None = None
    """The Cloud Tasks queue that delivers background runs' work, as
    ``projects/P/locations/L/queues/Q``. Unset off Cloud Functions: the process is its own
    queue (it delivers each task over HTTP to its own URL, as Cloud Tasks would). Unset
    where ``K_SERVICE`` is set: background runs are refused (503), never run in-instance."""

    runs_target_url: str | None = None
    """The URL tasks are delivered to (this service's base URL). Unset: the URL the run
    was submitted on (local queue only). Required with ``RUNS_QUEUE`` (the function's URL,
    also the audience of the tasks' tokens)."""

    runs_invoker: str | None = None
    """The service account whose OIDC token the queue's tasks carry (``...@...``); a task
    request from any other identity is refused. Required with ``RUNS_QUEUE``."""

    runs_task_secret: str | None = field(default=None, repr=False)
    """Without ``RUNS_QUEUE``: the secret the local queue's tasks carry (at least 32
    characters). Unset: a random one made at start, known to this process alone. Set it
    only to let a process outside deliver tasks too (a supervisor that redelivers a
    killed worker's task, the tests). Never logged."""

    run_slice_seconds: float | None = None
    """The work one task does before it checkpoints and enqueues the next: no new model
    or tool call starts after it (1 s up to the turn budget). Unset: half the turn
    budget (``FUNCTION_TIMEOUT_SECONDS`` less ``DEADLINE_MARGIN_SECONDS``), so a call
    begun late in a slice still ends before the platform's timeout."""

    run_max_seconds: int = 3600
    """How long a background run may take from submission, queueing included (60 s to
    86400 s); past it the run fails with ``deadline_exceeded``."""

    webhook_allowed_hosts: str | None = None
    """Host names a run's ``webhook`` may name, comma-separated (bare names, no port or
    scheme). Unset: webhooks are refused (400)."""

    webhook_signing_secret: str | None = field(default=None, repr=False)
    """The Standard Webhooks secret (``whsec_`` and base64) that signs webhook deliveries,
    from Secret Manager. Never logged."""

    # --- The chat page (agent/api/playground.py) -------------------------------------
    playground_enabled: bool = True
    """Serve the chat page at ``GET /``. Unset: true on a developer's machine, false
    where ``K_SERVICE`` is set (a deployed function serves only its API unless the
    operator opts in)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None or raw.strip() == "":
                continue
            values[f.name] = _parse(f.name, str(f.type), raw.strip())
        if values.get("model_provider") == "vertex":
            # Vertex AI's OpenAI-compatible endpoint speaks Chat Completions only.
            values.setdefault("model_api", "chat_completions")
            values.setdefault("agent_model", VERTEX_DEFAULT_MODEL)
        _take_standard_variables(values)
        _one_store_timeout(values)
        if "model_api" not in values and values.get("openai_base_url"):
            values["model_api"] = "chat_completions"
        # Defaults that depend on another setting: a default must never make a valid
        # value of that other setting fail at startup.
        timeout = values.get("function_timeout_seconds", cls.function_timeout_seconds)
        if "deadline_margin_seconds" not in values and isinstance(timeout, int):
            values["deadline_margin_seconds"] = default_deadline_margin(timeout)
        if "model_call_min_seconds" not in values and isinstance(timeout, int):
            margin = values["deadline_margin_seconds"]
            assert isinstance(margin, float | int)
            values["model_call_min_seconds"] = min(
                cls.model_call_min_seconds, max(0.0, (timeout - margin) / 2)
            )
        if "playground_enabled" not in values and values.get("k_service"):
            values["playground_enabled"] = False
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    @property
    def store_timeout(self) -> float:
        """The bound on each history-store call (``STORE_TIMEOUT_SECONDS``, else
        ``FIRESTORE_TIMEOUT_SECONDS``)."""
        if self.store_timeout_seconds is not None:
            return self.store_timeout_seconds
        return self.firestore_timeout_seconds

    @property
    def turn_budget_seconds(self) -> float:
        """Time one turn may take, from request start to answer."""
        return self.function_timeout_seconds - self.deadline_margin_seconds

    def validate(self) -> None:
        if self.store_timeout_seconds is not None:
            _check_range("store_timeout_seconds", self.store_timeout_seconds, 0.5, 60)
        _check_range("firestore_timeout_seconds", self.firestore_timeout_seconds, 0.5, 60)
        _check_range("session_ttl_seconds", self.session_ttl_seconds, 1, 30 * 86400)
        _check_range("function_timeout_seconds", self.function_timeout_seconds, 1, 3600)
        _check_range(
            "deadline_margin_seconds",
            self.deadline_margin_seconds,
            0.1,
            self.function_timeout_seconds / 3,
        )
        _check_range("max_request_bytes", self.max_request_bytes, 1024, 32 * 1024 * 1024)
        _check_range("max_message_chars", self.max_message_chars, 1, self.max_request_bytes)
        _check_range("agent_max_turns", self.agent_max_turns, 1, 100)
        _check_range("model_timeout_seconds", self.model_timeout_seconds, 1, 3600)
        _check_range("model_max_retries", self.model_max_retries, 0, 10)
        if self.context_max_tokens is not None:
            _check_range("context_max_tokens", self.context_max_tokens, 1000, 10_000_000)
        _check_range(
            "model_call_min_seconds", self.model_call_min_seconds, 0, self.turn_budget_seconds / 2
        )
        _check_range("tool_timeout_seconds", self.tool_timeout_seconds, 0.1, 3600)
        budget = self.budget_usd_per_principal_per_day
        if budget is not None and not (0 < budget < math.inf):
            raise SettingsError(f"BUDGET_USD_PER_PRINCIPAL_PER_DAY={budget} must be above 0")
        reserve = self.budget_reserve_usd_per_turn
        if reserve is not None and not (0 < reserve < math.inf):
            raise SettingsError(f"BUDGET_RESERVE_USD_PER_TURN={reserve} must be above 0")
        _check_range("stream_max_delta_bytes", self.stream_max_delta_bytes, 65536, 6 * 1024 * 1024)
        if self.history_backend not in ("firestore", "sqlite"):
            raise SettingsError("HISTORY_BACKEND must be 'firestore' or 'sqlite'")
        if self.history_backend == "sqlite" and self.k_service:
            raise SettingsError(
                f"HISTORY_BACKEND=sqlite refused: K_SERVICE={self.k_service!r} says this runs"
                " on Cloud Functions/Run, whose instances share no disk: each would keep its"
                " own conversations, and lose them when it stops. Use HISTORY_BACKEND=firestore."
            )
        if self.model_api not in ("responses", "chat_completions"):
            raise SettingsError("MODEL_API must be 'responses' or 'chat_completions'")
        self._validate_vertex()
        self._validate_tracing()
        self._validate_results()
        self._validate_access()
        self._validate_runs()

    def _key_file_signs(self) -> bool:
        """True when GOOGLE_APPLICATION_CREDENTIALS holds a private key for the signing
        account; otherwise URLs will be signed through IAM signBlob. Reads a local file
        only: startup makes no network call."""
        path = self.google_application_credentials
        if not path:
            return False
        try:
            with open(path, encoding="utf-8") as f:
                info = json.load(f)
        except (OSError, ValueError):
            raise SettingsError(
                f"GOOGLE_APPLICATION_CREDENTIALS={path!r} is not a readable JSON file"
            ) from None
        has_key = info.get("type") == "service_account" and bool(info.get("private_key"))
        account = self.signing_service_account
        return has_key and (account is None or account == info.get("client_email"))

    def _validate_results(self) -> None:
        _check_range(
            "result_inline_max_bytes", self.result_inline_max_bytes, 8192, RESULT_INLINE_LIMIT_BYTES
        )
        _check_range("storage_timeout_seconds", self.storage_timeout_seconds, 1, 60)
        if self.results_bucket is None:  # no URLs to sign: only V4's own limit applies
            limit, how = KEY_SIGNED_URL_MAX_SECONDS, "any method"
        elif self._key_file_signs():
            limit, how = KEY_SIGNED_URL_MAX_SECONDS, "a private key"
        else:
            limit, how = IAM_SIGNED_URL_MAX_SECONDS, "IAM signBlob (no key file configured)"
        if not 1 <= self.signed_url_ttl_seconds <= limit:
            raise SettingsError(
                f"SIGNED_URL_TTL_SECONDS={self.signed_url_ttl_seconds} is outside 1..{limit}"
                f" for URLs signed with {how}"
            )
        if not https_or_loopback(self.iam_credentials_endpoint):
            # The call carries a bearer token: never in clear text off this machine.
            raise SettingsError("IAM_CREDENTIALS_ENDPOINT must be https:// (or loopback http)")
        if self.results_bucket is not None and not _BUCKET.fullmatch(self.results_bucket):
            raise SettingsError(f"RESULTS_BUCKET={self.results_bucket!r} is not a bucket name")

    @property
    def vertex_base_url(self) -> str:
        """The OpenAI-compatible base URL of Vertex AI for this project and location."""
        location = self.vertex_location
        host = "aiplatform.googleapis.com"
        default = f"https://{host}" if location == "global" else f"https://{location}-{host}"
        base = (self.vertex_endpoint or default).rstrip("/")
        return (
            f"{base}/v1/projects/{self.google_cloud_project}/locations/{location}/endpoints/openapi"
        )

    def _validate_vertex(self) -> None:
        if self.model_provider not in ("openai", "vertex"):
            raise SettingsError("MODEL_PROVIDER must be 'openai' or 'vertex'")
        if self.model_provider != "vertex":
            return
        if self.model_api != "chat_completions":
            raise SettingsError(
                "MODEL_PROVIDER=vertex speaks Chat Completions only: unset MODEL_API"
            )
        if not self.google_cloud_project:
            raise SettingsError("MODEL_PROVIDER=vertex needs GOOGLE_CLOUD_PROJECT")
        if not _LOCATION.fullmatch(self.vertex_location):
            raise SettingsError(f"VERTEX_LOCATION={self.vertex_location!r} is not a location")
        if self.vertex_endpoint is not None and not https_or_loopback(self.vertex_endpoint):
            # The call carries an access token: never in clear text off this machine.
            raise SettingsError("VERTEX_ENDPOINT must be https:// (or http on loopback)")

    def _validate_tracing(self) -> None:
        if self.trace_export not in ("none", "cloud_trace", "otlp"):
            raise SettingsError("TRACE_EXPORT must be 'none', 'cloud_trace' or 'otlp'")
        _check_range("trace_flush_seconds", self.trace_flush_seconds, 0, 30)
        endpoint = self.trace_otlp_endpoint
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise SettingsError("TRACE_OTLP_ENDPOINT must be an http:// or https:// URL")
        if self.trace_export == "none":
            return  # OpenTelemetry's own variables are checked only where they are used
        resource_attributes(self.otel_resource_attributes)  # refuses a malformed one
        for name in ("otel_exporter_otlp_traces_endpoint", "otel_exporter_otlp_endpoint"):
            endpoint = getattr(self, name)
            used = self.trace_export == "otlp" and endpoint is not None
            if used and not endpoint.startswith(("http://", "https://")):
                raise SettingsError(f"{name.upper()} must be an http:// or https:// URL")
        if self.trace_export == "cloud_trace" and not https_or_loopback(self.traces_url):
            # The export carries an access token: never in clear text off this machine.
            raise SettingsError("TRACE_OTLP_ENDPOINT must be https:// (or http on loopback)")
        headers = self.otlp_headers_variable
        if headers and not https_or_loopback(self.traces_url):
            raise SettingsError(
                f"{headers} holds credentials, which would go in clear text to"
                f" {redact_url(self.traces_url)}: use an https:// endpoint (or a collector"
                " on loopback)"
            )

    @property
    def service_name(self) -> str:
        """The spans' ``service.name``: ``OTEL_SERVICE_NAME``, else the one in
        ``OTEL_RESOURCE_ATTRIBUTES`` (the specification's order), else ``K_SERVICE``."""
        named = resource_attributes(self.otel_resource_attributes).get("service.name")
        return self.otel_service_name or named or self.k_service or "agent-cloud-function"

    @property
    def otlp_headers(self) -> str | None:
        """The export's headers as configured (``OTEL_EXPORTER_OTLP_TRACES_HEADERS``, else
        ``OTEL_EXPORTER_OTLP_HEADERS``), unparsed; None when neither holds any."""
        name = self.otlp_headers_variable
        return getattr(self, name.lower()) if name else None

    @property
    def otlp_headers_variable(self) -> str | None:
        for name in ("otel_exporter_otlp_traces_headers", "otel_exporter_otlp_headers"):
            if (getattr(self, name) or "").strip():
                return name.upper()
        return None

    @property
    def traces_url(self) -> str:
        """Where spans are sent: ``TRACE_OTLP_ENDPOINT``, else OpenTelemetry's variables
        by the specification's rules (``otlp`` only), else the default."""
        if self.trace_otlp_endpoint is not None:
            return self.trace_otlp_endpoint
        if self.trace_export == "cloud_trace":
            return "https://telemetry.googleapis.com/v1/traces"
        if self.otel_exporter_otlp_traces_endpoint is not None:
            return self.otel_exporter_otlp_traces_endpoint
        if self.otel_exporter_otlp_endpoint is not None:
            return self.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
        return "http://localhost:4318/v1/traces"

    def _validate_access(self) -> None:
        if self.auth_mode not in ("iam", "api_key", "none"):
            raise SettingsError("AUTH_MODE must be 'iam', 'api_key' or 'none'")
        if self.auth_mode == "none" and self.k_service and not self.auth_force_none_on_cloud:
            raise SettingsError(
                f"AUTH_MODE=none refused: K_SERVICE={self.k_service!r} says this runs on"
                " Cloud Functions/Run, where it would serve every conversation to anyone."
                " Use AUTH_MODE=iam, or set AUTH_FORCE_NONE_ON_CLOUD=true to force it."
            )
        if self.auth_mode == "api_key" and not self.auth_api_keys:
            raise SettingsError("AUTH_MODE=api_key needs AUTH_API_KEYS")
        if not https_or_loopback(self.auth_certs_url):
            raise SettingsError("AUTH_CERTS_URL must be https (or http on 127.0.0.1/localhost)")
        if self.auth_mode == "iam" and self.k_service and not csv(self.auth_audience):
            # Off a fixed list, the audience would come from the request's Host header,
            # which the caller writes: a token minted for another service would pass.
            raise SettingsError(
                f"AUTH_AUDIENCE is required with AUTH_MODE=iam where K_SERVICE is set"
                f" ({self.k_service!r}): list the function's URLs, comma-separated"
            )
        for origin in csv(self.cors_allowed_origins):
            if not _ORIGIN.fullmatch(origin):
                raise SettingsError(
                    f"CORS_ALLOWED_ORIGINS: {origin!r} is not an origin like https://host[:port]"
                )

    def _validate_runs(self) -> None:
        if self.run_slice_seconds is not None:
            _check_range("run_slice_seconds", self.run_slice_seconds, 1, self.turn_budget_seconds)
        _check_range("run_max_seconds", self.run_max_seconds, 60, 86400)
        if self.runs_task_secret is not None and len(self.runs_task_secret) < 32:
            raise SettingsError("RUNS_TASK_SECRET must be at least 32 characters")
        if self.runs_queue is not None:
            if not _QUEUE.fullmatch(self.runs_queue):
                raise SettingsError(
                    "RUNS_QUEUE must be projects/PROJECT/locations/LOCATION/queues/QUEUE"
                )
            if not self.runs_invoker or "@" not in self.runs_invoker:
                raise SettingsError("RUNS_QUEUE needs RUNS_INVOKER (the tasks' service account)")
            if not self.runs_target_url:
                # Never the request's own URL: its Host is the caller's to write, and the
                # tasks' tokens are minted for this audience.
                raise SettingsError(
                    "RUNS_QUEUE needs RUNS_TARGET_URL (the function's URL: where Cloud Tasks"
                    " delivers, and the audience of the tasks' tokens)"
                )
        if self.runs_target_url is not None and not https_or_loopback(self.runs_target_url):
            raise SettingsError("RUNS_TARGET_URL must be https:// (or loopback http)")
        for host in csv(self.webhook_allowed_hosts):
            if not _HOST.fullmatch(host):
                raise SettingsError(f"WEBHOOK_ALLOWED_HOSTS: {host!r} is not a bare host name")
        secret = self.webhook_signing_secret
        if secret is not None and not _whsec_ok(secret):
            raise SettingsError(
                "WEBHOOK_SIGNING_SECRET must be whsec_ followed by the base64 of 24 to 64 bytes"
            )

    @property
    def slice_seconds(self) -> float:
        """The work one background task does (``RUN_SLICE_SECONDS``, else half the turn
        budget)."""
        if self.run_slice_seconds is not None:
            return self.run_slice_seconds
        return self.turn_budget_seconds / 2


_LOCATION = re.compile(r"[a-z][a-z0-9-]{1,62}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_LOOPBACK_NETLOC = re.compile(r"(127\.0\.0\.1|localhost|\[::1\])(:[0-9]{1,5})?")
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")
_QUEUE = re.compile(r"projects/[a-z0-9:.-]+/locations/[a-z0-9-]+/queues/[A-Za-z0-9-]{1,100}")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62}\.?)*[A-Za-z0-9]|localhost|127\.0\.0\.1")
_WHSEC = re.compile(r"whsec_[A-Za-z0-9+/]+={0,2}")


def _whsec_ok(secret: str) -> bool:
    """A Standard Webhooks secret: ``whsec_`` and strict base64 of 24 to 64 bytes (the
    specification's bounds); a value that only looks like one would sign with a key
    nobody else can reproduce."""
    if not _WHSEC.fullmatch(secret):
        return False
    try:
        key = base64.b64decode(secret[len("whsec_") :], validate=True)
    except binascii.Error:
        return False
    return 24 <= len(key) <= 64


def _one_store_timeout(values: dict[str, object]) -> None:
    """``STORE_TIMEOUT_SECONDS`` and its older name ``FIRESTORE_TIMEOUT_SECONDS`` are one
    setting: either sets both; two different values are refused, not silently ranked."""
    store, firestore = values.get("store_timeout_seconds"), values.get("firestore_timeout_seconds")
    if store is not None and firestore is not None and store != firestore:
        raise SettingsError(
            f"STORE_TIMEOUT_SECONDS={store} and FIRESTORE_TIMEOUT_SECONDS={firestore} name the"
            " same bound: set one"
        )
    if store is not None:
        values["firestore_timeout_seconds"] = store


_CONTENT_MODES = {
    "true": True,
    "span_only": True,
    "span_and_event": True,
    "false": False,
    "no_content": False,
    "event_only": False,
}


def _take_standard_variables(values: dict[str, object]) -> None:
    """The ecosystem's variables for a setting of ours that is unset (ours win when
    both are set): OpenTelemetry's exporter and GenAI content switch, Google's location."""
    # Each is checked only where it is used: the ecosystem's variables may be set for
    # other programs in the same environment, and ours win.
    exporter = values.get("otel_traces_exporter")
    if isinstance(exporter, str) and "trace_export" not in values:
        if exporter.lower() not in ("otlp", "none"):
            raise SettingsError(
                f"OTEL_TRACES_EXPORTER={exporter!r}: this service exports 'otlp' or 'none'"
                " (TRACE_EXPORT also takes 'cloud_trace')"
            )
        values["trace_export"] = exporter.lower()
    capture = values.get("otel_instrumentation_genai_capture_message_content")
    if isinstance(capture, str) and "trace_content" not in values:
        if capture.lower() not in _CONTENT_MODES:
            raise SettingsError(
                f"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT={capture!r} is not one of"
                f" {', '.join(sorted(_CONTENT_MODES))} (any case)"
            )
        values["trace_content"] = _CONTENT_MODES[capture.lower()]
    location = values.get("google_cloud_location")
    if isinstance(location, str):
        values.setdefault("vertex_location", location)


def resource_attributes(raw: str | None) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` as a mapping: comma-separated ``key=value`` pairs,
    values percent-decoded (OpenTelemetry's specification). Raises SettingsError on a
    pair without ``=`` or a key."""
    attributes: dict[str, str] = {}
    for pair in csv(raw):
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            raise SettingsError(f"OTEL_RESOURCE_ATTRIBUTES: {pair!r} is not a key=value pair")
        attributes[key.strip()] = urllib.parse.unquote(value.strip())
    return attributes


def default_deadline_margin(function_timeout_seconds: int) -> float:
    """DEADLINE_MARGIN_SECONDS when unset: 5 s, or a tenth of a timeout under 50 s (never
    under 0.1 s), so every timeout the platform allows starts with the default."""
    return max(0.1, min(5.0, function_timeout_seconds / 10))


def https_or_loopback(url: str) -> bool:
    """An https URL with a host, or http to exactly 127.0.0.1, localhost or ::1; never
    with user info (``http://localhost:@evil.example/`` names the host evil.example)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    if not host or "@" in parts.netloc or parts.username is not None:
        return False
    if parts.scheme == "https":
        return True
    # The netloc itself, not the parsed host: urlsplit reads "[::1].evil.example" as ::1.
    return parts.scheme == "http" and _LOOPBACK_NETLOC.fullmatch(parts.netloc) is not None


def redact_url(url: str | None) -> str | None:
    """``url`` without user info, query and fragment: safe to log."""
    if url is None:
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable URL>"
    if ":" in host:
        host = f"[{host}]"
    return urllib.parse.urlunsplit((parts.scheme, host + port, parts.path, "", ""))


def csv(value: str | None) -> list[str]:
    """The non-empty, stripped items of a comma-separated setting."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def _parse(name: str, type_name: str, raw: str) -> object:
    try:
        if type_name.startswith("bool"):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
    except ValueError:
        raise SettingsError(f"{name.upper()}={raw!r} is not a valid {type_name}") from None
    return raw


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise SettingsError(f"{name.upper()}={value} is outside {low}..{high}")
