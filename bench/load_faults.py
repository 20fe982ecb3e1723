"""Load and fault run against the local server: ``python -m bench.load_faults``.

Loopback only, bounded in count and time. It starts its own Firestore emulator, demo
model and functions-framework server (gunicorn), then runs two phases:

1. **load**: ``--sessions`` sessions x ``--turns`` turns at ``--concurrency``, no
   faults: every request must be 200.
2. **faults**: ``--fault-sessions`` more sessions at the same concurrency while the
   model fails (HTTP 500 on ``--model-failures`` calls), then hangs for a few
   seconds, then the Firestore emulator is stopped and restarted.

Clients behave as the API asks: each turn carries its own ``Idempotency-Key``, and a
409, 502, 503 or 504 is retried with the same key after ``Retry-After`` (or a short
backoff). Every response must carry a documented status within its time bound
(``FUNCTION_TIMEOUT_SECONDS``; 503 within a few ``FIRESTORE_TIMEOUT_SECONDS``).

Afterwards every session's history is read back and compared with what its client
was told: the user messages of all acknowledged turns, in order, none missing, none
twice. The emulator keeps data in memory only, so its restart erases everything; a
turn acknowledged with ``new_session: true`` after the restart legitimately starts
the history over, and the check continues from there. Such a reset anywhere else
counts as lost history. Exit status 0 only if every check holds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from local.demo_model import DemoModelServer
from local.emulators import FirestoreEmulator
from local.server import LiveServer

KEYS = {"alice": "load-alice-0123456789abcdef", "bob": "load-bob-0123456789abcdef"}
DOCUMENTED = {200, 409, 502, 503, 504}
SERVER_ENV = {
    "FUNCTION_TIMEOUT_SECONDS": "15",
    "DEADLINE_MARGIN_SECONDS": "1",
    "MODEL_TIMEOUT_SECONDS": "3",
    "MODEL_MAX_RETRIES": "1",
    "FIRESTORE_TIMEOUT_SECONDS": "2",
    "THREADS": "64",
    "LOG_LEVEL": "WARNING",
}


@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: dict[int, list[float]] = field(default_factory=dict)
    codes: Counter[str] = field(default_factory=Counter)
    late: list[str] = field(default_factory=list)
    undocumented: list[str] = field(default_factory=list)
    acknowledged: int = 0
    given_up: int = 0
    first_ok_after_restart: float | None = None

    def record(self, status: int, code: str, latency: float, started: float) -> None:
        with self.lock:
            self.latencies.setdefault(status, []).append(latency)
            self.codes[f"{status} {code}"] += 1
            after_restart = self.restart_at is not None and started >= self.restart_at
            if status == 200 and after_restart and self.first_ok_after_restart is None:
                self.first_ok_after_restart = time.monotonic()

    restart_at: float | None = None
    stopped_at: float | None = None


@dataclass
class SessionLog:
    session_id: str
    principal: str
    acks: list[tuple[str, float, bool]] = field(default_factory=list)
    """(message, when its acknowledged attempt started, new_session) per turn."""
    bad_resets: int = 0

    def expected(self, stopped_at: float | None) -> tuple[list[str], int]:
        """The user messages the store must hold, and how many acknowledged ones the
        emulator's restart erased (it keeps data in memory only)."""
        messages = [message for message, _, _ in self.acks]
        if stopped_at is None:
            return messages, 0
        # The first turn acknowledged after the outage began starts the history over.
        after = [i for i, (_, started, new) in enumerate(self.acks) if new and started > stopped_at]
        start = after[0] if after else len(self.acks)  # none after: everything erased
        return messages[start:], start


class Client:
    """One keep-alive connection per worker thread."""

    def __init__(self, port: int, timeout: float) -> None:
        self._port, self._timeout = port, timeout
        self._connection: http.client.HTTPConnection | None = None

    def call(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None = None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        for attempt in (1, 2):
            if self._connection is None:
                self._connection = http.client.HTTPConnection(
                    "127.0.0.1", self._port, timeout=self._timeout
                )
            try:
                self._connection.request(method, path, body=body, headers=headers)
                response = self._connection.getresponse()
                data = response.read()
                return response.status, json.loads(data) if data else {}, dict(response.headers)
            except (http.client.HTTPException, ConnectionError):
                self._connection.close()
                self._connection = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


class Run:
    def __init__(self, args: argparse.Namespace, server: LiveServer, stats: Stats) -> None:
        self.args = args
        self.server = server
        self.stats = stats
        self.deadline = time.monotonic() + args.max_seconds
        self.local = threading.local()
        self.done_turns = 0
        self.done_lock = threading.Lock()
        budget = float(SERVER_ENV["FUNCTION_TIMEOUT_SECONDS"])
        self.bound = {503: 3 * float(SERVER_ENV["FIRESTORE_TIMEOUT_SECONDS"]) + 1}
        self.default_bound = budget + 1

    def client(self) -> Client:
        if not hasattr(self.local, "client"):
            self.local.client = Client(self.server.port, timeout=self.default_bound + 10)
        client: Client = self.local.client
        return client

    def session(self, log: SessionLog) -> SessionLog:
        headers = {"Content-Type": "application/json", "X-API-Key": KEYS[log.principal]}
        for turn in range(self.args.turns):
            message = f"{log.session_id} turn {turn}"
            body = json.dumps({"message": message, "session_id": log.session_id}).encode()
            key = f"{log.session_id}-{turn}"
            for attempt in range(self.args.max_attempts):
                if time.monotonic() > self.deadline:
                    raise TimeoutError("the run exceeded --max-seconds")
                started = time.monotonic()
                status, answer, response_headers = self.client().call(
                    "POST", "/chat", headers | {"Idempotency-Key": key}, body
                )
                latency = time.monotonic() - started
                code = answer.get("error", {}).get("code", "ok")
                self.stats.record(status, code, latency, started)
                self._check(status, code, latency)
                if status == 200:
                    if answer["new_session"] and turn > 0:
                        stopped = self.stats.stopped_at
                        if stopped is None or started < stopped:
                            log.bad_resets += 1  # history lost, and not by the outage
                    log.acks.append((message, started, answer["new_session"]))
                    with self.stats.lock:
                        self.stats.acknowledged += 1
                    break
                if status not in DOCUMENTED:
                    break
                wait = float(response_headers.get("Retry-After", 0)) or 0.2 * 2 ** min(attempt, 4)
                time.sleep(min(wait, 3.0) * random.uniform(0.5, 1.0))
            else:
                with self.stats.lock:
                    self.stats.given_up += 1
            with self.done_lock:
                self.done_turns += 1
        return log

    def _check(self, status: int, code: str, latency: float) -> None:
        with self.stats.lock:
            if status not in DOCUMENTED:
                self.stats.undocumented.append(f"{status} {code}")
            if latency > self.bound.get(status, self.default_bound):
                self.stats.late.append(f"{status} {code} after {latency:.1f} s")

    def phase(self, prefix: str, count: int) -> list[SessionLog]:
        logs = [
            SessionLog(f"{prefix}-{n:04d}", "alice" if n % 2 == 0 else "bob") for n in range(count)
        ]
        with ThreadPoolExecutor(self.args.concurrency) as pool:
            return list(pool.map(self.session, logs))

    def verify(self, logs: list[SessionLog]) -> dict[str, int]:
        result: Counter[str] = Counter()
        client = Client(self.server.port, timeout=30)
        for log in logs:
            headers = {"X-API-Key": KEYS[log.principal]}
            status, body, _ = client.call("GET", f"/sessions/{log.session_id}", headers)
            stored = (
                [i["content"] for i in body["items"] if i.get("role") == "user"]
                if status == 200
                else []
            )
            roles = [i.get("role") for i in body.get("items", [])]
            expected, erased = log.expected(self.stats.stopped_at)
            result["sessions"] += 1
            result["bad_resets"] += log.bad_resets
            result["erased_by_emulator_restart"] += erased
            if stored == expected and roles == ["user", "assistant"] * len(stored):
                result["consistent"] += 1
                continue
            result["lost"] += len([m for m in expected if m not in stored])
            result["duplicated"] += len(stored) - len(set(stored))
            result["unexpected"] += len([m for m in stored if m not in expected])
            shared = [m for m in stored if m in expected]
            result["reordered"] += int(shared != [m for m in expected if m in shared])
        return dict(result)

    def turns_done(self) -> int:
        with self.done_lock:
            return self.done_turns


def faults(run: Run, model: DemoModelServer, emulator: FirestoreEmulator, total: int) -> None:
    """Injects the faults as the fault phase progresses; records when."""

    def wait_for(fraction: float) -> None:
        while run.turns_done() < fraction * total and time.monotonic() < run.deadline:
            time.sleep(0.05)

    wait_for(0.1)
    model.control(fail_status=500, fail_count=run.args.model_failures)
    print(f"[faults] model: HTTP 500 on the next {run.args.model_failures} calls", flush=True)
    wait_for(0.3)
    model.control(hang_seconds=30)
    print("[faults] model: hanging for 4 s", flush=True)
    time.sleep(4)
    model.control(hang_seconds=0)
    wait_for(0.5)
    port = emulator.port
    run.stats.stopped_at = time.monotonic()
    emulator.stop()
    print(f"[faults] Firestore emulator stopped for {run.args.outage_seconds} s", flush=True)
    time.sleep(run.args.outage_seconds)
    emulator.port = port
    emulator.start()
    run.stats.restart_at = time.monotonic()
    print("[faults] Firestore emulator restarted (empty: it keeps data in memory)", flush=True)


def summary(stats: Stats, seconds: float, verified: dict[str, int]) -> dict[str, Any]:
    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

    everything = [v for values in stats.latencies.values() for v in values]
    ok = stats.latencies.get(200, [])
    return {
        "seconds": round(seconds, 1),
        "requests": len(everything),
        "acknowledged_turns": stats.acknowledged,
        "turns_per_second": round(stats.acknowledged / seconds, 1),
        "statuses": dict(sorted(stats.codes.items())),
        "latency_ms_200": {
            "p50": pct(ok, 0.5),
            "p95": pct(ok, 0.95),
            "p99": pct(ok, 0.99),
            "max": pct(ok, 1.0),
            "mean": round(statistics.fmean(ok) * 1000, 1) if ok else None,
        },
        "max_latency_ms_by_status": {
            str(s): pct(v, 1.0) for s, v in sorted(stats.latencies.items())
        },
        "late": stats.late[:10],
        "undocumented": stats.undocumented[:10],
        "given_up_turns": stats.given_up,
        "history": verified,
    }


def passed(report: dict[str, Any], *, faults_phase: bool) -> bool:
    history = report["history"]
    ok = (
        not report["late"]
        and not report["undocumented"]
        and report["given_up_turns"] == 0
        and history["consistent"] == history["sessions"]
        and history.get("bad_resets", 0) == 0
    )
    if not faults_phase:
        ok = ok and set(report["statuses"]) == {"200 ok"}
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--fault-sessions", type=int, default=100)
    parser.add_argument("--model-failures", type=int, default=150)
    parser.add_argument("--outage-seconds", type=float, default=5.0)
    parser.add_argument("--model-delay", type=float, default=0.05, help="seconds per model call")
    parser.add_argument("--max-attempts", type=int, default=40, help="per turn")
    parser.add_argument("--max-seconds", type=float, default=900, help="whole run")
    parser.add_argument("--no-faults", action="store_true")
    args = parser.parse_args(argv)
    for name in ("sessions", "turns", "concurrency", "fault_sessions"):
        if not 1 <= getattr(args, name) <= 5000:
            parser.error(f"--{name.replace('_', '-')} must be 1..5000")

    emulator = FirestoreEmulator().start()
    model = DemoModelServer()
    model.start()
    env = (
        os.environ
        | SERVER_ENV
        | {
            "FIRESTORE_EMULATOR_HOST": emulator.host,
            "GOOGLE_CLOUD_PROJECT": "bench-load",
            "OPENAI_BASE_URL": model.base_url,
            "OPENAI_API_KEY": "not-needed",
            "AGENT_MODEL": "demo-model",
            "AUTH_MODE": "api_key",
            "AUTH_API_KEYS": ",".join(f"{name}:{key}" for name, key in KEYS.items()),
        }
    )
    env.pop("K_SERVICE", None)
    server = LiveServer(env)
    reports: dict[str, Any] = {}
    ok = True
    try:
        model.control(delay_seconds=args.model_delay)
        stats = Stats()
        run = Run(args, server, stats)
        started = time.monotonic()
        logs = run.phase("load", args.sessions)
        reports["load"] = summary(stats, time.monotonic() - started, run.verify(logs))
        ok = passed(reports["load"], faults_phase=False)
        _print("load", reports["load"], args)
        if not args.no_faults:
            stats = Stats()
            run = Run(args, server, stats)
            total = args.fault_sessions * args.turns
            injector = threading.Thread(
                target=faults, args=(run, model, emulator, total), daemon=True
            )
            started = time.monotonic()
            injector.start()
            logs = run.phase("fault", args.fault_sessions)
            injector.join(timeout=60)
            model.reset()
            report = summary(stats, time.monotonic() - started, run.verify(logs))
            if stats.first_ok_after_restart and stats.restart_at:
                report["recovered_seconds_after_restart"] = round(
                    stats.first_ok_after_restart - stats.restart_at, 2
                )
            reports["faults"] = report
            ok = ok and passed(report, faults_phase=True) and not injector.is_alive()
            _print("faults", report, args)
    finally:
        server_log = server.stop()
        model.stop()
        emulator.stop()
    tracebacks = server_log.count("Traceback")
    reports["server_tracebacks"] = tracebacks
    ok = ok and tracebacks == 0
    print(json.dumps(reports, indent=2))
    print("PASSED" if ok else "FAILED", flush=True)
    return 0 if ok else 1


def _print(name: str, report: dict[str, Any], args: argparse.Namespace) -> None:
    history = report["history"]
    print(
        f"[{name}] {history['sessions']} sessions, {report['acknowledged_turns']} turns"
        f" acknowledged in {report['seconds']} s ({report['turns_per_second']}/s) at"
        f" concurrency {args.concurrency}; 200 p50 {report['latency_ms_200']['p50']} ms,"
        f" p99 {report['latency_ms_200']['p99']} ms; consistent histories"
        f" {history['consistent']}/{history['sessions']}; statuses {report['statuses']}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
