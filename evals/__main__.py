"""``python -m evals``: see evals/run.py. Exit 2 when it cannot run, never 1 (a failed gate)."""

from __future__ import annotations

try:
    from .run import main
except ImportError as exc:  # e.g. a Python without the project's dependencies
    print(f"eval: could not run: {exc} (make eval installs what it needs into .venv)")
    raise SystemExit(2) from None

raise SystemExit(main())
