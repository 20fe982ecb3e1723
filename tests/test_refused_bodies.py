"""A request answered before its body is used (401, 403, 404, 405, 413, 415) does not
have its body read: functions-framework's outer app used to read every body whole after
the response, with no size or time limit (issue 10 item 4). Real sockets against the
real server (functions-framework under gunicorn): a Content-Length of 20 MB with a body
that trickles in gets its error within a second, and the connection ends after it."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from local.server import LiveServer
from tests.support.constants import ALICE_KEY, API_KEYS, PROJECT, UNREACHABLE_MODEL_URL

ANNOUNCED = 20 * 1000 * 1000


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    env = dict(os.environ) | {
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "FIRESTORE_EMULATOR_HOST": "127.0.0.1:9",  # never called by these requests
        "OPENAI_BASE_URL": UNREACHABLE_MODEL_URL,
        "AUTH_MODE": "api_key",
        "AUTH_API_KEYS": API_KEYS,
        "MAX_REQUEST_BYTES": "65536",
    }
    env.pop("K_SERVICE", None)
    live = LiveServer(env)
    yield live
    live.stop()


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection ended before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(lines[0].split()[1]), body


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("POST", "/chat", {"Content-Type": "application/json"}, 401),
        ("POST", "/chat", {"Content-Type": "application/json", "X-API-Key": ALICE_KEY}, 413),
        ("POST", "/chat", {"Content-Type": "text/plain", "X-API-Key": ALICE_KEY}, 415),
        ("POST", "/no-such-route", {"X-API-Key": ALICE_KEY}, 404),
        ("PUT", "/chat", {"X-API-Key": ALICE_KEY}, 405),
        ("POST", "/robots.txt", {}, 404),
    ],
)
def test_a_trickled_20_mb_body_gets_its_error_within_a_second(
    server: LiveServer, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    stop = threading.Event()
    sent = [0]

    def trickle() -> None:
        piece = b"x" * 1024
        try:
            while not stop.is_set() and sent[0] < ANNOUNCED:
                sock.sendall(piece)
                sent[0] += len(piece)
                time.sleep(0.01)
        except OSError:
            pass  # the server ended the connection

    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {ANNOUNCED}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    try:
        started = time.monotonic()
        sock.sendall(head.encode())
        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        got, body = read_response(sock)
        elapsed = time.monotonic() - started
        assert got == status, body
        assert b'"error"' in body
        assert elapsed < 1.0, f"the {status} took {elapsed:.2f} s"
        # Then the server ends the connection: no waiting for the rest of 20 MB.
        sock.settimeout(2.0)
        try:
            rest = sock.recv(65536)
        except ConnectionResetError:
            rest = b""
        assert rest == b"", rest[:200]
        assert sent[0] < 2 * 1024 * 1024
    finally:
        stop.set()
        sock.close()


def test_requests_without_a_body_keep_their_connection(server: LiveServer) -> None:
    """The guard touches requests that sent a body they were refused: others keep
    HTTP keep-alive."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for _ in range(2):
            connection.request("GET", "/healthz", headers={"X-API-Key": ALICE_KEY})
            response = connection.getresponse()
            assert response.status == 200
            response.read()
    finally:
        connection.close()
