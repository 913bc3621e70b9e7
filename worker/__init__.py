"""Celery workers: the ``lineage.detect`` task, run by ``lineage worker`` (one process per GPU)."""
