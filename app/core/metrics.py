"""The service's Prometheus counters, shared by the API's middleware and the domains' endpoints.

Metrics live in a ``CollectorRegistry`` of their own per app (not prometheus_client's global
one), so several apps in one process, as in the tests, count separately and never clash.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter


@dataclass(frozen=True)
class Metrics:
    """The service's counters, registered in ``registry``."""

    registry: CollectorRegistry
    requests: Counter
    jobs_created: Counter
    models_registered: Counter

    @classmethod
    def create(cls) -> Metrics:
        """Fresh counters in a fresh registry."""
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter(
                "lineage_http_requests",
                "HTTP requests answered, by route template, method and status.",
                ["endpoint", "method", "status"],
                registry=registry,
            ),
            jobs_created=Counter(
                "lineage_jobs_created", "Detection jobs created.", registry=registry
            ),
            models_registered=Counter(
                "lineage_models_registered",
                "Models newly added to the catalog, by role (parent or detected child).",
                ["role"],
                registry=registry,
            ),
        )
