"""The history store: its interface (``backend.py``), and two backends behind it, which
share their data types (``history_types.py``) and the plan of what a turn's commit
writes (``commit_plan.py``).

Firestore (deployed): the schema, bounded calls, conversation histories, the SDK's
Session adapter and Idempotency-Key records. SQLite (``HISTORY_BACKEND=sqlite``, a
developer's machine without the Firestore emulator): the database, histories and
Idempotency-Key records, with the same guarantees.

Imports ``agent.base`` only. ``schema.py`` is the one place a collection, table or
field name is spelled.
"""
