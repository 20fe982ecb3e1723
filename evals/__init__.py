"""The eval gate: cases as data (``evals/cases/*.json``), run over the service's HTTP API.

``make eval`` (``python -m evals``) runs every case against the local stack (the demo
model unless ``OPENAI_BASE_URL`` and friends name another) or against ``EVAL_URL``, prints
a table, writes JUnit XML and a Markdown report, and exits non-zero when a critical case
fails or the pass rate is under ``EVAL_MIN_PASS_RATE``. It is a client of the API only: it
imports nothing from ``agent/`` (docs/testing.md, "The eval gate").
"""
