"""``lineage demo``: build a tiny model zoo on this CPU, detect every child's parent, print a table.

The zoo: a root network trained on the digits; five parents fine-tuned from it on relabelled
digits (different tasks); two children per parent (a short and a long fine-tune); a child whose
hidden units were permuted (same function, scrambled weights). The fifth parent is left out of
the candidate set, so its children are orphans: the right answer for them is "no parent".
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from app.bench.zoo import CONFIGS
from app.engine.architectures import build_network, open_model
from app.engine.decision import rank_candidates
from app.engine.methods import AUTO, METHODS, MethodKind, method_names
from app.engine.model_files import save_model
from app.engine.training import digits_task, initial_state, permute_hidden_units, train

DEMO_CONFIGS = {family: CONFIGS[family] for family in ("mlp", "cnn")}
NUM_PARENTS = 5
HELD_OUT = f"parent-{NUM_PARENTS - 1}"


@dataclass
class DemoRow:
    child: str
    truth: str | None
    predicted: str | None
    confidence: float

    @property
    def correct(self) -> bool:
        return self.truth == self.predicted


def demo_methods() -> list[str]:
    """Every method that ranks the demo's children: all but those for LoRA adapter children."""
    return [m for m in method_names() if METHODS[m].kind is not MethodKind.ADAPTER]


def build_demo_zoo(out: Path, family: str = "cnn", seed: int = 0) -> dict:
    """Train the demo zoo into ``out``; return its manifest (also written as manifest.json)."""
    config = DEMO_CONFIGS[family]
    network = build_network(config)
    root = train(
        network,
        initial_state(config, seed),
        *digits_task(network, None),
        steps=300,
        lr=1e-2,
        seed=seed,
    )
    models: dict[str, dict] = {}
    parents = {}
    for i in range(NUM_PARENTS):
        name = f"parent-{i}"
        parents[name] = train(
            network, root, *digits_task(network, i), steps=200, lr=3e-3, seed=seed + 10 + i
        )
        save_model(out / name, parents[name], config)
        models[name] = {"parent": None, "role": "parent"}
    for i, (name, state) in enumerate(parents.items()):
        for j, (lr, steps) in enumerate([(1e-3, 100), (3e-3, 300)]):
            child = f"child-{i}{j}"
            task = 20 + 3 * i + j
            child_state = train(
                network,
                state,
                *digits_task(network, task),
                steps=steps,
                lr=lr,
                seed=seed + 100 + 10 * i + j,
            )
            save_model(out / child, child_state, config)
            models[child] = {"parent": name, "role": "child", "lr": lr, "steps": steps}
            if j == 0 and i == 0:
                permuted = permute_hidden_units(network, child_state, seed + 7)
                save_model(out / "child-00-permuted", permuted, config)
                models["child-00-permuted"] = {"parent": name, "role": "permuted child"}
    manifest = {"family": family, "config": config, "held_out": HELD_OUT, "models": models}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def run_demo(
    out: Path, family: str = "cnn", methods: list[str] | None = None
) -> tuple[list[DemoRow], dict[str, list[bool]]]:
    """Build the zoo and detect every child among the parents that are not held out.

    Returns the ``auto`` decisions, and for each name in ``methods`` whether its top-ranked
    candidate was the true parent, for each child that has one among the candidates.
    """
    manifest = build_demo_zoo(out, family)
    candidates = [
        open_model(out / name, name)
        for name, entry in manifest["models"].items()
        if entry["role"] == "parent" and name != HELD_OUT
    ]
    rows = []
    top1: dict[str, list[bool]] = {m: [] for m in methods or []}
    for name, entry in manifest["models"].items():
        if entry["role"] == "parent":
            continue
        child = open_model(out / name, name)
        ranking = rank_candidates(child, candidates, AUTO)
        truth = entry["parent"] if entry["parent"] != HELD_OUT else None
        rows.append(DemoRow(name, truth, ranking.decision.parent, ranking.decision.confidence))
        if truth is None:
            continue
        for method in top1:
            # auto's ranking is the one just made; the other methods rank anew.
            ranked = ranking if method == AUTO else rank_candidates(child, candidates, method)
            top1[method].append(ranked.candidates[0].parent == truth)
    return rows, top1


def format_rows(rows: list[DemoRow]) -> str:
    """A plain-text table of the demo's detections."""
    lines = [f"{'child':<20} {'true parent':<12} {'detected':<12} {'confidence':>10}  ok"]
    for row in rows:
        lines.append(
            f"{row.child:<20} {row.truth or 'none':<12} {row.predicted or 'none':<12} "
            f"{row.confidence:>10.3f}  {'yes' if row.correct else 'NO'}"
        )
    correct = sum(r.correct for r in rows)
    lines.append(f"{correct}/{len(rows)} correct")
    return "\n".join(lines)


def format_top1(top1: dict[str, list[bool]]) -> str:
    """Top-1 accuracy of each method on the children whose parent is a candidate."""
    lines = [f"{'method':<16} top-1 (children with a parent among the candidates)"]
    for method, hits in top1.items():
        lines.append(f"{method:<16} {sum(hits)}/{len(hits)}")
    return "\n".join(lines)


def demo(out: Path, family: str = "cnn", methods: list[str] | None = None) -> str:
    """Run the demo and return the printed report (with per-method top-1 if ``methods``)."""
    started = time.perf_counter()
    rows, top1 = run_demo(out, family, methods)
    elapsed = time.perf_counter() - started
    report = format_rows(rows)
    if top1:
        report += "\n\n" + format_top1(top1)
    return f"{report}\nzoo in {out}, built and detected in {elapsed:.1f} s"
