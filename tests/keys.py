"""API keys for the tests: one admin key that the test services are started with
(``LINEAGE_ADMIN_KEY``, as an operator would), and the header that carries a key."""

from __future__ import annotations

TEST_ADMIN_KEY = "lin_test-admin-key-0123456789abcdefghijkl"


def bearer(key: str) -> dict[str, str]:
    """The ``Authorization`` header of ``key``."""
    return {"Authorization": f"Bearer {key}"}


ADMIN_HEADERS = bearer(TEST_ADMIN_KEY)
