"""The demo model in a process of its own, reporting how large each request it got was.

Why a process of its own: a benchmark that measures the service's CPU time with
``time.process_time()`` must not count the model's work (parsing and checking every
request body, which grows with the history) as the service's. Why not
``bench.servers.ModelProcess``: the size of each request is needed, and the demo model
keeps its request log in memory.

Protocol: started with ``--window N`` (the context window; 0 for none), it prints one
JSON line ``{"base_url": ...}`` when listening. Each line then read on stdin asks for
the requests received since the previous one; the answer is one JSON line, a list of
``[prompt_tokens, is_summary, refused]`` per request, oldest first (``prompt_tokens`` as
``local.demo_model.prompt_tokens`` counts them, tool definitions included; ``refused``:
past the window, answered 400 ``context_length_exceeded``). The log is
then cleared, so a long send-everything run does not hold every body in memory. EOF on
stdin stops it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from local.demo_model import SUMMARIZE_INSTRUCTION, DemoModelServer, prompt_tokens


def sizes(requests: list[dict[str, Any]], window: int | None) -> list[tuple[int, bool, bool]]:
    """``(prompt_tokens, is_summary, refused)`` of each request body."""
    counted = [(prompt_tokens(r["messages"], r.get("tools")), _is_summary(r)) for r in requests]
    # The demo model's own rule: a prompt past the window is refused.
    return [(n, summary, window is not None and n > window) for n, summary in counted]


def _is_summary(request: dict[str, Any]) -> bool:
    first = request["messages"][0]
    content = first.get("content")
    return (
        first.get("role") == "system"
        and isinstance(content, str)
        and content.startswith(SUMMARIZE_INSTRUCTION)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=int, default=0, help="context window; 0: none")
    args = parser.parse_args(argv)
    server = DemoModelServer()
    server.context_tokens = args.window or None
    server.start()
    print(json.dumps({"base_url": server.base_url}), flush=True)
    try:
        for _ in sys.stdin:
            # The caller asks between turns, when no request is in flight: nothing
            # arrives between the snapshot and the reset.
            received = server.requests
            server.reset()
            print(json.dumps(sizes(received, server.context_tokens)), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
