"""Reading Server-Sent Events in tests, incrementally over HTTP or from a whole body."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from tests.support.constants import LOOPBACK


@dataclass(frozen=True)
class Event:
    name: str
    data: Any
    at: float  # time.monotonic() when its last line was read


def parse(lines: Iterable[bytes]) -> Iterator[Event]:
    """Events from SSE lines as they come; comments (keep-alives) are skipped."""
    name, data = "message", []
    for raw in lines:
        line = raw.decode().rstrip("\r\n")
        if line == "":
            if data:
                yield Event(name, json.loads("\n".join(data)), time.monotonic())
            name, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").removeprefix(" "))


def parse_body(body: bytes) -> list[Event]:
    return list(parse(body.splitlines(keepends=True)))


def open_stream(
    port: int,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    timeout: float = 30,
    path: str = "/chat",
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """POST ``path`` and return once the status and headers have arrived."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    connection.request(
        "POST",
        path,
        body=json.dumps(body),
        headers={"Content-Type": "application/json"} | (headers or {}),
    )
    return connection, connection.getresponse()


def events_of(response: http.client.HTTPResponse) -> Iterator[Event]:
    """The response's events, each yielded as soon as it has been read."""
    return parse(iter(response.readline, b""))
