"""The service's HTTP API as the eval runner calls it: JSON in, JSON out, the caller's
credential on every request, and the tool trajectory of each turn read back from the
session's stored history (``GET /sessions/<id>``), which is what the service promises
to keep."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

from .checks import Call, Observed


class ApiError(RuntimeError):
    """The service could not be reached at all (not an HTTP error status)."""


def auth_headers(environ: dict[str, str]) -> dict[str, str]:
    """The credential for ``EVAL_URL``: ``EVAL_API_KEY`` as ``X-API-Key``, and an identity
    token (``EVAL_ID_TOKEN``, else ``gcloud auth print-identity-token`` when gcloud is on
    PATH and no key is given) as ``Authorization: Bearer``. Both may be needed: the key for
    the service, the token for Google's front end of a private function."""
    headers = {}
    key = environ.get("EVAL_API_KEY")
    if key:
        headers["X-API-Key"] = key
    token = environ.get("EVAL_ID_TOKEN")
    if not token and not key and shutil.which("gcloud"):
        done = subprocess.run(
            ["gcloud", "auth", "print-identity-token"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise ApiError(f"gcloud auth print-identity-token failed: {done.stderr.strip()[-300:]}")
        token = done.stdout.strip()
    if token:
        # In X-Serverless-Authorization Google's front end checks it and Authorization
        # stays free for the service's own scheme; a bearer token serves both ways.
        headers["Authorization"] = f"Bearer {token}"
    return headers


class Api:
    def __init__(self, base_url: str, headers: dict[str, str], timeout: float = 330.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = headers
        self.timeout = timeout

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any], float]:
        """(status, decoded JSON body or {}, latency in ms)."""
        request = urllib.request.Request(
            self.base_url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers=({"Content-Type": "application/json"} if body is not None else {})
            | self.headers,
        )
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw, status = response.read(), response.status
        except urllib.error.HTTPError as error:
            raw, status = error.read(), error.code
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise ApiError(f"{method} {self.base_url}{path}: {exc}") from None
        latency = (time.perf_counter() - started) * 1000
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError:
            decoded = {"error": {"code": "not_json", "message": raw[:200].decode(errors="replace")}}
        return status, decoded if isinstance(decoded, dict) else {}, latency


class Conversation:
    """One session, turn by turn, with the items each turn added to its history."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.session_id: str | None = None
        self.pause: dict[str, Any] | None = None
        self._items_seen = 0

    def send(self, message: str) -> Observed:
        body: dict[str, Any] = {"message": message}
        if self.session_id:
            body["session_id"] = self.session_id
        return self._turn("/chat", body)

    def decide(self, approve: bool, reason: str | None) -> Observed:
        assert self.session_id is not None and self.pause is not None, "decide after a pause"
        decision: dict[str, Any] = {"approve": approve} | ({"reason": reason} if reason else {})
        decisions = [{"call_id": p["call_id"]} | decision for p in self.pause["pending_approvals"]]
        body = {"pause_id": self.pause["pause_id"], "decisions": decisions}
        return self._turn(f"/sessions/{self.session_id}/approvals", body)

    def _turn(self, path: str, body: dict[str, Any]) -> Observed:
        status, answer, latency = self.api.call("POST", path, body)
        seen = Observed(status, answer, latency)
        if status == 200:
            self.session_id = str(answer.get("session_id") or self.session_id)
            self.pause = answer if answer.get("status") == "approval_required" else None
            seen.calls = self._new_calls()
        return seen

    def _new_calls(self) -> list[Call]:
        """The calls this turn stored, and the earlier calls it stored an output for (a
        resumed pause): the turn's trajectory, in history order."""
        status, session, _ = self.api.call("GET", f"/sessions/{self.session_id}")
        items = session.get("items") if status == 200 else None
        if not isinstance(items, list):
            return []
        first_new, self._items_seen = self._items_seen, len(items)
        outputs = {
            i.get("call_id"): str(i.get("output"))
            for i in items[first_new:]
            if isinstance(i, dict) and i.get("type") == "function_call_output"
        }
        calls = []
        for index, item in enumerate(items):
            if not isinstance(item, dict) or item.get("type") != "function_call":
                continue
            if index >= first_new or item.get("call_id") in outputs:
                arguments = item.get("arguments")
                try:
                    parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
                except ValueError:
                    parsed = arguments
                calls.append(Call(str(item.get("name")), parsed, outputs.get(item.get("call_id"))))
        return calls

    def close(self) -> None:
        """Delete the session: evals leave nothing behind in staging."""
        if self.session_id:
            # Best effort: a session left behind expires by TTL.
            with contextlib.suppress(ApiError):
                self.api.call("DELETE", f"/sessions/{self.session_id}")
