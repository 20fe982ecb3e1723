"""The base every layer stands on: settings, the error shape, logs, the clock, and the
tracing facade every layer calls (``tracing.py``; ``otel.py`` behind it).

Imports nothing from the rest of ``agent``.
"""
