"""What choosing a shortlist costs as the catalog grows: ``registry.candidates`` (the SQL
filter, streaming the sketches, the distances, the nearest K, loading their records) against
catalogs of synthetic sketches of a BERT-base layout (199 comparable tensors, and an output
part), on SQLite.

    python scripts/shortlist_scale.py [--sizes 10 100 1000 10000] [--k 16]

Rows are inserted directly with random sketches (registering 10,000 real models would take
hours and measure registration, not the shortlist); the timings are medians of 5 calls.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from app.core.db import make_engine, migrate, session_factory, transaction
from app.engine.sketch import OUTPUT_DIM, SKETCH_DIM, layout_of
from app.registry import service as registry
from app.registry.models import Model

TENSORS = [[f"encoder.layer.{i // 16}.t{i % 16}", 768] for i in range(192)] + [
    [f"embeddings.t{i}", 768] for i in range(7)
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--k", type=int, default=16)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"| catalog | shortlist of {args.k} | no shortlist (rows only) |")
    print("|---|---|---|")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{Path(tmp) / 'l.db'}"
            migrate(url)
            engine = make_engine(url)
            factory = session_factory(engine)
            with transaction(factory) as session:
                for i in range(size + 1):
                    rows = rng.standard_normal((len(TENSORS), 2 * SKETCH_DIM)).astype("<f4")
                    outputs = rng.standard_normal(OUTPUT_DIM).astype("<f4")
                    session.add(
                        Model(
                            name=f"m{i}",
                            sha256=f"{i:064x}",
                            architecture="bert",
                            num_bytes=1,
                            num_parameters=1,
                            storage_path="/nowhere",
                            is_candidate=i > 0,
                            sketch=rows.tobytes(),
                            sketch_tensors=TENSORS,
                            sketch_layout=layout_of(TENSORS),
                            sketch_outputs=outputs.tobytes(),
                            sketch_outputs_key="0" * 32,
                        )
                    )
            timings = {}
            for k in (args.k, 0):
                runs = []
                for _ in range(5):
                    with factory() as session:
                        child = registry.get_by_name(session, "m0")
                        started = time.perf_counter()
                        found = registry.candidates(session, child, k)
                        runs.append(time.perf_counter() - started)
                timings[k] = statistics.median(runs)
                assert len(found.models) == (min(args.k, size) if k else size)
            engine.dispose()
        print(f"| {size} | {1000 * timings[args.k]:.1f} ms | {1000 * timings[0]:.1f} ms |")


if __name__ == "__main__":
    main()
