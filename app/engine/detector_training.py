"""Training the Lineage Detector (``app.engine.detector``) and measuring it on examples.

``train_detector`` fits a detector with AdamW and cross-entropy against each query's target (the
parent's index, or K for "no parent"), shuffling the candidates' order so no position can be
learnt; ``predict`` and ``accuracy`` evaluate one. Examples come from ``detector_inputs`` (one
query each); the zoo-level protocol (which queries train, which are held out) is the benchmark's
(``app.bench.detector``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from app.engine.detector import (
    DetectorConfig,
    DetectorError,
    DetectorExample,
    LineageDetector,
    check_example,
    collate,
    example_signature,
    is_integer,
)


def _batches(
    examples: Sequence[DetectorExample], batch_size: int, generator: torch.Generator | None = None
) -> list[list[int]]:
    """Index batches of examples with equal shapes; shuffled when a generator is given."""
    groups: dict[tuple, list[int]] = {}
    for i, example in enumerate(examples):
        groups.setdefault(example_signature(example), []).append(i)
    batches = []
    for indices in groups.values():
        if generator is not None:
            indices = [indices[j] for j in torch.randperm(len(indices), generator=generator)]
        batches += [indices[s : s + batch_size] for s in range(0, len(indices), batch_size)]
    if generator is not None:
        batches = [batches[j] for j in torch.randperm(len(batches), generator=generator)]
    return batches


def _shuffle_candidates(example: DetectorExample, generator: torch.Generator) -> DetectorExample:
    """The same query with its candidates in random order, so that no position can be learnt."""
    k = example.num_candidates
    perm = torch.randperm(k, generator=generator)
    target = k if example.target == k else int((perm == example.target).nonzero())
    scores = None if example.scores is None else example.scores[perm]
    return DetectorExample(example.weights[perm], example.features[perm], scores, target)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _logits(
    model: LineageDetector, batch: list[DetectorExample]
) -> tuple[torch.Tensor, torch.Tensor]:
    weights, features, scores, mask, targets = collate(batch)
    device = _device_of(model)
    scores = None if scores is None else scores.to(device)
    logits = model(weights.to(device), features.to(device), scores, mask.to(device))
    return logits, targets.to(device)


def _check_training_set(
    examples: Sequence[DetectorExample], config: DetectorConfig, name: str
) -> None:
    if not examples:
        raise DetectorError(f"the {name} set is empty")
    for i, example in enumerate(examples):
        check_example(example, i)
        n_scores = 0 if example.scores is None else example.scores.shape[1]
        if n_scores != config.n_scores:
            raise DetectorError(
                f"{name} example {i} has {n_scores} scores per candidate, the config "
                f"{config.n_scores}"
            )
        if example.target == example.num_candidates and not config.no_parent:
            raise DetectorError(
                f"{name} example {i} has no parent but the config has no_parent=False"
            )


@torch.no_grad()
def _evaluate(
    model: LineageDetector, examples: Sequence[DetectorExample], batch_size: int
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) in eval mode."""
    model.eval()
    loss = correct = 0.0
    for indices in _batches(examples, batch_size):
        logits, targets = _logits(model, [examples[i] for i in indices])
        loss += float(F.cross_entropy(logits, targets, reduction="sum"))
        correct += int((logits.argmax(1) == targets).sum())
    return loss / len(examples), correct / len(examples)


def train_detector(
    train: list[DetectorExample],
    config: DetectorConfig,
    *,
    epochs: int = 30,
    lr: float = 3e-3,
    batch_size: int = 16,
    weight_decay: float = 0.01,
    shuffle_candidates: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    valid: list[DetectorExample] | None = None,
    log: Callable[[dict], None] | None = None,
) -> tuple[LineageDetector, list[dict]]:
    """Train with AdamW and cross-entropy against the target; (model in eval mode, history).

    Deterministic on the CPU for a given ``seed``. With ``valid`` the returned weights are those of
    the epoch with the best validation accuracy (ties: lower validation loss), else the last.
    Each history row (also passed to ``log``) holds epoch, loss, train_accuracy and, with
    ``valid``, valid_loss and valid_accuracy.
    """
    _check_training_set(train, config, "training")
    if valid is not None:
        _check_training_set(valid, config, "validation")
    if not is_integer(epochs) or epochs < 1 or not is_integer(batch_size) or batch_size < 1:
        raise DetectorError(f"epochs and batch_size must be positive, got {epochs}, {batch_size}")
    if not lr > 0:
        raise DetectorError(f"learning rate must be positive, got {lr}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = LineageDetector(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    history: list[dict] = []
    best_key, best_state = None, None
    for epoch in range(1, epochs + 1):
        model.train()
        total_loss, correct = 0.0, 0
        for indices in _batches(train, batch_size, generator):
            batch = [train[i] for i in indices]
            if shuffle_candidates:
                batch = [_shuffle_candidates(e, generator) for e in batch]
            logits, targets = _logits(model, batch)
            loss = F.cross_entropy(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total_loss += loss.item() * len(batch)
            correct += int((logits.argmax(1) == targets).sum())
        schedule.step()
        row = {
            "epoch": epoch,
            "loss": total_loss / len(train),
            "train_accuracy": correct / len(train),
        }
        if valid is not None:
            row["valid_loss"], row["valid_accuracy"] = _evaluate(model, valid, batch_size)
            key = (row["valid_accuracy"], -row["valid_loss"])
            if best_key is None or key > best_key:
                best_key, best_state = key, copy.deepcopy(model.state_dict())
        history.append(row)
        if log is not None:
            log(row)
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval(), history


@torch.no_grad()
def predict(
    model: LineageDetector, examples: Sequence[DetectorExample], batch_size: int = 64
) -> list[tuple[int, list[float]]]:
    """Per example: (argmax index, K_i meaning no parent; softmax probabilities of its K_i
    candidates, then of "no parent" when the model has it)."""
    model.eval()
    results: list[tuple[int, list[float]] | None] = [None] * len(examples)
    for indices in _batches(examples, batch_size):
        batch = [examples[i] for i in indices]
        logits, _ = _logits(model, batch)
        k = logits.shape[1] - (1 if model.no_parent is not None else 0)
        for row, i, example in zip(logits, indices, batch, strict=True):
            n = example.num_candidates
            columns = list(range(n)) + ([k] if model.no_parent is not None else [])
            probs = torch.softmax(row[columns].float(), dim=0)
            results[i] = (int(probs.argmax()), probs.tolist())
    return results


def accuracy(
    model: LineageDetector, examples: Sequence[DetectorExample], batch_size: int = 64
) -> float:
    """Fraction of examples whose predicted index (K_i for no parent) equals the target."""
    if not examples:
        raise DetectorError("accuracy of an empty set is undefined")
    hits = sum(
        index == e.target
        for (index, _), e in zip(predict(model, examples, batch_size), examples, strict=True)
    )
    return hits / len(examples)
