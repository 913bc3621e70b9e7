"""Training the universal Lineage Detector on zoos of every family, and leave-one-family-out.

Every query of every split of a zoo (child, candidates, true parent or None) is one training
example. Its pairs' features (``universal_detector.pair_features``) are computed once per
(child, candidate) pair and cached in the zoo folder (``FEATURES_FILE``: the tensors, with the
index of pairs and queries in the metadata), recomputed when the manifest, the features version
or the probe count changed.

Training (``fit_universal``) shuffles each query's candidates every epoch and, so that "no parent"
is learnt from more than the zoos' orphan queries, drops the true parent from a query with
probability ``DROP_PARENT`` (where no other candidate is an ancestor of the child: the query then
truly has no parent among its candidates). ``leave_one_family_out`` trains one detector per
family on the other families' zoos only and measures it on that family's evaluation zoos.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from app.bench.evaluate import model_opener
from app.bench.zoo import MANIFEST, ancestors, read_manifest
from app.engine import weightspace
from app.engine.detector import DetectorError
from app.engine.errors import InvalidArgument
from app.engine.methods import PairContext
from app.engine.probes import DEFAULT_NUM_PROBES
from app.engine.separation import candidate_separations
from app.engine.universal_detector import (
    PAIR_FEATURES_VERSION,
    QUERY_FEATURES,
    SCALAR_FEATURES,
    TOKEN_FEATURES,
    PairFeatures,
    UniversalConfig,
    UniversalDetector,
    UniversalExample,
    collate,
    pair_features,
    save_universal,
    with_query_features,
)

FEATURES_FILE = "universal-features.safetensors"
FEATURES_FORMAT = "lineage-universal-features"
EPOCHS = 40
LEARNING_RATE = 3e-3
BATCH_SIZE = 32
DROP_PARENT = 0.3


def _digest(zoo: Path) -> str:
    return hashlib.sha256((zoo / MANIFEST).read_bytes()).hexdigest()[:16]


# --- features of a zoo's queries, cached ---------------------------------------------------------


def _read_cache(path: Path, digest: str, num_probes: int) -> tuple[dict, dict] | None:
    """(index, tensors) of a cache written for this manifest, features version and probe count,
    else None."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            wanted = (FEATURES_FORMAT, PAIR_FEATURES_VERSION, digest, str(num_probes))
            found = tuple(
                metadata.get(k) for k in ("format", "features_version", "manifest", "num_probes")
            )
            if found != wanted:
                return None
            index = json.loads(metadata["index"])
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (OSError, SafetensorError, KeyError, json.JSONDecodeError):
        return None
    return index, tensors


def _write_cache(path: Path, index: dict, features: list[PairFeatures], metadata: dict) -> None:
    longest = max(f.tokens.shape[0] for f in features)
    tokens = torch.zeros(len(features), longest, len(TOKEN_FEATURES))
    counts = torch.tensor([f.tokens.shape[0] for f in features], dtype=torch.int64)
    for i, f in enumerate(features):
        tokens[i, : f.tokens.shape[0]] = f.tokens
    scalars = torch.stack([f.scalars for f in features])
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(
            {"tokens": tokens, "counts": counts, "scalars": scalars},
            tmp,
            metadata={**metadata, "index": json.dumps(index)},
        )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _compute(zoo: Path, manifest: dict, device, num_probes: int, log) -> tuple[dict, list]:
    """(index, pair features) of every query of the zoo; each (child, candidate) pair once."""
    models = manifest["models"]
    model = model_opener(zoo)
    pairs: dict[tuple[str, str], int] = {}
    queries = []
    for split, split_queries in manifest["splits"].items():
        for query in split_queries:
            child, candidates, truth = query["child"], query["candidates"], query["truth"]
            lineage = set(ancestors(models, child)) if child in models else set()
            queries.append(
                {
                    "split": split,
                    "child": child,
                    "candidates": candidates,
                    "truth": truth,
                    "pairs": [pairs.setdefault((child, c), len(pairs)) for c in candidates],
                    # Dropping the truth leaves a query without a parent only when no other
                    # candidate is an ancestor of the child.
                    "droppable": truth is not None
                    and not any(c in lineage for c in candidates if c != truth),
                }
            )
    by_child: dict[str, list[str]] = {}
    for child, candidate in pairs:
        by_child.setdefault(child, []).append(candidate)
    features: list[PairFeatures | None] = [None] * len(pairs)
    started = time.perf_counter()
    for number, (child_name, candidates) in enumerate(by_child.items(), 1):
        child = model(child_name)
        opened = [model(c) for c in candidates]
        weightspace.cache_weight_evidence(opened, child, device)
        for name, candidate in zip(candidates, opened, strict=True):
            ctx = PairContext(candidate, child, device, num_probes)
            features[pairs[(child_name, name)]] = pair_features(ctx)
        if number % 10 == 0 or number == len(by_child):
            log(
                f"{zoo.name}: features of {number}/{len(by_child)} children "
                f"({time.perf_counter() - started:.0f} s)"
            )
    index = {"pairs": [list(p) for p in pairs], "queries": queries}
    return index, features


def zoo_features(
    zoo: Path,
    *,
    device: torch.device | str = "cpu",
    num_probes: int = DEFAULT_NUM_PROBES,
    refresh: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> list[dict]:
    """Every query of the zoo's splits as ``{zoo, family, split, child, candidates, truth,
    droppable, example}`` (``example`` a ``UniversalExample``), from the zoo's feature cache,
    computed and cached first when missing or stale (or ``refresh``)."""
    zoo = Path(zoo)
    manifest = read_manifest(zoo)
    digest = _digest(zoo)
    path = zoo / FEATURES_FILE
    cached = None if refresh else _read_cache(path, digest, num_probes)
    if cached is None:
        index, features = _compute(zoo, manifest, device, num_probes, log)
        metadata = {
            "format": FEATURES_FORMAT,
            "features_version": PAIR_FEATURES_VERSION,
            "manifest": digest,
            "num_probes": str(num_probes),
        }
        _write_cache(path, index, features, metadata)
    else:
        index, tensors = cached
        features = [
            PairFeatures(tensors["tokens"][i, : int(n)].clone(), tensors["scalars"][i].clone())
            for i, n in enumerate(tensors["counts"])
        ]
    items = []
    model = model_opener(zoo)
    for query in index["queries"]:
        truth, candidates = query["truth"], query["candidates"]
        target = candidates.index(truth) if truth is not None else len(candidates)
        views = candidate_separations([model(c) for c in candidates], model(query["child"]))
        pairs = with_query_features([features[i] for i in query["pairs"]], views)
        example = UniversalExample(pairs, target)
        items.append(
            {
                "zoo": str(zoo),
                "family": manifest.get("family"),
                **{k: query[k] for k in ("split", "child", "candidates", "truth", "droppable")},
                "example": example,
            }
        )
    return items


# --- training ------------------------------------------------------------------------------------


def _augment(item: dict, generator: torch.Generator, drop_parent: float) -> UniversalExample:
    """The query with its candidates shuffled; with probability ``drop_parent`` (and where it
    leaves a parentless query) without its parent."""
    example: UniversalExample = item["example"]
    k = example.num_candidates
    keep = torch.randperm(k, generator=generator).tolist()
    target = example.target
    droppable = item.get("droppable", False) and target < k and k > 1
    if droppable and float(torch.rand((), generator=generator)) < drop_parent:
        keep.remove(target)
        return UniversalExample([example.pairs[i] for i in keep], len(keep))
    new_target = len(keep) if target == k else keep.index(target)
    return UniversalExample([example.pairs[i] for i in keep], new_target)


def fit_universal(
    items: Sequence[dict],
    config: UniversalConfig | None = None,
    *,
    epochs: int = EPOCHS,
    lr: float = LEARNING_RATE,
    batch_size: int = BATCH_SIZE,
    drop_parent: float = DROP_PARENT,
    weight_decay: float = 0.01,
    seed: int = 0,
    device: torch.device | str = "cpu",
    log: Callable[[dict], None] | None = None,
) -> tuple[UniversalDetector, list[dict]]:
    """Train with AdamW and cross-entropy on ``items`` (``{"example", "droppable"}``, as
    ``zoo_features`` gives); (model in eval mode, history). Deterministic on the CPU for a seed."""
    if not items:
        raise DetectorError("the training set is empty")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise DetectorError(f"bad training settings: epochs {epochs}, batch {batch_size}, lr {lr}")
    config = config or UniversalConfig()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = UniversalDetector(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(items), generator=generator).tolist()
        total, correct, nones = 0.0, 0, 0
        for begin in range(0, len(order), batch_size):
            batch = [
                _augment(items[i], generator, drop_parent)
                for i in order[begin : begin + batch_size]
            ]
            nones += sum(e.target == e.num_candidates for e in batch)
            tokens, token_mask, scalars, mask, targets = collate(batch)
            logits = model(
                tokens.to(device), token_mask.to(device), scalars.to(device), mask.to(device)
            )
            targets = targets.to(device)
            loss = F.cross_entropy(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total += loss.item() * len(batch)
            correct += int((logits.argmax(1) == targets).sum())
        schedule.step()
        row = {
            "epoch": epoch,
            "loss": total / len(items),
            "train_accuracy": correct / len(items),
            "none_share": nones / len(items),
        }
        history.append(row)
        if log is not None:
            log(row)
    return model.eval(), history


@torch.no_grad()
def predict(
    model: UniversalDetector, examples: Sequence[UniversalExample], batch_size: int = 64
) -> list[tuple[int, list[float]]]:
    """Per example: (answer index, K_i meaning no parent; softmax over its K_i candidates and
    "no parent")."""
    model.eval()
    device = model.head.weight.device
    out = []
    for begin in range(0, len(examples), batch_size):
        batch = examples[begin : begin + batch_size]
        tokens, token_mask, scalars, mask, _ = collate(batch)
        logits = model(
            tokens.to(device), token_mask.to(device), scalars.to(device), mask.to(device)
        ).cpu()
        k = logits.shape[1] - 1
        for row, example in zip(logits, batch, strict=True):
            columns = list(range(example.num_candidates)) + [k]
            probs = torch.softmax(row[columns].double(), 0)
            out.append((int(probs.argmax()), probs.tolist()))
    return out


def _metrics(rows: list[tuple[dict, int, list[float]]]) -> dict:
    top1, exact, tp, fp, fn = [], [], 0, 0, 0
    for item, answer, probs in rows:
        example: UniversalExample = item["example"]
        k = example.num_candidates
        said_none = answer == k
        if item["truth"] is None:
            tp += said_none
            fn += not said_none
            exact.append(said_none)
        else:
            top1.append(max(range(k), key=lambda i: probs[i]) == example.target)
            fp += said_none
            exact.append(answer == example.target)
    return {
        "queries": len(rows),
        "accuracy": sum(exact) / len(exact) if exact else None,
        "top1": sum(top1) / len(top1) if top1 else None,
        "none_precision": tp / (tp + fp) if tp + fp else None,
        "none_recall": tp / (tp + fn) if tp + fn else None,
    }


def measure(model: UniversalDetector, items: Sequence[dict]) -> dict:
    """Decision accuracy (the right parent named, or "none" where the truth is None), top-1 over
    queries with a parent, precision and recall of "none": overall and per split."""
    predictions = predict(model, [i["example"] for i in items])
    rows = [(i, a, p) for i, (a, p) in zip(items, predictions, strict=True)]
    splits: dict[str, list] = {}
    for row in rows:
        splits.setdefault(row[0]["split"], []).append(row)
    return {"overall": _metrics(rows), "splits": {s: _metrics(r) for s, r in splits.items()}}


def _items(
    zoos: Sequence[Path], device, num_probes: int, log, cache: dict[str, list[dict]]
) -> list[dict]:
    """Every query of ``zoos`` (``zoo_features``), each zoo's read once into ``cache``: its
    pair features come from disk, but its queries' separation features are computed anew."""
    items = []
    for zoo in zoos:
        if str(zoo) not in cache:
            cache[str(zoo)] = zoo_features(Path(zoo), device=device, num_probes=num_probes, log=log)
        items += cache[str(zoo)]
    return items


def train_universal(
    zoos: Sequence[Path],
    out_path: Path,
    *,
    epochs: int = EPOCHS,
    seed: int = 0,
    device: torch.device | str = "cpu",
    num_probes: int = DEFAULT_NUM_PROBES,
    config: UniversalConfig | None = None,
    log: Callable[[str], None] = lambda _: None,
    cache: dict[str, list[dict]] | None = None,
) -> dict:
    """Train one universal detector on every query of ``zoos`` (any families), write it to
    ``out_path`` and return its training record (also stored in the checkpoint). ``cache``:
    zoos' queries already read (``_items``), shared with ``leave_one_family_out``."""
    if not zoos:
        raise InvalidArgument("give at least one zoo folder")
    started = time.perf_counter()
    items = _items(zoos, device, num_probes, log, {} if cache is None else cache)
    config = config or UniversalConfig()
    model, history = fit_universal(
        items,
        config,
        epochs=epochs,
        seed=seed,
        device=device,
        log=lambda row: log(f"epoch {row['epoch']}: loss {row['loss']:.3f}"),
    )
    record = {
        "families": sorted({str(i["family"]) for i in items}),
        "trained_on": [
            {
                "zoo": Path(z).name,
                "family": read_manifest(Path(z)).get("family"),
                "manifest": _digest(Path(z)),
            }
            for z in zoos
        ],
        "queries": len(items),
        "epochs": epochs,
        "learning_rate": LEARNING_RATE,
        "drop_parent": DROP_PARENT,
        "seed": seed,
        "probes": num_probes,
        "token_features": list(TOKEN_FEATURES),
        "scalar_features": list(SCALAR_FEATURES),
        "query_features": list(QUERY_FEATURES),
        "final_loss": history[-1]["loss"],
        "training_queries": measure(model, items)["overall"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    save_universal(model.cpu(), out_path, record)
    return record


def leave_one_family_out(
    zoos_by_family: dict[str, list[Path]],
    eval_zoos_by_family: dict[str, list[Path]],
    *,
    epochs: int = EPOCHS,
    seed: int = 0,
    device: torch.device | str = "cpu",
    num_probes: int = DEFAULT_NUM_PROBES,
    log: Callable[[str], None] = lambda _: None,
    cache: dict[str, list[dict]] | None = None,
) -> dict[str, dict]:
    """Per family of ``eval_zoos_by_family``: a detector trained on the training zoos of every
    other family, measured on this family's evaluation zoos (``measure``, plus ``trained_on``).
    ``cache``: as ``train_universal``'s."""
    cache = {} if cache is None else cache

    def items_of(zoos: Sequence[Path]) -> list[dict]:
        return _items(zoos, device, num_probes, log, cache)

    results = {}
    for family, eval_zoos in eval_zoos_by_family.items():
        others = sorted(f for f in zoos_by_family if f != family and zoos_by_family[f])
        if not others:
            raise InvalidArgument(f"no other family to train on while holding out {family}")
        train = items_of([z for f in others for z in zoos_by_family[f]])
        started = time.perf_counter()
        model, _ = fit_universal(train, epochs=epochs, seed=seed, device=device)
        result = measure(model, items_of(eval_zoos))
        result["trained_on"] = others
        result["training_queries"] = len(train)
        result["training_seconds"] = round(time.perf_counter() - started, 1)
        log(f"held out {family}: {result['overall']}")
        results[family] = result
    return results


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m app.bench.universal_detector train ZOO... [--out PATH]`` trains the shipped
    checkpoint (default ``CHECKPOINT_PATH``); ``... lofo ZOO...`` prints leave-one-family-out
    metrics as JSON, every zoo serving both to train (other families) and to evaluate (its own)."""
    import argparse

    from app.engine.universal_detector import CHECKPOINT_PATH

    parser = argparse.ArgumentParser(prog="python -m app.bench.universal_detector")
    parser.add_argument("command", choices=("train", "lofo"))
    parser.add_argument("zoos", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=CHECKPOINT_PATH)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--probes", type=int, default=DEFAULT_NUM_PROBES)
    args = parser.parse_args(argv)
    options = {"epochs": args.epochs, "seed": args.seed, "device": args.device}
    options["num_probes"] = args.probes

    def log(line: str) -> None:
        print(line, flush=True)

    if args.command == "train":
        record = train_universal(args.zoos, args.out, log=log, **options)
        print(json.dumps(record, indent=2))
        return
    by_family: dict[str, list[Path]] = {}
    for zoo in args.zoos:
        by_family.setdefault(str(read_manifest(zoo).get("family")), []).append(zoo)
    print(json.dumps(leave_one_family_out(by_family, by_family, log=log, **options), indent=2))


if __name__ == "__main__":
    main()
