"""How often the shortlist keeps the true parent: recall@K of model sketches on model zoos.

    python scripts/shortlist_recall.py ZOO [ZOO ...] [--k 1 4 16] [--no-outputs]

Every model of the given zoos (one family; `lineage zoo build`) is put in one pooled catalog.
For every query of every split whose parent is a candidate (orphans have none), the child's
sketch is compared with every other model of the pool, the child itself excepted, its own
descendants included (a catalog may well hold them): recall@K is the share of queries whose
true parent is among the K the shortlist keeps (the nearest by each part in turn).
``--no-outputs`` drops every sketch's output part (weights and spectra alone, as sketches
stored before output parts existed). Prints one markdown row per split, and the pool's size.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from app.engine.architectures import open_model
from app.engine.sketch import model_sketch, shortlist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("zoos", type=Path, nargs="+")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--no-outputs", action="store_true", help="Weights and spectra alone.")
    args = parser.parse_args()
    sketches, manifests = {}, {}
    missing = [z for z in args.zoos if not (z / "manifest.json").is_file()]
    if missing:
        parser.error(f"{missing[0]} is not a zoo (no manifest.json); build one with lineage zoo")
    for zoo in args.zoos:
        manifest = json.loads((zoo / "manifest.json").read_text())
        manifests[zoo] = manifest
        for name in manifest["models"]:
            sketch = model_sketch(open_model(zoo / name, name), outputs=not args.no_outputs)
            sketches[(zoo, name)] = sketch
    pool = list(sketches)
    hits: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    counts: dict[str, int] = defaultdict(int)
    for zoo, manifest in manifests.items():
        for split, queries in manifest["splits"].items():
            for query in queries:
                if query["truth"] is None:
                    continue
                child = (zoo, query["child"])
                others = [key for key in pool if key != child]
                ranked = shortlist(sketches[child], [sketches[k] for k in others], max(args.k))
                found = [others[i] for i in ranked]
                counts[split] += 1
                for k in args.k:
                    hits[split][k] += (zoo, query["truth"]) in found[:k]
    family = {m["family"] for m in manifests.values()}
    print(
        f"family {', '.join(sorted(family))}: pool of {len(pool)} models from {len(manifests)} zoos"
    )
    print("| split | queries | " + " | ".join(f"recall@{k}" for k in args.k) + " |")
    print("|---|---|" + "---|" * len(args.k))
    for split in sorted(counts):
        cells = " | ".join(f"{100 * hits[split][k] / counts[split]:.0f} %" for k in args.k)
        print(f"| {split} | {counts[split]} | {cells} |")
    total = sum(counts.values())
    cells = " | ".join(f"{100 * sum(h[k] for h in hits.values()) / total:.1f} %" for k in args.k)
    print(f"| all | {total} | {cells} |")


if __name__ == "__main__":
    main()
