"""A loopback TCP proxy that breaks one connection when it sees given bytes.

It sits between a server under test and an emulator (Firestore over gRPC, Cloud Storage
over HTTP) and forwards bytes both ways, until a client->server chunk contains a marker
armed with ``arm``. Then, on that connection only, it does what the rule says:

* ``reset``: forwards the request (so the write lands), drops the server's reply, and once
  the server has answered resets the client's connection (RST): a reply lost after the
  commit.
* ``hold_reply``: forwards the request and holds every server->client byte for
  ``seconds``, then releases them (or, with ``then="cut"``, closes the connection): a reply
  that arrives after the caller's timeout.
* ``hold_request``: holds that request and everything after it for ``seconds``, then
  forwards it (or cuts): a write that reaches the server late, or never.
* ``cut``: closes both sides at once; the request never reaches the server.

gRPC multiplexes every call of a channel on one HTTP/2 connection and compresses headers,
so markers are bytes the test controls in a request BODY (a unique word in a user
message appears raw in the Commit request's protobuf, and in a result upload; a
document's path in a read or a write). The end of the previous read is kept, so a marker
split across reads is still seen. Each armed rule fires once, after ``skip`` matches.

A rule can also be aimed at a write instead of at bytes: ``arm_write(n, ...)`` fires on
the n-th gRPC ``Commit`` request (every Firestore write is one) that passes the proxy
after it is armed (``grpc_writes.py`` tells them apart), and ``writes`` lists every
Commit request seen, in order: a scenario run once through the proxy enumerates its
writes, and a fault matrix aims at each in turn.
Test code only.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from tests.support.grpc_writes import RequestParser, is_commit

Action = Literal["reset", "hold_reply", "hold_request", "cut"]
_WINDOW = 4096


@dataclass
class Rule:
    marker: bytes
    action: Action
    seconds: float = 0.0
    then: Literal["release", "cut"] = "release"
    skip: int = 0
    """Matches to let through before the one that fires (a session's name is in both
    the read and the write of a delete)."""
    fired: threading.Event = field(default_factory=threading.Event)
    fired_at: float = 0.0
    """``time.monotonic()`` when the marker was seen."""


class FaultProxy:
    """Forwards 127.0.0.1:<port> to ``target`` (``host:port``); ``arm`` a rule to break
    the connection that carries a marker. Use as a context manager, or ``close()``."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self._connections: list[_Connection] = []
        self.accepted = 0
        self._closed = False
        self.writes: list[bytes] = []
        """Every Commit request seen, in order (across connections)."""
        self._write_rules: dict[int, Rule] = {}
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        """``host:port``, for FIRESTORE_EMULATOR_HOST."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://host:port``, for STORAGE_EMULATOR_HOST."""
        return f"http://{self.host}"

    def arm(
        self,
        marker: bytes | str,
        action: Action,
        seconds: float = 0.0,
        then: Literal["release", "cut"] = "release",
        skip: int = 0,
    ) -> Rule:
        raw = marker.encode() if isinstance(marker, str) else marker
        rule = Rule(raw, action, seconds, then, skip)
        with self._lock:
            self._rules.append(rule)
        return rule

    def arm_write(
        self,
        index: int,
        action: Action,
        seconds: float = 0.0,
        then: Literal["release", "cut"] = "release",
    ) -> Rule:
        """Fire on the ``index``-th (0-based) Commit request from now on."""
        rule = Rule(b"", action, seconds, then)
        with self._lock:
            self._write_rules[len(self.writes) + index] = rule
        return rule

    def disarm_writes(self) -> None:
        """Forget write rules that have not fired."""
        with self._lock:
            self._write_rules.clear()

    def _write_seen(self, message: bytes) -> Rule | None:
        with self._lock:
            rule = self._write_rules.pop(len(self.writes), None)
            self.writes.append(message)
        if rule is not None:
            rule.fired_at = time.monotonic()
        return rule

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _take_rule(self, before: bytes, data: bytes) -> Rule | None:
        """The rule whose marker ends in ``data`` (it may start in ``before``, the bytes
        already forwarded, but is never counted twice)."""
        with self._lock:
            for rule in self._rules:
                head = before[max(0, len(before) - len(rule.marker) + 1) :]
                if rule.marker not in head + data:
                    continue
                if rule.skip > 0:
                    rule.skip -= 1
                    continue
                self._rules.remove(rule)
                rule.fired_at = time.monotonic()
                return rule
        return None

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            connection = _Connection(self, client, server)
            with self._lock:
                self._connections.append(connection)
                self.accepted += 1
            connection.start()


class _Connection:
    def __init__(self, proxy: FaultProxy, client: socket.socket, server: socket.socket) -> None:
        self._proxy = proxy
        self._client = client
        self._server = server
        self._lock = threading.Lock()
        self._held_requests: list[bytes] | None = None
        self._held_replies: list[bytes] | None = None
        self._drop_replies = False
        self._replied = threading.Event()
        self._closed = False

    def start(self) -> None:
        threading.Thread(target=self._upstream, daemon=True).start()
        threading.Thread(target=self._downstream, daemon=True).start()

    def close(self, reset: bool = False) -> None:
        with self._lock:
            self._closed = True
        if reset:  # SO_LINGER 0: close() sends RST instead of FIN
            with contextlib.suppress(OSError):
                self._client.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
        for sock in (self._client, self._server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _upstream(self) -> None:
        window = b""
        parser = RequestParser()
        while True:
            try:
                data = self._client.recv(65536)
            except OSError:
                break
            if not data:
                break
            rule = self._proxy._take_rule(window, data)
            for message in parser.feed(data):
                if is_commit(message):
                    rule = self._proxy._write_seen(message) or rule
            window = (window + data)[-_WINDOW:]
            if rule is not None:
                self._apply(rule, data)
            elif not self._to_server(data):
                break
        with self._lock:
            if self._held_requests is not None:
                # The client gave up, but what it sent is on its way: it still arrives
                # (a write that lands after its caller stopped waiting).
                return
        self.close()

    def _downstream(self) -> None:
        while True:
            try:
                data = self._server.recv(65536)
            except OSError:
                break
            if not data:
                break
            with self._lock:
                if self._drop_replies:
                    self._replied.set()
                    continue
                if self._held_replies is not None:
                    self._held_replies.append(data)
                    continue
            try:
                self._client.sendall(data)
            except OSError:
                break
        self.close()

    def _to_server(self, data: bytes) -> bool:
        with self._lock:
            if self._held_requests is not None:
                self._held_requests.append(data)
                return True
        try:
            self._server.sendall(data)
        except OSError:
            return False
        return True

    def _apply(self, rule: Rule, data: bytes) -> None:
        rule.fired.set()
        if rule.action == "cut":
            self.close(reset=True)
            return
        if rule.action == "reset":
            with self._lock:
                self._drop_replies = True
            self._to_server(data)
            threading.Thread(target=self._reset_after_reply, daemon=True).start()
            return
        if rule.action == "hold_reply":
            with self._lock:
                self._held_replies = []
            self._to_server(data)
            threading.Thread(target=self._release_replies, args=(rule,), daemon=True).start()
            return
        with self._lock:
            self._held_requests = [data]
        threading.Thread(target=self._release_requests, args=(rule,), daemon=True).start()

    def _reset_after_reply(self) -> None:
        self._replied.wait(5)
        time.sleep(0.2)  # the rest of the reply, if it came in pieces, is dropped too
        self.close(reset=True)

    def _release_replies(self, rule: Rule) -> None:
        time.sleep(rule.seconds)
        if rule.then == "cut":
            self.close(reset=True)
            return
        with self._lock:
            held, self._held_replies = self._held_replies or [], None
            with contextlib.suppress(OSError):
                for chunk in held:
                    self._client.sendall(chunk)

    def _release_requests(self, rule: Rule) -> None:
        time.sleep(rule.seconds)
        if rule.then == "cut":
            self.close(reset=True)
            return
        with self._lock:
            held, self._held_requests = self._held_requests or [], None
            with contextlib.suppress(OSError):
                for chunk in held:
                    self._server.sendall(chunk)
