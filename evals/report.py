"""The gate's outputs: a table on stdout, JUnit XML for CI, and a Markdown report."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from .cases import Case


@dataclass
class RunResult:
    """One of a case's k runs: why it failed (empty: passed), and what it measured."""

    failures: list[str] = field(default_factory=list)
    latency_ms: float = 0.0
    tokens: int = 0
    cost_usd: float | None = None


@dataclass
class CaseResult:
    case: Case
    runs: list[RunResult] = field(default_factory=list)
    skipped: str | None = None

    @property
    def passes(self) -> int:
        return sum(not run.failures for run in self.runs)

    @property
    def passed(self) -> bool:
        return self.skipped is None and self.passes >= self.case.min_passes

    @property
    def score(self) -> str:
        return "skipped" if self.skipped else f"{self.passes}/{len(self.runs)}"

    @property
    def verdict(self) -> str:
        return "SKIP" if self.skipped else ("PASS" if self.passed else "FAIL")

    def spread(self, values: list[float], unit: str) -> str:
        if not values:
            return "-"
        low, high = min(values), max(values)
        if len(values) == 1 or low == high:
            return f"{low:.0f}{unit}"
        return f"{low:.0f}-{high:.0f}{unit} (median {statistics.median(values):.0f})"

    @property
    def latency(self) -> str:
        return self.spread([r.latency_ms for r in self.runs], " ms")

    @property
    def tokens(self) -> str:
        return self.spread([float(r.tokens) for r in self.runs], "")

    @property
    def why(self) -> str:
        """The first failure of each distinct kind across the runs, with how often."""
        if self.skipped:
            return self.skipped
        counts: dict[str, int] = {}
        for run in self.runs:
            for failure in run.failures:
                counts[failure] = counts.get(failure, 0) + 1
        return "; ".join(
            f"{text} ({n}/{len(self.runs)} runs)" if len(self.runs) > 1 else text
            for text, n in counts.items()
        )


@dataclass
class Outcome:
    results: list[CaseResult]
    min_pass_rate: float
    target: str

    @property
    def ran(self) -> list[CaseResult]:
        return [r for r in self.results if not r.skipped]

    @property
    def pass_rate(self) -> float:
        return sum(r.passed for r in self.ran) / len(self.ran) if self.ran else 0.0

    @property
    def critical_failures(self) -> list[CaseResult]:
        return [r for r in self.ran if r.case.critical and not r.passed]

    @property
    def gate_passed(self) -> bool:
        return (
            bool(self.ran) and not self.critical_failures and self.pass_rate >= self.min_pass_rate
        )

    def verdict_line(self) -> str:
        rate = f"pass rate {self.pass_rate:.0%} (minimum {self.min_pass_rate:.0%})"
        if self.gate_passed:
            return f"eval gate PASSED: {rate}"
        reasons = [f"critical case {r.case.name} failed" for r in self.critical_failures]
        if not self.ran:
            reasons.append("no case ran")
        elif self.pass_rate < self.min_pass_rate:
            reasons.append(f"{rate} is under the minimum")
        return "eval gate FAILED: " + "; ".join(reasons)


def table(outcome: Outcome) -> str:
    rows = [("case", "crit", "result", "score", "latency", "tokens")]
    rows += [
        (r.case.name, "yes" if r.case.critical else "", r.verdict, r.score, r.latency, r.tokens)
        for r in outcome.results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    failed = [r for r in outcome.results if r.verdict == "FAIL"]
    lines += ["", *(f"FAIL {r.case.name}: {r.why}" for r in failed)]
    return "\n".join([*lines, outcome.verdict_line()])


def junit_xml(outcome: Outcome) -> bytes:
    suite = ElementTree.Element(
        "testsuite",
        name="evals",
        tests=str(len(outcome.results)),
        failures=str(sum(r.verdict == "FAIL" for r in outcome.results)),
        skipped=str(sum(r.verdict == "SKIP" for r in outcome.results)),
        time=f"{sum(run.latency_ms for r in outcome.results for run in r.runs) / 1000:.3f}",
    )
    for result in outcome.results:
        seconds = sum(run.latency_ms for run in result.runs) / 1000
        case = ElementTree.SubElement(
            suite, "testcase", classname="evals", name=result.case.name, time=f"{seconds:.3f}"
        )
        if result.skipped:
            ElementTree.SubElement(case, "skipped", message=result.skipped)
        elif not result.passed:
            failure = ElementTree.SubElement(case, "failure", message=result.why[:1000])
            failure.text = "\n".join(
                f"run {n}: {f}" for n, run in enumerate(result.runs, 1) for f in run.failures
            )
    data: bytes = ElementTree.tostring(suite, encoding="utf-8", xml_declaration=True)
    return data


def markdown(outcome: Outcome) -> str:
    lines = [
        "# Eval report",
        "",
        f"Target: {outcome.target}. **{outcome.verdict_line()}**",
        "",
        "| case | critical | result | score | latency | tokens |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in outcome.results:
        crit = "yes" if r.case.critical else ""
        lines.append(
            f"| {r.case.name} | {crit} | {r.verdict} | {r.score} | {r.latency} | {r.tokens} |"
        )
    failed = [r for r in outcome.results if r.verdict != "PASS"]
    if failed:
        lines += ["", "## Failed and skipped", ""]
        lines += [f"- **{r.case.name}** ({r.verdict}): {_md(r.why)}" for r in failed]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def write_reports(outcome: Outcome, junit: Path, report: Path) -> None:
    for path in (junit, report):
        path.parent.mkdir(parents=True, exist_ok=True)
    junit.write_bytes(junit_xml(outcome))
    report.write_text(markdown(outcome), encoding="utf-8")
