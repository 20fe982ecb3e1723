"""The one error shape every response uses, and the mapping from failures to it.

Callers only ever see ``{"error": {"code", "message"}}`` with a fixed, human message
per code. Exception text stays in the logs: it can carry hostnames, paths or
fragments of a prompt, and none of that is the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field


# Not frozen: Python sets ``__traceback__`` on an exception as it passes through a
# ``contextlib.contextmanager``, and a frozen dataclass refuses that assignment.
@dataclass(eq=False)
class ApiError(Exception):
    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    details: dict[str, object] = field(default_factory=dict)
    """Fields of the error object beside code and message (what the caller can act on)."""

    def body(self, request_id: str | None = None) -> dict[str, object]:
        error: dict[str, object] = {"code": self.code, "message": self.message} | self.details
        if request_id is not None:
            error["request_id"] = request_id
        return {"error": error}


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def session_not_found() -> ApiError:
    return ApiError(404, "session_not_found", "No such session, or it has expired.")


def result_not_found() -> ApiError:
    return ApiError(404, "result_not_found", "No stored result for this turn of the session.")


def session_busy(retry_after: int) -> ApiError:
    return ApiError(
        409,
        "session_busy",
        "Another turn is running on this session; retry when it has finished.",
        {"Retry-After": str(retry_after)},
    )


def session_id_taken() -> ApiError:
    # To anyone but its owner a session looks absent, except here: creating a session
    # under a taken id would otherwise succeed. This reveals only that the id is taken.
    return ApiError(
        409,
        "session_id_taken",
        "This session id is in use by another caller; choose another or omit it.",
    )


def idempotency_key_in_progress(retry_after: int) -> ApiError:
    return ApiError(
        409,
        "idempotency_key_in_progress",
        "A request with this Idempotency-Key is still running; retry to get its response.",
        {"Retry-After": str(retry_after)},
    )


def idempotency_key_reused() -> ApiError:
    return ApiError(
        422,
        "idempotency_key_reused",
        "This Idempotency-Key was used with a different request body.",
    )


def approval_pending(call_ids: tuple[str, ...], pause_id: str) -> ApiError:
    return ApiError(
        409,
        "approval_pending",
        "The session's run waits for approval of tool calls; decide them first"
        " (POST /sessions/<id>/approvals).",
        details={"pending_call_ids": list(call_ids), "pause_id": pause_id},
    )


def approval_not_pending() -> ApiError:
    return ApiError(
        409,
        "approval_not_pending",
        "No such call waits for approval on this session (already decided, or dropped).",
    )


def approval_stale() -> ApiError:
    return ApiError(
        409,
        "approval_stale",
        "The agent changed since this run paused; the paused run was dropped.",
    )


def approval_conflict(call_ids: list[str]) -> ApiError:
    return ApiError(
        409,
        "approval_conflict",
        "An earlier attempt already ran these calls (or began to); they cannot be rejected"
        " now. Approve them to resume with their recorded results.",
        details={"ran_call_ids": call_ids},
    )


def approval_calls_invalid(reason: str) -> ApiError:
    return ApiError(
        502,
        "approval_calls_invalid",
        "The model proposed tool calls that cannot be put to a person; nothing was stored.",
        details={"reason": reason},
    )


def approval_state_too_large() -> ApiError:
    return ApiError(
        502,
        "approval_state_too_large",
        "The paused run is too large to keep; nothing was stored.",
    )


def max_turns_exceeded() -> ApiError:
    return ApiError(422, "max_turns_exceeded", "The agent needed more model turns than allowed.")


def guardrail_tripped(guardrail: str, kind: str) -> ApiError:
    """A guardrail of the agent refused the request or its answer; ``kind`` is ``input``,
    ``output``, ``tool_input`` or ``tool_output``."""
    return ApiError(
        422,
        "guardrail_tripped",
        "A guardrail of the agent refused this request or its answer; nothing was stored.",
        details={"guardrail": guardrail, "kind": kind},
    )


def budget_exceeded(retry_after: int) -> ApiError:
    return ApiError(
        429,
        "budget_exceeded",
        "This caller has spent its daily model budget; retry after the UTC day rolls over.",
        {"Retry-After": str(retry_after)},
    )


def model_error() -> ApiError:
    return ApiError(502, "model_error", "The model provider failed to answer.")


def context_overflow() -> ApiError:
    return ApiError(
        502,
        "context_overflow",
        "The model refused the conversation as too long even after it was summarised;"
        " lower CONTEXT_MAX_TOKENS below the model's context window.",
    )


def model_overloaded() -> ApiError:
    # A quota or rate limit (429, RESOURCE_EXHAUSTED) that outlasted the retries the
    # deadline allowed: not a broken provider, so 503 and a time to come back.
    return ApiError(
        503,
        "model_overloaded",
        "The model provider is over its quota or rate limit; retry shortly.",
        {"Retry-After": "10"},
    )


def storage_unavailable() -> ApiError:
    return ApiError(
        503,
        "storage_unavailable",
        "Conversation storage is unavailable; retry shortly.",
        {"Retry-After": "5"},
    )


def result_storage_unavailable() -> ApiError:
    return ApiError(
        503,
        "result_storage_unavailable",
        "Result storage is unavailable; retry shortly.",
        {"Retry-After": "5"},
    )


def url_signing_failed() -> ApiError:
    return ApiError(
        503,
        "url_signing_failed",
        "A download URL for the result could not be signed; retry later.",
        {"Retry-After": "30"},
    )


def deadline_exceeded() -> ApiError:
    return ApiError(504, "deadline_exceeded", "The turn ran out of time; the history is unchanged.")


def internal_error() -> ApiError:
    return ApiError(
        500, "internal_error", "Internal error; quote the request_id when reporting it."
    )
