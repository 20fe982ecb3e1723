"""``make eval``: run every case over the HTTP API and decide the gate.

    python -m evals [--url URL] [--case NAME ...] [--k N] [--junit PATH] [--report PATH]

Exit status: 0 the gate passed; 1 it failed (a critical case failed, or the pass rate is
under ``EVAL_MIN_PASS_RATE``); 2 it could not run (a bad case file, a stack that did not
start, a service that cannot be reached).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from local.demo_model import DemoModelServer

from .cases import CASES_DIR, Case, CaseError, load_cases
from .checks import check_turn
from .client import Api, ApiError, Conversation, auth_headers
from .judge import Judge
from .report import CaseResult, Outcome, RunResult, table, write_reports

DEFAULT_MIN_PASS_RATE = 0.8
REPORT_DIR = Path(".local") / "eval"


def run_case(api: Api, case: Case, judge: Judge | None) -> RunResult:
    """One run of a case in a new session; the session is deleted afterwards."""
    result = RunResult()
    conversation = Conversation(api)
    transcript: list[tuple[str, str]] = []
    try:
        for number, turn in enumerate(case.turns, 1):
            if turn.message is not None:
                transcript.append(("user", turn.message))
                seen = conversation.send(turn.message)
            elif conversation.pause is None:
                result.failures.append(f"turn {number}: no pending approvals to decide (no pause)")
                break
            else:
                decide = turn.decide or {}
                transcript.append(("person deciding approvals", f"approve={decide.get('approve')}"))
                seen = conversation.decide(bool(decide.get("approve")), decide.get("reason"))
            transcript.append(("agent", seen.reply or seen.status))
            result.latency_ms += seen.latency_ms
            result.tokens += int(seen.usage.get("total_tokens") or 0)
            cost = seen.usage.get("cost_usd")
            if isinstance(cost, int | float):
                result.cost_usd = (result.cost_usd or 0.0) + cost
            failures = check_turn(turn.expect, seen)
            rubric = turn.expect.get("rubric")
            if rubric and judge is not None and not failures:
                verdict = judge.grade(rubric, transcript)
                failures += [verdict] if verdict else []
            result.failures += [f"turn {number}: {failure}" for failure in failures]
            if seen.status_code != 200:
                break  # the conversation cannot go on from an error
    finally:
        conversation.close()
    return result


def run_all(
    api: Api, cases: list[Case], judge: Judge | None, demo: DemoModelServer | None
) -> list[CaseResult]:
    results = []
    for case in cases:
        result = CaseResult(case)
        if case.needs_demo_model and demo is None:
            result.skipped = (
                "steers the demo model (demo_controls): runs only with make eval's demo model"
            )
        else:
            for _ in range(case.k):
                with _controls(demo, case):
                    result.runs.append(run_case(api, case, judge))
        print(f"  {result.verdict} {case.name} {result.score}", file=sys.stderr, flush=True)
        results.append(result)
    return results


@contextmanager
def _controls(demo: DemoModelServer | None, case: Case) -> Iterator[None]:
    """The case's demo-model controls for its runs (cases run one at a time)."""
    if demo is None or not case.demo_controls:
        yield
        return
    demo.control(**case.demo_controls)
    try:
        yield
    finally:
        demo.reset()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evals", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("EVAL_URL"),
        help="the service (default: EVAL_URL, else the local stack)",
    )
    parser.add_argument("--cases", type=Path, default=CASES_DIR, help="directory of *.json cases")
    parser.add_argument(
        "--case", action="append", default=[], help="run only this case (repeatable)"
    )
    parser.add_argument(
        "--k",
        type=int,
        default=int(os.environ.get("EVAL_K") or 1),
        help="runs per case without its own k (default: EVAL_K, else 1)",
    )
    parser.add_argument(
        "--min-pass-rate",
        type=float,
        default=float(os.environ.get("EVAL_MIN_PASS_RATE") or DEFAULT_MIN_PASS_RATE),
    )
    report_dir = Path(os.environ.get("EVAL_REPORT_DIR") or REPORT_DIR)
    parser.add_argument("--junit", type=Path, default=report_dir / "junit.xml")
    parser.add_argument("--report", type=Path, default=report_dir / "report.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not 0 <= args.min_pass_rate <= 1:
        print(
            f"eval: EVAL_MIN_PASS_RATE={args.min_pass_rate} must be between 0 and 1",
            file=sys.stderr,
        )
        return 2
    try:
        cases = load_cases(args.cases, default_k=args.k)
    except CaseError as exc:
        print(f"eval: {exc}", file=sys.stderr)
        return 2
    unknown = set(args.case) - {c.name for c in cases}
    if unknown:
        print(f"eval: no case named {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    cases = [c for c in cases if not args.case or c.name in args.case]
    environ = dict(os.environ)
    judge = Judge.from_env(environ)
    try:
        if args.url:
            target = (
                f"{args.url} ({'rubrics by ' + judge.model if judge else 'rubrics not graded'})"
            )
            api = Api(args.url, auth_headers(environ))
            outcome = Outcome(run_all(api, cases, judge, None), args.min_pass_rate, target)
        else:
            outcome = _run_local(cases, judge, environ, args.min_pass_rate)
    except (ApiError, RuntimeError, TimeoutError) as exc:
        print(f"eval: could not run: {exc}", file=sys.stderr)
        return 2
    print(table(outcome))
    write_reports(outcome, args.junit, args.report)
    print(f"reports: {args.junit} {args.report}")
    return 0 if outcome.gate_passed else 1


def _run_local(
    cases: list[Case], judge: Judge | None, environ: dict[str, str], rate: float
) -> Outcome:
    from .stack import LocalStack

    with LocalStack(environ) as stack:
        for note in stack.notes:
            print(f"eval: {note}", file=sys.stderr)
        print(f"eval: local stack on {stack.url} with {stack.model}", file=sys.stderr)
        results = run_all(Api(stack.url, {}), cases, judge, stack.demo)
        return Outcome(results, rate, f"the local stack with {stack.model}")
