"""Time the family-tree page for a family of about 200 models (server side: queries + layout +
HTML), on a throwaway SQLite database.

    python scripts/bench_tree.py [--models 200] [--repeat 7]

The family: one root, 4 children, each with 4 children, ... (breadth-first) until the count is
reached, plus merges (every 10th model gets a second parent). The page is requested for the
root (every other model is a descendant) and for a model in the middle, at depth 8 and width
64, through the ASGI app in-process, and the median wall time of each is printed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from app.api.app import create_app
from app.core.config import Settings
from app.core.db import make_engine, migrate, session_factory, transaction
from app.lineage.repository import LineageRepository
from app.registry.models import Model
from worker.dispatch import dispatcher_for


def build_family(url: str, count: int) -> list[str]:
    """Write the module docstring's family of ``count`` models to the (migrated) database at
    ``url``; their names, root first, breadth-first."""
    engine = make_engine(url)
    factory = session_factory(engine)
    names = [f"bench/m{i:04d}" for i in range(count)]
    with transaction(factory) as session:
        rows = [
            Model(
                name=n,
                sha256=f"{i:064x}",
                architecture="lineage-mlp",
                num_bytes=1,
                num_parameters=1,
                storage_path="/nowhere",
                is_candidate=True,
            )
            for i, n in enumerate(names)
        ]
        session.add_all(rows)
        session.flush()
        repo = LineageRepository(session)
        for i in range(1, count):
            parent = (i - 1) // 4
            repo.add_edge(
                rows[parent].id, rows[i].id, score=0.9, method="auto", scores={"weight-l2": -1.0}
            )
            if i % 10 == 0 and parent > 0:
                repo.add_edge(
                    rows[parent - 1].id, rows[i].id, score=0.6, method="auto", declared=True
                )
    engine.dispose()
    return names


def main() -> None:
    """Build the family on a throwaway database and print the page's timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="lineage-tree-"))
    url = f"sqlite:///{folder / 'tree.db'}"
    migrate(url)
    names = build_family(url, args.models)
    settings = Settings(database_url=url, storage_dir=folder / "storage", redis_url=None)
    with TestClient(create_app(settings, dispatcher_for(settings))) as client:
        for label, name in (
            ("root (all descendants)", names[0]),
            ("middle", names[len(names) // 2]),
        ):
            path = f"/lineage/{name}?depth=8&width=64"
            response = client.get(path, headers={"Accept": "text/html"})
            assert response.status_code == 200 and "<svg" in response.text, response.text[:300]
            times = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                client.get(path, headers={"Accept": "text/html"})
                times.append(time.perf_counter() - started)
            print(
                f"{label:<24} {len(response.text) / 1024:7.0f} KiB  median "
                f"{1000 * statistics.median(times):7.1f} ms  (min {1000 * min(times):.1f} ms, "
                f"{args.repeat} runs, {args.models} models)"
            )


if __name__ == "__main__":
    main()
