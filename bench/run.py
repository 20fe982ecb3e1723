"""The benchmark: ``make bench`` (or ``.venv/bin/python -m bench.run``).

Measures, side by side in one run, on the Firestore emulator and the demo model:
cold start against a floor and a naive handler, warm overhead per turn, Firestore
documents per turn by history length and layout, throughput and errors of one
instance at several concurrencies, its peak memory, streaming overhead, and the latency
of tracing (TRACE_EXPORT none vs otlp to a loopback receiver), and long conversations
with and without the context budget (``bench/context_cost.py``). Prints
markdown tables and writes them and the JSON (``--out``, default
``bench/results.json`` and ``bench/results.md``). Not part of the test run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench import context_cost, measures, report
from bench.servers import ModelProcess
from local.emulators import FirestoreEmulator, firestore_emulator_missing

PROJECT = "bench"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="cold starts per variant")
    parser.add_argument("--out", type=Path, default=Path("bench/results.json"))
    parser.add_argument(
        "--only",
        nargs="*",
        choices=measures.SECTIONS,
        help="run only these sections (default: all)",
    )
    args = parser.parse_args(argv)
    reason = firestore_emulator_missing()
    if reason:
        print(f"cannot run the benchmark: {reason}", file=sys.stderr)
        return 2
    sections = args.only or measures.SECTIONS
    # The long conversations rewrite large documents a thousand times, and the emulator
    # keeps every version in its heap (bench/context_cost.py).
    heap = context_cost.EMULATOR_HEAP_MIB if "context" in sections else FirestoreEmulator.heap_mib
    emulator = FirestoreEmulator(heap_mib=heap).start()
    model = ModelProcess()
    env = dict(os.environ) | {
        "FIRESTORE_EMULATOR_HOST": emulator.host,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "OPENAI_BASE_URL": model.base_url,
        "AGENT_MODEL": "demo-model",
        "MODEL_MAX_RETRIES": "0",
        "AUTH_MODE": "none",  # the benchmark measures turns, not token checks
    }
    results: dict[str, Any] = {"machine": machine(), "command": "make bench"}
    try:
        assert emulator.process is not None
        helpers = {"firestore emulator": emulator.process.pid, "model": model.process.pid}
        results |= measures.run_all(env, model, args.runs, sections, helpers)
    finally:
        model.stop()
        emulator.stop()
    results["machine"]["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    tables = report.markdown(results)
    args.out.with_suffix(".md").write_text(tables + "\n")
    print(tables)
    print(f"\nWritten to {args.out} and {args.out.with_suffix('.md')}")
    return 0


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "load_average_before": os.getloadavg(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


if __name__ == "__main__":
    raise SystemExit(main())
