"""The HTTP layer: the Flask app and its routes, request parsing, response bodies,
Server-Sent Events, CORS.

May import every layer below it; nothing imports it.
"""
