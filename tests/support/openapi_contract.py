"""Check HTTP responses against openapi.yaml, the API's contract.

Handler tests call ``assert_conforms`` on what they got back, so a response
that drifts from what clients were promised fails a test instead of a client.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.support.constants import REPO_ROOT

SPEC_PATH = REPO_ROOT / "openapi.yaml"
# The whole spec is registered under this URI so "#/components/..." refs inside
# any schema resolve against the spec document itself.
_SPEC_URI = "urn:openapi-spec"
_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


@functools.cache
def load_spec() -> dict[str, Any]:
    """The parsed spec, loaded once. Shared: do not mutate."""
    with SPEC_PATH.open(encoding="utf-8") as f:
        spec: dict[str, Any] = yaml.safe_load(f)
    return spec


def spec_node(pointer: str) -> Any:
    """The raw node at JSON pointer ``pointer`` (e.g. "/components/schemas/Error")."""
    node: Any = load_spec()
    for token in pointer.lstrip("/").split("/"):
        node = node[token.replace("~1", "/").replace("~0", "~")]
    return node


def resolve(pointer: str) -> tuple[str, dict[str, Any]]:
    """Resolve OpenAPI-level $refs (responses, headers), keeping the final pointer."""
    node = spec_node(pointer)
    while "$ref" in node:
        pointer = node["$ref"].removeprefix("#")
        node = spec_node(pointer)
    return pointer, node


@functools.cache
def validator_at(pointer: str) -> Draft202012Validator:
    """A format-checking validator for the schema at JSON pointer ``pointer`` in the spec."""
    spec = Resource.from_contents(load_spec(), default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(_SPEC_URI, spec)
    checker = Draft202012Validator.FORMAT_CHECKER  # off by default; date-time matters here
    return Draft202012Validator(
        {"$ref": f"{_SPEC_URI}#{pointer}"}, registry=registry, format_checker=checker
    )


def _template_for(path: str) -> str | None:
    paths: dict[str, Any] = load_spec()["paths"]
    if path in paths:  # OpenAPI: a concrete path wins over a templated one
        return path
    parts = path.split("/")
    for template in paths:
        t_parts = template.split("/")
        if len(t_parts) == len(parts) and all(
            t == p or (t.startswith("{") and t.endswith("}") and p)
            for t, p in zip(t_parts, parts, strict=True)
        ):
            return template
    return None


def _response_pointer(method: str, path: str, status: int) -> str:
    template = _template_for(path.split("?", 1)[0])
    if template is None:
        # Router-level errors apply to every path, so they live in components.
        if status == 404:
            return "/components/responses/RouteNotFound"
        raise AssertionError(f"{path} matches no path in {SPEC_PATH.name}")
    method = method.lower()
    operation = load_spec()["paths"][template].get(method) if method in _METHODS else None
    if operation is None:
        if status == 405:
            return "/components/responses/MethodNotAllowed"
        raise AssertionError(f"{method.upper()} {template} is not an operation in {SPEC_PATH.name}")
    op_pointer = f"/paths/{template.replace('~', '~0').replace('/', '~1')}/{method}"
    for key in (str(status), f"{str(status)[0]}XX", "default"):
        if key in operation["responses"]:
            return f"{op_pointer}/responses/{key}"
    raise AssertionError(
        f"{method.upper()} {template} does not document status {status}; "
        f"documented: {', '.join(sorted(operation['responses']))}"
    )


def _check(pointer: str, instance: object, what: str) -> None:
    errors = sorted(validator_at(pointer).iter_errors(instance), key=lambda e: e.json_path)
    if errors:
        details = "\n".join(f"  {e.json_path}: {e.message}" for e in errors)
        raise AssertionError(
            f"{what} does not match the spec ({pointer}):\n{details}\n  got: {instance!r}"
        )


def assert_conforms(
    method: str,
    path: str,
    status: int,
    body: object | None,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Fail unless this response is one openapi.yaml allows.

    ``body`` is the decoded JSON body (None for no body). Header names match
    case-insensitively; no ``headers`` counts as none, so a response whose spec
    requires a header (Retry-After, Allow) fails without them.
    """
    pointer, response = resolve(_response_pointer(method, path, status))
    where = f"{method.upper()} {path} -> {status}"
    present = {name.lower(): value for name, value in (headers or {}).items()}
    for name in response.get("headers", {}):
        h_pointer, header = resolve(f"{pointer}/headers/{name}")
        value = present.get(name.lower())
        if value is None:
            if header.get("required"):
                raise AssertionError(f"{where}: required header {name} is missing")
            continue
        # Header values are text; an integer header must at least parse as one.
        is_int = header.get("schema", {}).get("type") == "integer" and value.strip().isdigit()
        _check(f"{h_pointer}/schema", int(value) if is_int else value, f"{where}: header {name}")
    content = response.get("content")
    if not content:
        if body not in (None, b"", ""):
            raise AssertionError(f"{where}: the spec declares no body, got {body!r}")
        return
    content_type = present.get("content-type", "application/json")
    if "application/json" not in content or not content_type.startswith("application/json"):
        raise AssertionError(
            f"{where}: body must be application/json, got Content-Type {content_type!r}"
        )
    _check(f"{pointer}/content/application~1json/schema", body, f"{where}: body")


def assert_stream_conforms(
    path: str,
    events: list[tuple[str, object]],
    headers: Mapping[str, str] | None = None,
) -> None:
    """Fail unless this Server-Sent Events reply to ``POST path`` is one the spec
    allows: the 200's ``text/event-stream`` content type, only the event names its
    event schema lists, each event's data matching that event's ``contentSchema``, and
    exactly one ``done`` or ``error`` as the last event."""
    _, response = resolve(_response_pointer("POST", path, 200))
    media = response.get("content", {}).get("text/event-stream")
    if media is None:
        raise AssertionError(f"POST {path} -> 200 declares no text/event-stream content")
    content_type = {k.lower(): v for k, v in (headers or {}).items()}.get("content-type", "")
    if not content_type.startswith("text/event-stream"):
        raise AssertionError(f"POST {path}: Content-Type {content_type!r} is not an event stream")
    _, event_schema = resolve(media["schema"]["$ref"].removeprefix("#"))
    named = {}
    for branch in event_schema["oneOf"]:
        _, schema = resolve(branch["$ref"].removeprefix("#"))
        properties = schema["properties"]
        named[properties["event"]["const"]] = properties["data"]["contentSchema"]["$ref"]
    for name, data in events:
        if name not in named:
            raise AssertionError(f"POST {path}: event {name!r} is not in the spec")
        _check(named[name].removeprefix("#"), data, f"POST {path}: event {name!r}")
    endings = [i for i, (name, _) in enumerate(events) if name in ("done", "error")]
    if endings != [len(events) - 1]:
        raise AssertionError(f"POST {path}: the stream must end with one done or error event")
