"""The processes that run detection jobs: the Celery ``lineage.detect`` task run by ``lineage
worker`` (one process per GPU), the embedded mode's in-process thread, and the dispatchers that
hand committed jobs to either (``worker.dispatch``)."""
