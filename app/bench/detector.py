"""Training the Lineage Detector on model zoos, and measuring it on seen and unseen parents.

Every query of every split of a zoo (child, candidate set, true parent or none for orphans) is
one example. Two held-out protocols are reported:

- **child split** (the paper's): a seeded half of the children is held out; their parents were
  the answers of training examples, so test parents are *seen*.
- **parent split**: whole zoos are held out (the last zoo given), so every test parent, and every
  other model of the test queries, comes from an initialisation never seen in training. With a
  single zoo there is nothing to hold out this way and only the child split is reported.

The checkpoint is then trained on all examples of all zoos given.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch

from app.bench.evaluate import model_opener
from app.bench.zoo import CONFIGS, MANIFEST, read_manifest
from app.engine.detector import (
    DetectorConfig,
    DetectorExample,
    LineageDetector,
    save_checkpoint,
)
from app.engine.detector_inputs import LAYERS, SCORE_METHODS, query_example
from app.engine.detector_training import predict, train_detector
from app.engine.errors import InvalidArgument
from app.engine.methods import PairContext
from app.engine.probes import DEFAULT_NUM_PROBES

EPOCHS = {"ours": 20, "paper": 20}
LEARNING_RATE = 3e-3


def zoo_examples(
    zoo: Path,
    *,
    with_scores: bool,
    device: torch.device | str = "cpu",
    num_probes: int = DEFAULT_NUM_PROBES,
) -> list[dict]:
    """Every query of the zoo's splits as ``{zoo, split, child, truth, example}``."""
    manifest = read_manifest(zoo)
    model = model_opener(zoo)
    out = []
    for split, queries in manifest["splits"].items():
        for query in queries:
            child = model(query["child"])
            contexts = [
                PairContext(model(c), child, device, num_probes) for c in query["candidates"]
            ]
            truth = query["truth"]
            target = query["candidates"].index(truth) if truth is not None else len(contexts)
            out.append(
                {
                    "zoo": str(zoo),
                    "split": split,
                    "child": query["child"],
                    "truth": truth,
                    "example": query_example(contexts, target, with_scores),
                }
            )
    return out


def measure(model: LineageDetector, items: list[dict]) -> dict:
    """Top-1 over queries with a parent (argmax over candidates, the paper's metric), accuracy
    with "none" as an answer, and the precision and recall of the no-parent token."""
    predictions = predict(model, [i["example"] for i in items])
    top1, exact, tp, fp, fn = [], [], 0, 0, 0
    for item, (answer, probs) in zip(items, predictions, strict=True):
        example: DetectorExample = item["example"]
        k = example.num_candidates
        none_answer = answer == k
        if item["truth"] is None:
            tp += none_answer
            fn += not none_answer
            exact.append(none_answer)
        else:
            best = max(range(k), key=lambda i: probs[i])
            top1.append(best == example.target)
            fp += none_answer
            exact.append(answer == example.target)
    return {
        "queries": len(items),
        "top1": sum(top1) / len(top1) if top1 else None,
        "accuracy": sum(exact) / len(exact) if exact else None,
        "none_precision": tp / (tp + fp) if tp + fp else None,
        "none_recall": tp / (tp + fn) if tp + fn else None,
    }


def _fit(items: list[dict], config: DetectorConfig, seed: int, epochs: int) -> LineageDetector:
    model, _ = train_detector(
        [i["example"] for i in items],
        config,
        epochs=epochs,
        lr=LEARNING_RATE,
        seed=seed,
    )
    return model


def _digest(zoo: Path) -> str:
    return hashlib.sha256((zoo / MANIFEST).read_bytes()).hexdigest()[:16]


def train_on_zoos(
    zoos: list[Path],
    out: Path,
    *,
    variant: str = "ours",
    seed: int = 0,
    device: torch.device | str = "cpu",
    num_probes: int = DEFAULT_NUM_PROBES,
    evaluate: bool = True,
    epochs: int | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Train a detector on ``zoos`` (one architecture), write the checkpoint, return its record."""
    if not zoos:
        raise InvalidArgument("give at least one zoo folder")
    manifests = [read_manifest(z) for z in zoos]
    families = {m["family"] for m in manifests}
    if len(families) > 1:
        raise InvalidArgument(f"zoos of one family per detector, got {', '.join(sorted(families))}")
    started = time.perf_counter()
    epochs = epochs or EPOCHS[variant]
    with_scores = variant == "ours"
    config = DetectorConfig(variant=variant, n_scores=len(SCORE_METHODS) if with_scores else 0)
    items = []
    for zoo in zoos:
        items += zoo_examples(zoo, with_scores=with_scores, device=device, num_probes=num_probes)
        log(f"{zoo}: {len(items)} examples so far ({time.perf_counter() - started:.0f} s)")
    evaluation = {}
    if evaluate:
        children = sorted({(i["zoo"], i["child"]) for i in items})
        random.Random(seed).shuffle(children)
        held = set(children[: len(children) // 2])
        train = [i for i in items if (i["zoo"], i["child"]) not in held]
        test = [i for i in items if (i["zoo"], i["child"]) in held]
        evaluation["child split (seen parents)"] = measure(_fit(train, config, seed, epochs), test)
        if len(zoos) > 1:
            last = str(zoos[-1])
            train = [i for i in items if i["zoo"] != last]
            test = [i for i in items if i["zoo"] == last]
            evaluation["parent split (unseen parents)"] = measure(
                _fit(train, config, seed, epochs), test
            )
        for name, result in evaluation.items():
            log(f"{variant} {name}: {result}")
    model = _fit(items, config, seed, epochs)
    model_type = CONFIGS[manifests[0]["family"]]["model_type"]
    record = {
        "family": manifests[0]["family"],
        "model_type": model_type,
        "variant": variant,
        "trained_on": [
            {"zoo": Path(z).name, "seed": m["seed"], "size": m["size"], "manifest": _digest(z)}
            for z, m in zip(zoos, manifests, strict=True)
        ],
        "examples": len(items),
        "epochs": epochs,
        "learning_rate": LEARNING_RATE,
        "seed": seed,
        "layer": LAYERS.get(model_type, "largest hidden matrix"),
        "scores": list(SCORE_METHODS) if with_scores else [],
        "probes": num_probes,
        "evaluation": evaluation,
        "training_examples_accuracy": measure(model, items),
        "seconds": round(time.perf_counter() - started, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model.cpu(), out, record)
    return record
