"""Celery workers of the lineage service.

Empty until the service issue: the engine (``app.engine``) is complete without it, and the CLI
calls the engine directly.
"""
