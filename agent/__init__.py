"""An OpenAI Agents SDK agent as a Cloud Functions (gen2) HTTP service.

Packages by layer; imports point one way only (``tests/test_layers.py`` checks it)::

    api -> service -> {auth, turn} -> {store, results, runtime} -> base
"""
