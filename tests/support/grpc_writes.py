"""Which bytes a Firestore client sends are writes: gRPC ``Commit`` requests, told apart
on the wire, so that a fault can be aimed at "the n-th write" of a scenario.

Every write of the Python Firestore client (``create``, ``set``, ``update``,
``delete``, a batch) is one ``Commit`` RPC. gRPC sends each call as an HTTP/2 stream
whose DATA frames carry length-prefixed protobuf messages; the method name is in the
HPACK-compressed headers, so the request body is classified instead:
``CommitRequest`` is ``database`` (field 1, the database name itself) then ``writes``
(field 2, a ``Write`` message), while ``BatchGetDocumentsRequest`` has the same two
tags but field 2 is a document name (``projects/...``), and ``RunQuery`` and
``ListDocuments`` name a parent under ``/documents``. Test code only.
"""

from __future__ import annotations

import re
import struct

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA = 0x0
_PADDED = 0x8
_DOCUMENT = re.compile(rb"databases/\(default\)/documents/([\x21-\x7e]+)")


class RequestParser:
    """Fed a connection's client->server bytes in order; returns each complete gRPC
    request message as it completes."""

    def __init__(self) -> None:
        self._buffer = b""
        self._preface = False
        self._streams: dict[int, bytes] = {}

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        if not self._preface:
            if len(self._buffer) < len(_PREFACE):
                return []
            if not self._buffer.startswith(_PREFACE):  # not HTTP/2: nothing to parse
                self._buffer = b""
                return []
            self._buffer, self._preface = self._buffer[len(_PREFACE) :], True
        messages: list[bytes] = []
        while len(self._buffer) >= 9:
            length = int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < 9 + length:
                break
            kind, flags = self._buffer[3], self._buffer[4]
            stream = struct.unpack(">I", self._buffer[5:9])[0] & 0x7FFFFFFF
            payload = self._buffer[9 : 9 + length]
            self._buffer = self._buffer[9 + length :]
            if kind != _DATA:
                continue
            if flags & _PADDED and payload:
                payload = payload[1 : len(payload) - payload[0]]
            body = self._streams.get(stream, b"") + payload
            while len(body) >= 5:
                size = struct.unpack(">I", body[1:5])[0]
                if len(body) < 5 + size:
                    break
                messages.append(body[5 : 5 + size])
                body = body[5 + size :]
            self._streams[stream] = body
        return messages


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while at < len(data):
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7
    raise ValueError("truncated varint")


def is_commit(message: bytes) -> bool:
    """Whether a request message is a ``CommitRequest`` with at least one write."""
    try:
        if not message or message[0] != 0x0A:
            return False
        size, at = _varint(message, 1)
        database = message[at : at + size]
        at += size
        if not database.endswith(b"/databases/(default)") or at >= len(message):
            return False
        if message[at] != 0x12:
            return False
        size, at = _varint(message, at + 1)
        return size > 0 and message[at : at + 1] not in (b"p", b"")
    except ValueError:
        return False


def documents_of(message: bytes) -> list[str]:
    """The document paths a request names, in order (for a write's label)."""
    return [m.decode() for m in _DOCUMENT.findall(message)]


def label(message: bytes) -> str:
    """What a write touches, by collection group: ``agent_sessions+agent_idempotency``."""
    groups: list[str] = []
    for path in documents_of(message):
        parts = path.split("/")
        group = parts[-2] if len(parts) >= 2 else path
        if group not in groups:
            groups.append(group)
    return "+".join(groups) or "?"
