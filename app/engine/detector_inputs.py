"""What the Lineage Detector sees of a (candidate, child) pair, for any supported architecture.

- **Weights**: one layer's weight matrix of the candidate and of the child, as a 2-channel image
  (H, W). The layer is set per family in ``LAYERS`` (a hidden layer: the input layer sees the same
  data in every model, the head is often replaced); for any other architecture it is the largest
  matrix that is neither an embedding nor the head. Convolution kernels are flattened to
  (out, in·kh·kw). The encoders end in global pooling, so any (H, W) is accepted.
- **Features**: f(x) on the engine's probe inputs (the same f as the linearised methods:
  logits, or the last hidden state of a ``transformers`` model), candidate and child, (N, D).
- **Scores** (``ours`` only): the learning-free evidence of ``SCORE_METHODS``, each as −log
  distance (higher = closer), standardised across the query's candidates.

The shipped checkpoints are found and loaded here; ``decision.rank_with_detector`` ranks with them.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch

from app.engine.detector import (
    DetectorError,
    DetectorExample,
    LineageDetector,
    collate,
    load_checkpoint,
)
from app.engine.errors import IncompatibleModels
from app.engine.methods import PairContext, get_method, neg_log_distance

LAYERS = {
    "lineage-mlp": "layers.1.weight",
    "lineage-cnn": "stages.1.conv2.weight",
    "gpt2": "h.1.mlp.c_fc.weight",
}
SCORE_METHODS = ("weight-l2", "weight-cos", "weight-spectrum", "lin-l1", "cka")
_EMBEDDING_WORDS = ("embed", "wte", "wpe", "shared")


def chosen_layer(ctx: PairContext) -> str:
    """The state name of the layer whose weights the detector compares."""
    parent_state, _, _ = ctx.states
    network = ctx.network
    name = LAYERS.get(network.config.get("model_type"))
    if name is not None and name in parent_state:
        return name
    matrices = [
        (tensor.numel(), key)
        for key, tensor in parent_state.items()
        if tensor.dim() >= 2
        and tensor.is_floating_point()
        and key not in network.head
        and not any(word in key for word in _EMBEDDING_WORDS)
    ]
    if not matrices:
        raise IncompatibleModels(f"{ctx.parent.name}: no weight matrix for the detector to compare")
    return max(matrices)[1]


def pair_inputs(ctx: PairContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights (2, H, W), features (2, N, D)) of one pair, float32 on the pair's device."""
    parent_state, child_state, _ = ctx.states
    layer = chosen_layer(ctx)
    weights = torch.stack([parent_state[layer], child_state[layer]]).flatten(2).float()
    features = torch.stack([ctx.parent_output, ctx.child_output]).flatten(2).float()
    return weights, features


def query_scores(contexts: list[PairContext]) -> torch.Tensor:
    """(K, S) learning-free evidence per candidate, standardised across the candidates."""
    columns = []
    for method in SCORE_METHODS:
        values = []
        for ctx in contexts:
            try:
                values.append(neg_log_distance(method, get_method(method).score(ctx)))
            except IncompatibleModels:
                values.append(math.nan)
        column = torch.tensor(values, dtype=torch.float32)
        known = column[~column.isnan()]
        if len(known) > 1 and float(known.std()) > 0:
            column = (column - known.mean()) / known.std()
        else:
            column = column - (known.mean() if len(known) else 0.0)
        columns.append(column.nan_to_num(0.0))
    return torch.stack(columns, dim=1)


def query_example(contexts: list[PairContext], target: int, with_scores: bool) -> DetectorExample:
    """One detector example: the child against every candidate of ``contexts`` (one per
    candidate, same child); ``target`` is the parent's index, or len(contexts) for none."""
    pairs = [pair_inputs(ctx) for ctx in contexts]
    shapes = {(w.shape, f.shape) for w, f in pairs}
    if len(shapes) > 1:
        raise IncompatibleModels("the detector needs candidates of one architecture")
    weights = torch.stack([w for w, _ in pairs]).cpu()
    features = torch.stack([f for _, f in pairs]).cpu()
    scores = query_scores(contexts) if with_scores else None
    return DetectorExample(weights, features, scores, target)


# --- the shipped checkpoints and the logits of one query --------------------------------------

CHECKPOINT_DIR = Path(__file__).parent / "detectors"
# Method name → variant of the shipped checkpoint it uses.
# The per-architecture checkpoints a method reads (``detector`` itself is the universal detector
# of ``universal_detector``, one checkpoint for every architecture; the per-family ``ours``
# variant is still trained by ``lineage train-detector`` for comparison, and served by no method).
VARIANT_OF = {"detector-paper": "paper"}


def checkpoint_path(model_type: str | None, variant: str, directory: Path | None = None) -> Path:
    """Where the ``variant`` detector of ``model_type`` is (shipped, or in ``directory``)."""
    return (directory or CHECKPOINT_DIR) / f"{model_type}-{variant}.safetensors"


@functools.cache
def _cached(path: Path, device: str, mtime_ns: int, size: int) -> tuple[LineageDetector, dict]:
    # Keyed by the file's identity too: a checkpoint retrained in place is read again.
    return load_checkpoint(path, device)


def load_detector(
    model_type: str | None,
    variant: str,
    device: torch.device | str = "cpu",
    directory: Path | None = None,
) -> tuple[LineageDetector, dict]:
    """The detector of an architecture (shipped, or in ``directory``); ``DetectorError`` when
    there is none."""
    path = checkpoint_path(model_type, variant, directory)
    if not path.is_file():
        shipped = sorted(p.stem for p in path.parent.glob("*.safetensors"))
        raise DetectorError(
            f"no trained {variant} detector for model_type {model_type!r} (shipped: "
            f"{', '.join(shipped) or 'none'}); train one with `lineage train-detector`"
        )
    stat = path.stat()
    return _cached(path, str(device), stat.st_mtime_ns, stat.st_size)


def detector_logits(
    model: LineageDetector, contexts: list[PairContext], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Logits (K + 1,) of one query: one per candidate, then "no parent"."""
    example = query_example(contexts, 0, with_scores=bool(model.config.n_scores))
    weights, features, scores, mask, _ = collate([example])
    with torch.no_grad():
        logits = model(
            weights.to(device),
            features.to(device),
            None if scores is None else scores.to(device),
            mask.to(device),
        )
    return logits[0].cpu()
