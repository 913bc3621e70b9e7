"""Adapter attribution on trained toy families: `python scripts/adapter_bench.py [--seeds 3]`.

Per family (GPT-2, MLP) and seed: a base trained on the zoo's root data, two models trained the
same way from other initialisations, a full fine-tune of the base, and a LoRA adapter of the base
trained on a downstream task (made with peft). Prints a markdown table of the adapter-alignment
scores and how often the base is ranked first / named, with and without its fine-tune among the
candidates. The numbers are in docs/benchmarks.md ("LoRA adapters").
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from app.bench.adapters import train_lora
from app.bench.data import task_data
from app.bench.zoo import CONFIGS
from app.engine.architectures import build_network, open_model
from app.engine.decision import rank_candidates
from app.engine.model_files import save_model
from app.engine.training import initial_state, train

ROOT_STEPS = {"gpt2": 300, "mlp": 300}
LORA_STEPS = (30, 120)


def one(family: str, seed: int, work: Path) -> list[dict]:
    config = CONFIGS[family]
    network = build_network(config)
    x, y = task_data(network, None)
    states = {
        name: train(
            network,
            initial_state(config, 10 * seed + k),
            x,
            y,
            steps=ROOT_STEPS[family],
            lr=3e-3,
            seed=10 * seed + k,
        )
        for k, name in enumerate(("base", "stranger-a", "stranger-b"))
    }
    xs, ys = task_data(network, 5 + seed)
    states["sibling"] = train(network, states["base"], xs, ys, steps=100, lr=1e-3, seed=seed)
    models = {
        name: open_model(save_model(work / f"{family}-{seed}-{name}", state, config), name)
        for name, state in states.items()
    }
    xt, yt = task_data(network, 3 + seed)
    rows = []
    for steps in LORA_STEPS:
        folder = train_lora(
            network,
            states["base"],
            xt,
            yt,
            work / f"{family}-{seed}-lora{steps}",
            steps=steps,
            base_name="base",
            seed=seed,
        )
        child = open_model(folder, "adapter")
        started = time.perf_counter()
        without = rank_candidates(child, [models[n] for n in ("base", "stranger-a", "stranger-b")])
        seconds = (time.perf_counter() - started) / 3
        strangers = rank_candidates(child, [models["stranger-a"], models["stranger-b"]])
        full = rank_candidates(child, list(models.values()))
        scores = {c.parent: c.score for c in full.candidates}
        rows.append(
            {
                "family": family,
                "steps": steps,
                "scores": scores,
                "named": without.decision.parent == "base",
                "none_without_base": strangers.decision.parent is None,
                "top_with_sibling": full.candidates[0].parent,
                "confidence_with_sibling": full.decision.confidence,
                "seconds": seconds,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("gpt2", "mlp"):
            for seed in range(args.seeds):
                rows += one(family, seed, Path(tmp))
    print(
        "| family | LoRA steps | base | fine-tune of base | strangers (max) | base named "
        '(vs strangers) | "none" without the base | base first with its fine-tune | '
        "ms per candidate |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for family in ("gpt2", "mlp"):
        for steps in LORA_STEPS:
            group = [r for r in rows if r["family"] == family and r["steps"] == steps]

            def mean(key, group=group):
                values = [r["scores"][key] for r in group]
                return f"{statistics.mean(values):.2f} ± {statistics.pstdev(values):.2f}"

            stranger = [max(r["scores"]["stranger-a"], r["scores"]["stranger-b"]) for r in group]
            print(
                f"| {family} | {steps} | {mean('base')} | {mean('sibling')} | "
                f"{statistics.mean(stranger):.2f} ± {statistics.pstdev(stranger):.2f} | "
                f"{sum(r['named'] for r in group)}/{len(group)} | "
                f"{sum(r['none_without_base'] for r in group)}/{len(group)} | "
                f"{sum(r['top_with_sibling'] == 'base' for r in group)}/{len(group)} | "
                f"{1000 * statistics.mean(r['seconds'] for r in group):.0f} |"
            )


if __name__ == "__main__":
    main()
