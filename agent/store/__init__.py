"""Firestore: the schema, bounded calls, conversation histories, the SDK's Session
adapter and Idempotency-Key records.

Imports ``agent.base`` only. ``schema.py`` is the one place a collection or field
name is spelled.
"""
