"""The spec itself is valid and complete, and assert_conforms really rejects drift."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from tests.support.openapi_contract import (
    assert_conforms,
    load_spec,
    resolve,
    spec_node,
    validator_at,
)

ERROR_REF = {"$ref": "#/components/schemas/Error"}
EXPIRES = "2025-01-01T13:00:00Z"
CHAT_OK: dict[str, Any] = {
    "session_id": "kq3Zt1wq2c7bV9xYp0aLmA",
    "reply": "Paris.",
    "new_session": True,
    "usage": {"requests": 1, "input_tokens": 52, "output_tokens": 9, "total_tokens": 61},
    "expires_at": EXPIRES,
    "status": "completed",
}
SESSION_OK: dict[str, Any] = {
    "session_id": "abc_-1",
    "items": [{"role": "user", "content": "Hi"}],
    "turns": 1,
    "expires_at": "2025-01-01T13:00:00.123+00:00",  # "+00:00" is UTC too
    "usage": {
        "requests": 1,
        "input_tokens": 52,
        "cached_input_tokens": 0,
        "output_tokens": 9,
        "cost_usd": 0.0,
    },
}

# The route table and error catalogue the rest of the code relies on; a change
# here is an API change and should be deliberate.
EXPECTED_STATUSES = {
    ("post", "/chat"): {
        *(
            "200",
            "202",
            "400",
            "401",
            "403",
            "409",
            "413",
            "415",
            "422",
            "429",
            "500",
            "502",
            "503",
        ),
        "504",
    },
    ("post", "/sessions/{session_id}/approvals"): {
        *("200", "400", "401", "403", "404", "409", "413", "415", "422", "500", "502", "503")
    }
    | {"504"},
    ("get", "/sessions/{session_id}"): {"200", "400", "401", "403", "404", "500", "503"},
    ("delete", "/sessions/{session_id}"): {"204", "400", "401", "403", "404", "409", "500", "503"},
    ("get", "/sessions/{session_id}/results/{turn_id}"): {
        *("200", "400", "401", "403", "404", "500", "503")
    },
    ("get", "/runs/{run_id}"): {"200", "401", "403", "404", "500", "503"},
    ("get", "/runs/{run_id}/events"): {"200", "400", "401", "403", "404", "500", "503"},
    ("post", "/runs/{run_id}/cancel"): {
        *("200", "400", "401", "403", "404", "409", "415", "500", "503")
    },
    ("get", "/healthz"): {"200", "500"},
    ("get", "/"): {"200", "500"},
}
EXPECTED_CODES = {
    "400": {
        "invalid_json",
        "invalid_request",
        "message_too_long",
        "invalid_session_id",
        "invalid_idempotency_key",
        "decisions_invalid",
        "decisions_incomplete",
        "invalid_webhook",
        "invalid_event_id",
    },
    "401": {"unauthenticated"},
    "403": {"forbidden"},
    "404": {"not_found", "session_not_found", "result_not_found", "run_not_found"},
    "405": {"method_not_allowed"},
    "409": {
        *("session_busy", "session_id_taken", "idempotency_key_in_progress"),
        *("approval_pending", "approval_not_pending", "approval_stale", "approval_conflict"),
        "run_finished",
    },
    "413": {"request_too_large"},
    "415": {"unsupported_media_type"},
    "422": {"max_turns_exceeded", "guardrail_tripped", "idempotency_key_reused"},
    "429": {"budget_exceeded"},
    "500": {"internal_error"},
    "502": {
        "model_error",
        "context_overflow",
        "approval_state_too_large",
        "approval_calls_invalid",
    },
    "503": {
        "storage_unavailable",
        "auth_unavailable",
        "result_storage_unavailable",
        "url_signing_failed",
        "model_overloaded",
        "runs_unavailable",
    },
    "504": {"deadline_exceeded"},
}
# Router-level errors are not attached to an operation (see info.description).
ROUTER_ERRORS = {
    "404": "/components/responses/RouteNotFound",
    "405": "/components/responses/MethodNotAllowed",
}


def error(code: str, **extra: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": "Something went wrong.", **extra}}


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in load_spec()["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                yield method, path, operation


def error_responses() -> Iterator[tuple[str, str]]:
    """(status, pointer) of every error response an operation or the router can send."""
    yield from ROUTER_ERRORS.items()
    for method, path, operation in operations():
        op_pointer = f"/paths/{path.replace('/', '~1')}/{method}"
        for status in operation["responses"]:
            if not status.startswith("2"):
                yield status, f"{op_pointer}/responses/{status}"


def documented_codes(schema: Mapping[str, Any]) -> set[str]:
    narrowed = [s for s in schema.get("allOf", []) if s != ERROR_REF]
    code = narrowed[0]["properties"]["error"]["properties"]["code"] if narrowed else {}
    return set(code.get("enum", [])) | ({code["const"]} if "const" in code else set())


def media_types(node: Any, pointer: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if "schema" in node and ("example" in node or "examples" in node):
            yield pointer, node
        for key, value in node.items():
            yield from media_types(
                value, f"{pointer}/{str(key).replace('~', '~0').replace('/', '~1')}"
            )


def test_spec_is_valid_openapi_3_1() -> None:
    spec = copy.deepcopy(load_spec())  # the loaded spec is shared; keep it pristine
    assert spec["openapi"] == "3.1.0"
    validate(spec, cls=OpenAPIV31SpecValidator)


def test_routes_document_expected_statuses() -> None:
    actual = {(method, path): set(op["responses"]) for method, path, op in operations()}
    assert actual == EXPECTED_STATUSES


def test_every_error_response_is_shared_and_uses_error_schema() -> None:
    codes: dict[str, set[str]] = {}
    for status, pointer in error_responses():
        if pointer.startswith("/paths/"):
            assert "$ref" in spec_node(pointer), (
                f"{pointer} should reuse a response from components"
            )
        _, response = resolve(pointer)
        schema = response["content"]["application/json"]["schema"]
        assert schema == ERROR_REF or ERROR_REF in schema.get("allOf", []), (
            f"{pointer} must use Error"
        )
        codes.setdefault(status, set()).update(documented_codes(schema))
    assert codes == EXPECTED_CODES


def test_retry_after_and_allow_are_required_where_promised() -> None:
    for status, pointer in error_responses():
        pointer, response = resolve(pointer)
        names = {
            n
            for n in response.get("headers", {})
            if resolve(f"{pointer}/headers/{n}")[1].get("required")
        }
        expected = {
            "401": {"WWW-Authenticate"},
            "409": {"Retry-After"},
            "429": {"Retry-After"},
            "503": {"Retry-After"},
            "405": {"Allow"},
        }.get(status, set())
        if pointer in (
            "/components/responses/ChatConflict",
            "/components/responses/ApprovalConflict",
            "/components/responses/RunFinished",
        ):
            # session_id_taken and the approval conflicts have no Retry-After: waiting
            # would not help.
            expected = set()
        assert names == expected, pointer


def test_examples_match_their_schemas() -> None:
    # openapi-spec-validator does not check examples, and wrong ones mislead clients.
    checked = 0
    for pointer, media in media_types(load_spec(), ""):
        examples = [media["example"]] if "example" in media else []
        examples += [e["value"] for e in media.get("examples", {}).values()]
        for example in examples:
            assert not list(validator_at(f"{pointer}/schema").iter_errors(example)), (
                pointer,
                example,
            )
            checked += 1
    assert checked >= 15


@pytest.mark.parametrize("code", ["session_busy", "x", "http2_error"])
def test_error_schema_accepts_snake_case(code: str) -> None:
    assert validator_at("/components/schemas/Error").is_valid(error(code))


@pytest.mark.parametrize("code", ["SessionBusy", "session-busy", "_busy", "busy_", "", "2fast"])
def test_error_schema_rejects_other_codes(code: str) -> None:
    assert not validator_at("/components/schemas/Error").is_valid(error(code))


@pytest.mark.parametrize(
    ("method", "path", "status", "body", "headers"),
    [
        ("POST", "/chat", 200, CHAT_OK, {"Content-Type": "application/json", "X-Request-Id": "r1"}),
        ("post", "/chat", 400, error("invalid_request"), None),
        ("POST", "/chat", 409, error("session_busy"), {"retry-after": "2"}),
        ("POST", "/chat", 500, error("internal_error", request_id="r1"), None),
        ("POST", "/chat", 503, error("storage_unavailable"), {"Retry-After": "5"}),
        ("GET", "/sessions/abc_-1", 200, SESSION_OK, None),
        ("GET", "/sessions/bad!id", 400, error("invalid_session_id"), None),
        ("GET", "/sessions/abc", 404, error("session_not_found"), None),
        ("DELETE", "/sessions/abc", 204, None, None),
        ("DELETE", "/sessions/abc", 409, error("session_busy"), {"Retry-After": "1"}),
        ("GET", "/healthz?probe=1", 200, {"status": "ok"}, None),
        ("GET", "/nope", 404, error("not_found"), None),
        ("PUT", "/chat", 405, error("method_not_allowed"), {"Allow": "POST"}),
    ],
)
def test_assert_conforms_accepts_valid_responses(
    method: str, path: str, status: int, body: object, headers: dict[str, str] | None
) -> None:
    assert_conforms(method, path, status, body, headers)


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in CHAT_OK.items() if k != key}


@pytest.mark.parametrize(
    ("method", "path", "status", "body", "headers", "match"),
    [
        ("POST", "/chat", 200, without("usage"), None, "'usage' is a required property"),
        ("POST", "/chat", 200, {**CHAT_OK, "extra": 1}, None, "Additional properties"),
        (
            "POST",
            "/chat",
            200,
            {**CHAT_OK, "expires_at": "2025-13-45T00:00:00Z"},
            None,
            "date-time",
        ),
        (
            "POST",
            "/chat",
            200,
            {**CHAT_OK, "expires_at": "2025-01-01T13:00:00+02:00"},
            None,
            "expires_at",
        ),
        ("POST", "/chat", 200, CHAT_OK, {"Content-Type": "text/html"}, "Content-Type"),
        ("POST", "/chat", 409, error("SessionBusy"), {"Retry-After": "2"}, r"\$\.error\.code"),
        ("POST", "/chat", 400, error("session_busy"), None, r"\$\.error\.code"),
        ("POST", "/chat", 418, error("teapot"), None, "does not document status 418"),
        ("DELETE", "/sessions/a", 409, error("session_busy"), None, "required header Retry-After"),
        ("GET", "/sessions/a", 401, error("unauthenticated"), None, "header WWW-Authenticate"),
        ("POST", "/chat", 422, error("session_busy"), None, r"\$\.error\.code"),
        (
            "DELETE",
            "/sessions/a",
            409,
            error("session_busy"),
            {"Retry-After": "soon"},
            "header Retry-After",
        ),
        (
            "POST",
            "/chat",
            500,
            error("internal_error"),
            None,
            "'request_id' is a required property",
        ),
        ("GET", "/nope", 200, {"status": "ok"}, None, "matches no path"),
        ("PATCH", "/chat", 200, CHAT_OK, None, "not an operation"),
        ("PUT", "/chat", 405, error("method_not_allowed"), None, "required header Allow"),
        ("DELETE", "/sessions/abc", 204, {"deleted": True}, None, "no body"),
    ],
)
def test_assert_conforms_rejects_drift(
    method: str, path: str, status: int, body: object, headers: dict[str, str] | None, match: str
) -> None:
    with pytest.raises(AssertionError, match=match):
        assert_conforms(method, path, status, body, headers)
