"""The base every layer stands on: settings, the error shape, logs, the clock.

Imports nothing from the rest of ``agent``.
"""
