"""The benchmark's results as markdown tables, with the issue's targets."""

from __future__ import annotations

from typing import Any


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    parts = [
        f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"Python {m['python']}; load average before {_load(m['load_average_before'])}"
        + (f", after {_load(m['load_average_after'])}" if "load_average_after" in m else "")
        + "."
    ]
    for name, render in (
        ("imports", _imports),
        ("cold_start", _cold_start),
        ("warm", _warm),
        ("storage", _storage),
        ("throughput", _throughput),
        ("streaming", _streaming),
        ("tracing", _tracing),
        ("context", _context),
    ):
        if name in results:
            parts.append(render(results[name]))
    return "\n\n".join(parts)


def _load(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _imports(data: dict[str, float]) -> str:
    rows = [[f"`{module}`", f"{seconds:.2f}"] for module, seconds in data.items()]
    return "**Import time alone** (s, fresh interpreter, median of 3)\n\n" + _table(
        ["module", "seconds"], rows
    )


def _cold_start(data: dict[str, Any]) -> str:
    floor = data["floor"]["total"]
    rows = []
    for name in ("floor", "service", "naive"):
        d = data[name]
        ratio = d["total"] / floor
        rows.append(
            [
                name,
                f"{d['listening']:.2f}",
                f"{d['first_reply'] * 1000:.0f}",
                f"{d['total']:.2f}",
                f"{min(d['samples']):.2f}-{max(d['samples']):.2f}",
                f"{ratio:.2f}x",
                "" if name != "service" else f"<= 1.15x: {_met(ratio <= 1.15)}",
            ]
        )
    return (
        f"**1. Cold start**: process start to first `POST /chat` 200, median of "
        f"{len(data['floor']['samples'])} interleaved runs\n\n"
        + _table(
            [
                "variant",
                "listening (s)",
                "first reply (ms)",
                "total (s)",
                "range (s)",
                "vs floor",
                "target",
            ],
            rows,
        )
    )


def _warm(data: dict[str, Any]) -> str:
    rows = [
        [
            name,
            data[name]["p50_ms"],
            data[name]["p99_ms"],
            data[name].get("overhead_p50_ms", ""),
            f"{data[name]['errors']}/{data[name]['requests']}",
        ]
        for name in ("floor", "service", "naive")
    ]
    return "**2. Warm turn with an instant model**, sequential requests over HTTP\n\n" + _table(
        ["variant", "p50 (ms)", "p99 (ms)", "p50 over floor (ms)", "errors"], rows
    )


def _storage(rows: list[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        target = ""
        if r["layout"] == "service" and r["history_kib"] < 512:
            target = _met(r["reads"] <= 2 and r["commits"] <= 2)
        body.append(
            [
                r["layout"],
                r["history_turns"],
                r["history_kib"],
                r["reads"],
                r["writes"],
                r["commits"],
                r["kib_written"],
                target,
            ]
        )
    return "**3. Firestore per turn**, counted at the gRPC layer\n\n" + _table(
        [
            "layout",
            "history (turns)",
            "history (KiB)",
            "doc reads",
            "doc writes",
            "commits",
            "KiB written",
            "<= 2 reads, 2 commits",
        ],
        body,
    )


def _throughput(data: dict[str, Any]) -> str:
    rows = [
        [
            level["concurrency"],
            level["throughput_rps"],
            level["ideal_rps"],
            f"{level['of_ideal'] * 100:.0f} %",
            level["errors"],
            level["p50_ms"],
            level["p99_ms"],
            f"{level['machine_cpu_busy'] * 100:.0f} %",
            " / ".join(str(ms) for ms in level["cpu_ms_per_turn"].values()),
        ]
        for level in data["levels"]
    ]
    top = data["levels"][-1]
    rss = data["peak_rss_mib"]
    return (
        f"**4. One instance, {data['model_seconds'] * 1000:.0f} ms model, "
        f"THREADS={data['threads']}** (target at 80: >= 80 % of ideal, no errors: "
        f"{_met(top['of_ideal'] >= 0.8 and top['errors'] == 0)})\n\n"
        + _table(
            [
                "concurrency",
                "turns/s",
                "ideal",
                "of ideal",
                "errors",
                "p50 (ms)",
                "p99 (ms)",
                "machine CPU busy",
                "CPU ms per turn: " + " / ".join(data["levels"][0]["cpu_ms_per_turn"]),
            ],
            rows,
        )
        + _two_workers_line(data.get("two_workers"))
        + f"\n\n**5. Peak memory at concurrency {top['concurrency']}**: worker "
        f"{rss['worker']:.0f} MiB, master {rss['master']:.0f} MiB (VmHWM; target < 300 MiB "
        f"for the worker: {_met(rss['worker'] < 300)})"
    )


def _two_workers_line(data: dict[str, Any] | None) -> str:
    if not data:
        return ""
    rss = ", ".join(f"{name} {mib:.0f}" for name, mib in data["peak_rss_mib"].items())
    return (
        f"\n\nThe same load at concurrency {data['concurrency']} on WORKERS=2 x THREADS=40 "
        f"(two Python processes): {data['throughput_rps']} turns/s, "
        f"{data['of_ideal'] * 100:.0f} % of ideal, {data['errors']} errors, p50 "
        f"{data['p50_ms']} ms, p99 {data['p99_ms']} ms; peak RSS MiB: {rss}."
    )


def _streaming(data: dict[str, Any]) -> str:
    return (
        f"**6. Streaming** ({data['samples']} samples): model's time to first token "
        f"{data['model_ttft_ms']} ms, service's time to first delta {data['service_ttfd_ms']} ms; "
        f"overhead p50 {data['overhead_p50_ms']} ms, p90 {data['overhead_p90_ms']} ms "
        f"(target < 20 ms: {_met(data['overhead_p50_ms'] < 20)}). Of it, the Firestore claim "
        f"that must precede the model call (a read and a conditional write): p50 "
        f"{data['claim_p50_ms']} ms, measured alone on the same emulator."
    )


def _tracing(data: dict[str, Any]) -> str:
    names = [name for name in data if isinstance(data[name], dict)]
    rows = [
        [
            name,
            data[name]["p50_ms"],
            data[name]["p99_ms"],
            data[name]["over_none_p50_ms"],
            f"{data[name]['ratio_p50']:.2f}x",
            f"{data[name]['errors']}/{data['requests']}",
        ]
        for name in names
    ]
    return (
        "**7. Tracing**: warm turns with one tool call (two model calls), servers side by"
        f" side, requests interleaved; {data['exports']} OTLP exports received\n\n"
        + _table(
            ["TRACE_EXPORT", "p50 (ms)", "p99 (ms)", "p50 over none (ms)", "p50 ratio", "errors"],
            rows,
        )
    )


def _context(data: dict[str, Any]) -> str:
    """Long conversations: the last turns of each length, then every turn, then the
    ratios (service over send-everything)."""
    header = [
        "turns",
        "side",
        "model calls",
        "tokens per call: mean / max",
        "input tokens per turn (summaries included)",
        "summary calls / tokens",
        "doc reads per turn: mean / max",
        "CPU ms per turn: mean / max",
    ]
    parts = [
        f"**8. Long conversations**: one conversation of {data['turns_run']} turns "
        f"({data['tool_turns']} with a tool call) held by both sides, turns interleaved; "
        f"service: `CONTEXT_MAX_TOKENS={data['budget_tokens']}` and a demo model with a "
        f"{data['budget_tokens']}-token window; send-everything: no keeper, no window "
        f"({data['seconds']:.0f} s)"
        + (f"; not reached in time: {data['not_reached']} turns" if data["not_reached"] else "")
    ]
    last = data["last_turns"]
    for part, title in (
        ("last", f"The last {last} turns of each length N (turns N-{last - 1} to N)"),
        ("overall", "All turns of each length N (turns 1 to N)"),
    ):
        rows = []
        for row in data["rows"]:
            s = row[part]
            rows.append(
                [
                    row["turns"],
                    row["side"],
                    f"{s['model_calls']}"
                    + (f" ({s['refused_calls']} refused)" if s["refused_calls"] else ""),
                    f"{s['tokens_per_call_mean']:.0f} / {s['tokens_per_call_max']}",
                    f"{s['input_tokens_per_turn']:.0f}",
                    f"{s['summary_calls']} / {s['summary_tokens']}",
                    f"{s['reads_per_turn_mean']:.2f} / {s['reads_per_turn_max']}",
                    f"{s['cpu_ms_per_turn_mean']:.1f} / {s['cpu_ms_per_turn_max']:.1f}",
                ]
            )
        parts.append(title + "\n\n" + _table(header, rows))
    ratio_rows = [
        [
            entry["turns"],
            *(
                _ratio(entry[part][key])
                for part in ("last", "overall")
                for key in (
                    "tokens_per_call_mean",
                    "input_tokens_per_turn",
                    "reads_per_turn_mean",
                    "cpu_ms_per_turn_mean",
                )
            ),
        ]
        for entry in data["ratios"]
    ]
    parts.append(
        "Service over send-everything (below 1: the service sends, reads or spends less)\n\n"
        + _table(
            [
                "turns",
                "last: tokens per call",
                "last: input per turn",
                "last: reads",
                "last: CPU",
                "all: tokens per call",
                "all: input per turn",
                "all: reads",
                "all: CPU",
            ],
            ratio_rows,
        )
    )
    return "\n\n".join(parts)


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"
