"""Each measurement of the benchmark, as a function returning plain data."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.cloud import firestore

from agent.base.settings import Settings
from agent.store.history import Claim, HistoryStore
from bench import context_cost
from bench.load import Client, closed_loop, median, percentile
from bench.servers import FLOOR, NAIVE, ROOT, SERVICE, FunctionServer, ModelProcess, OtlpSink
from bench.storage_cost import measure as storage_cost

SECTIONS = [
    "imports",
    "cold_start",
    "warm",
    "storage",
    "throughput",
    "streaming",
    "tracing",
    "context",
]
VARIANTS = {"service": SERVICE, "floor": FLOOR, "naive": NAIVE}
# What the service cannot do without; the floor imports exactly these.
LIBRARIES = ["functions_framework", "flask", "openai", "agents", "google.cloud.firestore"]


def run_all(
    env: dict[str, str],
    model: ModelProcess,
    runs: int,
    sections: list[str],
    helpers: dict[str, int],
) -> dict[str, Any]:
    """``helpers``: pids of the other processes whose CPU use is reported (emulator...)."""
    results: dict[str, Any] = {}
    steps: dict[str, Callable[[], Any]] = {
        "imports": lambda: imports(env),
        "cold_start": lambda: cold_start(env, model, runs),
        "warm": lambda: warm(env, model),
        "storage": lambda: storage(env),
        "throughput": lambda: throughput(env, model, helpers),
        "streaming": lambda: streaming(env, model),
        "tracing": lambda: tracing(env, model),
        "context": lambda: context(env),
    }
    for name in SECTIONS:
        if name in sections:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            started = time.monotonic()
            results[name] = steps[name]()
            print(f"[bench] {name}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    return results


def imports(env: dict[str, str], runs: int = 3) -> dict[str, float]:
    """Seconds to import each library alone in a fresh interpreter, and all of main.py."""
    code = "import time; t = time.perf_counter(); import {}; print(time.perf_counter() - t)"
    timings = {}
    for module in [*LIBRARIES, "main"]:
        samples = []
        for _ in range(runs):
            out = subprocess.run(
                [sys.executable, "-c", code.format(module)],
                cwd=ROOT,
                env=env | {"LOG_LEVEL": "WARNING"},
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            samples.append(float(out.strip().splitlines()[-1]))
        timings[module] = round(median(samples), 3)
    return timings


def cold_start(env: dict[str, str], model: ModelProcess, runs: int) -> dict[str, Any]:
    """Process start to the first 200 of ``POST /chat``, variants interleaved."""
    model.reset()
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for run in range(runs + 1):  # the first round only warms .pyc files and the emulator
        for name, function in VARIANTS.items():
            sample = _one_cold_start(function, env, {"message": "hello", "session_id": f"c{run}"})
            if run:
                samples[name].append(sample)
    summary: dict[str, Any] = {}
    for name, runs_of in samples.items():
        summary[name] = {
            key: round(median([s[key] for s in runs_of]), 3)
            for key in ("listening", "first_reply", "total")
        }
        summary[name]["samples"] = [round(s["total"], 3) for s in runs_of]
    for name in ("service", "naive"):
        summary[name]["ratio_to_floor"] = round(
            summary[name]["total"] / summary["floor"]["total"], 3
        )
    return summary


def _one_cold_start(
    function: tuple[str, str], env: dict[str, str], body: dict[str, Any]
) -> dict[str, float]:
    server = FunctionServer(function, env)
    try:
        server.wait_listening()
        listening = time.monotonic() - server.started
        sent = time.monotonic()
        status, reply = Client(server.port).post("/chat", body)
        if status != 200:
            raise RuntimeError(f"{function}: first request got {status} {reply}")
        done = time.monotonic()
        return {
            "listening": listening,
            "first_reply": done - sent,
            "total": done - server.started,
        }
    finally:
        server.stop()


def warm(env: dict[str, str], model: ModelProcess, requests: int = 300) -> dict[str, Any]:
    """Sequential turns with a model that answers at once: latency against the floor."""
    model.reset()
    results: dict[str, Any] = {}
    for name, function in VARIANTS.items():
        server = FunctionServer(function, env)
        try:
            server.wait_listening()
            client = Client(server.port)
            latencies, errors = [], 0
            for n in range(20 + requests):  # 20 to warm up
                started = time.monotonic()
                status, _ = client.post("/chat", {"message": f"m{n}", "session_id": f"w{n % 30}"})
                if n >= 20:
                    if status == 200:
                        latencies.append(time.monotonic() - started)
                    else:
                        errors += 1
            results[name] = {
                "p50_ms": round(percentile(latencies, 50) * 1000, 2),
                "p99_ms": round(percentile(latencies, 99) * 1000, 2),
                "errors": errors,
                "requests": requests,
            }
        finally:
            server.stop()
    floor = results["floor"]
    for name in ("service", "naive"):
        results[name]["overhead_p50_ms"] = round(results[name]["p50_ms"] - floor["p50_ms"], 2)
    return results


def storage(env: dict[str, str]) -> list[dict[str, Any]]:
    os.environ["FIRESTORE_EMULATOR_HOST"] = env["FIRESTORE_EMULATOR_HOST"]
    os.environ["GOOGLE_CLOUD_PROJECT"] = env["GOOGLE_CLOUD_PROJECT"]
    return storage_cost([1, 10, 100, 1000], Settings.from_env(env))


def context(env: dict[str, str]) -> dict[str, Any]:
    """Long conversations (``bench/context_cost.py``): it starts its own demo models,
    one with a context window and one without, and reads their request logs."""
    os.environ["FIRESTORE_EMULATOR_HOST"] = env["FIRESTORE_EMULATOR_HOST"]
    os.environ["GOOGLE_CLOUD_PROJECT"] = env["GOOGLE_CLOUD_PROJECT"]
    return context_cost.measure(env)


def throughput(
    env: dict[str, str],
    model: ModelProcess,
    helpers: dict[str, int],
    levels: tuple[int, ...] = (1, 10, 40, 80),
) -> dict[str, Any]:
    """One instance with THREADS=80 and a 500 ms model, closed-loop clients. CPU time
    per turn is reported for every process on the machine that takes part."""
    model.reset()
    server = FunctionServer(SERVICE, env | {"THREADS": "80"})
    results: dict[str, Any] = {"model_seconds": 0.5, "threads": 80, "levels": []}
    try:
        server.wait_listening()
        warm_up = closed_loop(server.port, 8, 3, lambda c, n: {"message": "warm up"})
        assert warm_up.errors == 0, warm_up.error_samples
        model.control(delay_seconds=0.5)
        for concurrency in levels:
            each = 20 if concurrency <= 10 else 12
            pids = {"service": server.worker_pid(), "load generator": os.getpid(), **helpers}
            cpu_before = _cpu_seconds()
            process_before = {name: _process_cpu(pid) for name, pid in pids.items()}
            load = closed_loop(server.port, concurrency, each, _turn_body(f"t{concurrency}"))
            cpu_busy = _cpu_seconds()
            busy = (cpu_busy[0] - cpu_before[0]) / max(cpu_busy[1] - cpu_before[1], 1e-9)
            per_turn = {
                name: round((_process_cpu(pid) - process_before[name]) / max(load.ok, 1) * 1000, 1)
                for name, pid in pids.items()
            }
            ideal = concurrency / 0.5
            results["levels"].append(
                {
                    "concurrency": concurrency,
                    "requests": load.ok + load.errors,
                    "throughput_rps": round(load.throughput, 1),
                    "ideal_rps": ideal,
                    "of_ideal": round(load.throughput / ideal, 3),
                    "errors": load.errors,
                    "error_samples": load.error_samples,
                    "p50_ms": round(percentile(load.latencies, 50) * 1000, 1),
                    "p99_ms": round(percentile(load.latencies, 99) * 1000, 1),
                    "machine_cpu_busy": round(busy, 3),
                    "cpu_ms_per_turn": per_turn,
                }
            )
        results["peak_rss_mib"] = server.peak_rss_mib()
    finally:
        model.reset()
        server.stop()
    results["two_workers"] = _two_workers(env, model)
    return results


def _two_workers(env: dict[str, str], model: ModelProcess, concurrency: int = 80) -> dict[str, Any]:
    """The same load on WORKERS=2 x THREADS=40: two processes, so two cores of Python."""
    server = FunctionServer(SERVICE, env | {"THREADS": "40", "WORKERS": "2"})
    try:
        server.wait_listening()
        closed_loop(server.port, 8, 3, lambda c, n: {"message": "warm up"})
        model.control(delay_seconds=0.5)
        load = closed_loop(server.port, concurrency, 12, _turn_body("w2"))
        return {
            "concurrency": concurrency,
            "throughput_rps": round(load.throughput, 1),
            "of_ideal": round(load.throughput / (concurrency / 0.5), 3),
            "errors": load.errors,
            "p50_ms": round(percentile(load.latencies, 50) * 1000, 1),
            "p99_ms": round(percentile(load.latencies, 99) * 1000, 1),
            "peak_rss_mib": server.peak_rss_mib(all_workers=True),
        }
    finally:
        model.reset()
        server.stop()


def _turn_body(prefix: str) -> Callable[[int, int], dict[str, Any]]:
    """Each client its own session, so no turn waits on another's claim."""
    return lambda client, n: {"message": f"turn {n}", "session_id": f"{prefix}-{client}"}


def _cpu_seconds() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def streaming(
    env: dict[str, str], model: ModelProcess, samples: int = 30, chunk_delay: float = 0.05
) -> dict[str, Any]:
    """Time to the first delta through the service, minus the model's own time to its
    first token, measured alternately on the same model."""
    model.reset()
    model.control(stream_chunk_delay_seconds=chunk_delay)
    server = FunctionServer(SERVICE, env)
    claim = _ClaimProbe(env)
    overheads, model_ttft, service_ttfd, claims = [], [], [], []
    try:
        server.wait_listening()
        _first_delta(server.port, "warm-up")
        for n in range(samples):
            direct = _model_first_token(model.port)
            through = _first_delta(server.port, f"s{n % 5}")
            model_ttft.append(direct)
            service_ttfd.append(through)
            overheads.append(through - direct)
            claims.append(claim.seconds())
    finally:
        model.reset()
        server.stop()
    return {
        "samples": samples,
        "model_ttft_ms": round(median(model_ttft) * 1000, 1),
        "service_ttfd_ms": round(median(service_ttfd) * 1000, 1),
        "overhead_p50_ms": round(median(overheads) * 1000, 1),
        "overhead_p90_ms": round(percentile(overheads, 90) * 1000, 1),
        "claim_p50_ms": round(median(claims) * 1000, 1),
    }


TRACE_VARIANTS = {
    "none": {"TRACE_EXPORT": "none"},
    "otlp, flush per request": {"TRACE_EXPORT": "otlp"},
    "otlp, background only": {"TRACE_EXPORT": "otlp", "TRACE_FLUSH_SECONDS": "0"},
}


def tracing(env: dict[str, str], model: ModelProcess, requests: int = 200) -> dict[str, Any]:
    """Warm turns with one tool call (two model calls, about 13 spans) with tracing off
    and exporting over OTLP/HTTP to a loopback receiver, with and without the flush at
    the end of each request; the servers run side by side, requests interleaved."""
    model.reset()
    sink = OtlpSink()
    servers = {
        name: FunctionServer(SERVICE, env | extra | {"TRACE_OTLP_ENDPOINT": sink.endpoint})
        for name, extra in TRACE_VARIANTS.items()
    }
    latencies: dict[str, list[float]] = {name: [] for name in servers}
    errors = dict.fromkeys(servers, 0)
    try:
        clients = {}
        for name, server in servers.items():
            server.wait_listening()
            clients[name] = Client(server.port)
        for n in range(20 + requests):  # 20 to warm up
            for name, client in clients.items():
                body = {"message": f"What is {n} + 1?", "session_id": f"t{n % 30}"}
                started = time.monotonic()
                status, _ = client.post("/chat", body)
                if n >= 20:
                    if status == 200:
                        latencies[name].append(time.monotonic() - started)
                    else:
                        errors[name] += 1
    finally:
        for server in servers.values():
            server.stop()
        sink.stop()
    results: dict[str, Any] = {"requests": requests, "exports": sink.requests}
    base = median(latencies["none"])
    for name, samples in latencies.items():
        results[name] = {
            "p50_ms": round(median(samples) * 1000, 2),
            "p99_ms": round(percentile(samples, 99) * 1000, 2),
            "over_none_p50_ms": round((median(samples) - base) * 1000, 2),
            "ratio_p50": round(median(samples) / base, 3),
            "errors": errors[name],
        }
    return results


class _ClaimProbe:
    """Times what a turn must do before it can call the model: claim the session
    (read it, then write the claim), on the same emulator."""

    def __init__(self, env: dict[str, str]) -> None:
        os.environ["FIRESTORE_EMULATOR_HOST"] = env["FIRESTORE_EMULATOR_HOST"]
        os.environ["GOOGLE_CLOUD_PROJECT"] = env["GOOGLE_CLOUD_PROJECT"]
        self._store = HistoryStore(firestore.Client(), ttl_seconds=3600, timeout_seconds=10)
        self._store.commit(self._claim(), [{"role": "user", "content": "hello there"}], _now())

    def _claim(self) -> Claim:
        return self._store.claim("claim-probe", _now(), _now() + dt.timedelta(seconds=30))

    def seconds(self) -> float:
        started = time.monotonic()
        claim = self._claim()
        elapsed = time.monotonic() - started
        self._store.release(claim)
        return elapsed


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _first_delta(port: int, session_id: str) -> float:
    """Seconds from sending a streamed ``POST /chat`` to its first ``delta`` event."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    started = time.monotonic()
    connection.request(
        "POST",
        "/chat",
        body=json.dumps({"message": "hello there", "session_id": session_id, "stream": True}),
        headers={"Content-Type": "application/json"},
    )
    response = connection.getresponse()
    first = None
    for line in iter(response.readline, b""):
        if first is None and line.startswith(b"event: delta"):
            first = time.monotonic() - started
    connection.close()
    if first is None:
        raise RuntimeError("the stream had no delta")
    return first


def _model_first_token(port: int) -> float:
    """Seconds from sending a streamed completion request to its first content chunk."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = {
        "model": "demo-model",
        "stream": True,
        "messages": [{"role": "user", "content": "hello there"}],
    }
    started = time.monotonic()
    connection.request(
        "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    first = None
    for line in iter(response.readline, b""):
        if first is None and line.startswith(b"data: {") and b'"content": "' in line:
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.monotonic() - started
    connection.close()
    if first is None:
        raise RuntimeError("the model sent no content")
    return first
