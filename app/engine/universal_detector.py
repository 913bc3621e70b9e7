"""The universal Lineage Detector: one trained scorer for every architecture.

The per-architecture detectors (``detector.py``) read one chosen layer's weight matrix as an image,
so each model type needs its own checkpoint. This one reads only what every pair of models has,
whatever their architecture:

- **tokens** (T ≤ ``MAX_TOKENS`` per pair, ``TOKEN_FEATURES``): one per matched float tensor
  (``weightspace.matched_tensors``), of scale-free statistics of the parent's θ_p and child's θ_c:

      log ‖θ_c − θ_p‖/‖θ_p‖, cos(θ_p, θ_c), log ‖θ_c‖/‖θ_p‖,
      log ‖σ_c − σ_p‖/‖σ_p‖ and log σ_c,max/σ_p,max   (σ: ``weightspace.invariant_statistics``,
                                                       singular values or sorted values),
      the tensor's kind (matrix, conv kernel, vector, embedding), log numel, relative depth,
      and whether θ_c = θ_p (a frozen tensor).

  The σ statistics survive hidden-unit and residual-stream permutation, which scrambles the rest.
  A model with more tensors than ``MAX_TOKENS`` contributes evenly spaced ones (in depth order).
- **scalars** (``SCALAR_FEATURES``): over all matched tensors, log ‖θ_c − θ_p‖/‖θ_p‖ and the mean
  cosine (``weightspace.pair_weights``), the fraction of the child's tensors matched, the spectral
  relative distance over the tokens' tensors; in function space, on the engine's probes, −log of
  the relative distances ‖f_p − f_c‖/‖f_c‖ and ‖f̄_p − f_c‖/‖f_c‖ (f̄_p the exact linearisation)
  and −log(1 − CKA(f_p, f_c)), each with a missing-value flag: a weights-only model, or a child
  whose architecture does not fit the parent's, has no function-space evidence. Relative distances
  rather than the registry's ``l2``/``lin-l2``, whose scale is the output's (an architecture's).

The model (``UniversalDetector``) encodes a pair's tokens as a set (a per-token MLP, then
attention, mean and max pooling: order-free, any T), joins the scalars, and gives a pair
embedding h. Per query of K candidates, h is standardised across the candidates (a candidate
standing out among its siblings) and kept raw (whether anyone is close at all), the candidates
and a learnable "no parent" token attend to each other in one transformer block, and a linear
head gives logits (K + 1): column K is "no parent", as ``detector.LineageDetector``.

Checkpoints are safetensors with the config and a JSON training record in the metadata; nothing
is unpickled. Training on zoos and leave-one-family-out evaluation live in
``app.bench.universal_detector``; ``rank_universal`` ranks a child's candidates with a checkpoint.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from app.engine import separation, weightspace
from app.engine.detector import (
    Block,
    DetectorError,
    check_attention,
    config_from_dict,
    detector_ranking,
    is_integer,
    read_checkpoint,
    standardize_candidates,
    write_checkpoint,
)
from app.engine.errors import IncompatibleModels, LineageError
from app.engine.methods import PairContext, get_method, neg_log_distance
from app.engine.model_files import LoadedModel
from app.engine.probes import DEFAULT_NUM_PROBES, DEFAULT_PROBE_SEED
from app.engine.results import Ranking, Skipped

METHOD = "detector"  # its name in the engine's method registry
CHECKPOINT_FORMAT = "lineage-universal-detector"
CHECKPOINT_VERSION = "1"
# Bump when what ``pair_features`` computes changes: a checkpoint (or a zoo's cached features)
# of another version was trained on other inputs and is refused (or recomputed).
FEATURES_VERSION = "2"  # what the model reads: the pair's features and the query's
PAIR_FEATURES_VERSION = "1"  # what ``pair_features`` computes (the benchmark caches it)
CHECKPOINT_NAME = "universal.safetensors"
CHECKPOINT_PATH = Path(__file__).parent / "detectors" / CHECKPOINT_NAME

TOKEN_FEATURES = (
    "log_relative_distance",
    "cosine",
    "log_norm_ratio",
    "log_spectral_relative_distance",
    "log_top_singular_ratio",
    "kind_matrix",
    "kind_conv",
    "kind_vector",
    "kind_embedding",
    "log_numel",
    "relative_depth",
    "identical",
)
SCALAR_FEATURES = (
    "weight_log_relative_distance",
    "weight_cosine",
    "matched_fraction",
    "spectral_log_relative_distance",
    "function_neg_log_relative_l2",
    "linearized_neg_log_relative_l2",
    "cka_neg_log_distance",
    "function_missing",
    "linearized_missing",
    "cka_missing",
)
# Per candidate, from the query's separation test (``separation.candidate_separations``): the
# candidate's relatedness above the null's largest, its hub ratio, how far outside the family the
# child lies, in the raw weights and in the spectra; all ones-and-zeros when the query has no
# null (fewer than four candidates in a family). Relative to the null, so that a candidate set
# whose members are related among themselves does not make every sibling look like a parent.
QUERY_FEATURES = (
    "weights_relatedness_over_null",
    "weights_log_hub",
    "weights_log_unrelated",
    "spectra_relatedness_over_null",
    "spectra_log_unrelated",
    "no_null",
)
SCALARS = len(SCALAR_FEATURES) + len(QUERY_FEATURES)
MAX_TOKENS = 64
_EMBEDDING_WORDS = ("embed", "wte", "wpe", "shared", "tok_", "pos_")
_FLOOR = 1e-6  # relative distances below this (identical tensors) are floored
_LOG_SCALE = 4.0  # log values divided by this, so features are O(1)


# --- features ----------------------------------------------------------------------------------


@dataclass
class PairFeatures:
    """What the universal detector sees of one (candidate, child) pair."""

    tokens: torch.Tensor  # (T, len(TOKEN_FEATURES)) float32, 1 ≤ T ≤ MAX_TOKENS
    scalars: torch.Tensor  # (len(SCALAR_FEATURES),) float32


def _natural_key(name: str) -> tuple:
    """``h.2`` before ``h.10``: numbers in a name compare as numbers (depth order)."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _log(value: float, low: float = -14.0, high: float = 6.0) -> float:
    """log(value) floored at ``_FLOOR`` and clamped, in units of ``_LOG_SCALE``."""
    return min(max(math.log(max(value, _FLOOR)), low), high) / _LOG_SCALE


def _select(pairs: list[tuple[str, str]], limit: int) -> list[tuple[int, tuple[str, str]]]:
    """(depth index, pair) of at most ``limit`` matched pairs, evenly spaced in depth order."""
    ordered = sorted(pairs, key=lambda p: _natural_key(p[1]))
    if len(ordered) <= limit:
        return list(enumerate(ordered))
    picks = sorted({round(i * (len(ordered) - 1) / (limit - 1)) for i in range(limit)})
    return [(i, ordered[i]) for i in picks]


def _kind(name: str, shape: tuple[int, ...]) -> tuple[float, float, float, float]:
    """One-hot (matrix, conv kernel, vector, embedding); embeddings are known by name only."""
    lowered = name.lower()
    if len(shape) >= 2 and any(word in lowered for word in _EMBEDDING_WORDS):
        return (0.0, 0.0, 0.0, 1.0)
    if len(shape) > 2:
        return (0.0, 1.0, 0.0, 0.0)
    if len(shape) == 2:
        return (1.0, 0.0, 0.0, 0.0)
    return (0.0, 0.0, 1.0, 0.0)


def _tensor_token(
    parent: LoadedModel,
    child: LoadedModel,
    p_name: str,
    c_name: str,
    depth: float,
    device: torch.device | str,
) -> tuple[list[float], float, float]:
    """(token, ‖σ_c − σ_p‖², ‖σ_p‖²) of one matched tensor."""
    p = parent.weights[p_name].float().reshape(-1)
    c = child.weights[c_name].float().reshape(-1)
    p_norm, c_norm = float(p.norm()), float(c.norm())
    diff = float((c - p).norm())
    cosine = float(torch.dot(p, c)) / max(p_norm * c_norm, 1e-12)
    sigma_p = weightspace.invariant_statistics(parent, p_name, device)
    sigma_c = weightspace.invariant_statistics(child, c_name, device)
    spectral_sq = float((sigma_c - sigma_p).pow(2).sum())
    sigma_p_sq = float(sigma_p.pow(2).sum())
    # The largest singular value (matrices), the largest magnitude (vectors: sorted values).
    top_p = float(sigma_p.abs().max()) if sigma_p.numel() else 0.0
    top_c = float(sigma_c.abs().max()) if sigma_c.numel() else 0.0
    shape = tuple(child.weights.infos[c_name].shape)
    token = [
        _log(diff / max(p_norm, 1e-12)),
        cosine,
        _log(max(c_norm, 1e-12) / max(p_norm, 1e-12), -6.0, 6.0),
        _log(math.sqrt(spectral_sq) / max(math.sqrt(sigma_p_sq), 1e-12)),
        _log(max(top_c, 1e-12) / max(top_p, 1e-12), -6.0, 6.0),
        *_kind(c_name, shape),
        math.log(max(math.prod(shape), 1)) / 10.0,
        depth,
        float(diff == 0.0),
    ]
    return token, spectral_sq, sigma_p_sq


def _relative_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ over all elements, float64."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    return float((a - b).norm()) / max(float(b.norm()), 1e-30)


# What function-space evidence may raise when it cannot be had for a pair: no config (weights
# only), a child that does not fit the parent's architecture, an op without a forward-mode rule.
_FUNCTION_ERRORS = (LineageError, RuntimeError, NotImplementedError, ValueError)


def _function_scalars(ctx: PairContext) -> tuple[list[float], list[float]]:
    """([−log rel. l2, −log rel. lin-l2, −log(1 − CKA)], [missing flags]) of one pair."""
    values, missing = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    try:
        f_c = ctx.child_output
    except _FUNCTION_ERRORS:
        return values, missing
    try:  # first: the JVP gives f_p too, so ``parent_output`` costs no second forward pass
        values[1] = -_log(_relative_distance(ctx.linearized[1], f_c))
        missing[1] = 0.0
    except _FUNCTION_ERRORS:
        pass
    try:
        values[0] = -_log(_relative_distance(ctx.parent_output, f_c))
        missing[0] = 0.0
        values[2] = neg_log_distance("cka", get_method("cka").score(ctx)) / _LOG_SCALE
        missing[2] = 0.0
    except _FUNCTION_ERRORS:
        pass
    values = [v if math.isfinite(v) else 0.0 for v in values]
    return values, missing


def _log_ratio(value: float) -> float:
    return math.log(max(value, 1e-3)) / _LOG_SCALE


def query_scalars(views: dict | None, k: int) -> torch.Tensor:
    """(k, len(QUERY_FEATURES)) per-candidate features of the query's separation test."""
    out = torch.zeros(k, len(QUERY_FEATURES))
    if views is None:
        out[:, -1] = 1.0
        return out
    weights, spectra = views[separation.WEIGHTS], views[separation.SPECTRA]
    weights_null, spectra_null = max(weights.null), max(spectra.null)
    for i in range(k):
        out[i, 0] = min(max(weights.relatedness[i] - weights_null, -1.0), 1.0)
        out[i, 1] = _log_ratio(weights.hubs[i])
        out[i, 2] = _log_ratio(weights.unrelated)
        out[i, 3] = min(max(spectra.relatedness[i] - spectra_null, -1.0), 1.0)
        out[i, 4] = _log_ratio(spectra.unrelated)
    return out


def with_query_features(pairs: list[PairFeatures], views: dict | None) -> list[PairFeatures]:
    """The pairs of one query (its candidates, in order) with the query's separation features
    appended to their scalars: what the model reads."""
    extra = query_scalars(views, len(pairs))
    return [PairFeatures(p.tokens, torch.cat([p.scalars, extra[i]])) for i, p in enumerate(pairs)]


def pair_features(ctx: PairContext, max_tokens: int = MAX_TOKENS) -> PairFeatures:
    """The universal detector's inputs for one (candidate ``ctx.parent``, ``ctx.child``) pair.

    Raises ``IncompatibleModels`` when the two share no float tensor of one name and shape.
    """
    parent, child, device = ctx.parent, ctx.child, ctx.device
    pairs = weightspace.matched_tensors(parent, child)
    chosen = _select(pairs, max_tokens)
    count = max(len(pairs) - 1, 1)
    tokens, spectral_sq, sigma_sq = [], 0.0, 0.0
    for index, (p_name, c_name) in chosen:
        token, s_sq, p_sq = _tensor_token(parent, child, p_name, c_name, index / count, device)
        tokens.append(token)
        spectral_sq += s_sq
        sigma_sq += p_sq
    weights = ctx.weights
    child_tensors = sum(1 for i in child.weights.infos.values() if i.is_float and 0 not in i.shape)
    function, missing = _function_scalars(ctx)
    scalars = [
        _log(weights.relative),
        weights.cosine if math.isfinite(weights.cosine) else 0.0,
        len(pairs) / max(child_tensors, 1),
        _log(math.sqrt(spectral_sq) / max(math.sqrt(sigma_sq), 1e-12)),
        *function,
        *missing,
    ]
    token_tensor = torch.tensor(tokens, dtype=torch.float32).nan_to_num(0.0)
    return PairFeatures(token_tensor, torch.tensor(scalars, dtype=torch.float32).nan_to_num(0.0))


# --- examples and batches ----------------------------------------------------------------------


@dataclass
class UniversalExample:
    """One query: a child against K candidates; ``target`` the parent's index, K for none."""

    pairs: list[PairFeatures]
    target: int

    @property
    def num_candidates(self) -> int:
        return len(self.pairs)


def collate(
    examples: Sequence[UniversalExample],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens (B, K, T, F), token_mask (B, K, T), scalars (B, K, S), mask (B, K), targets (B,))
    padded to the batch's largest K and T; a no-parent target becomes the batch's K."""
    if not examples:
        raise DetectorError("cannot collate an empty batch")
    for i, e in enumerate(examples):
        if not e.pairs:
            raise DetectorError(f"example {i} has no candidate")
        if not is_integer(e.target) or not 0 <= e.target <= len(e.pairs):
            raise DetectorError(f"example {i}: target {e.target!r} is not in 0..{len(e.pairs)}")
    batch = len(examples)
    k = max(e.num_candidates for e in examples)
    t = max(p.tokens.shape[0] for e in examples for p in e.pairs)
    n_token, n_scalar = len(TOKEN_FEATURES), SCALARS
    tokens = torch.zeros(batch, k, t, n_token)
    token_mask = torch.zeros(batch, k, t, dtype=torch.bool)
    scalars = torch.zeros(batch, k, n_scalar)
    mask = torch.zeros(batch, k, dtype=torch.bool)
    targets = torch.empty(batch, dtype=torch.long)
    for i, e in enumerate(examples):
        for j, pair in enumerate(e.pairs):
            if pair.tokens.ndim != 2 or pair.tokens.shape[1] != n_token or not len(pair.tokens):
                raise DetectorError(
                    f"example {i}, candidate {j}: tokens must be (T ≥ 1, {n_token}), got "
                    f"{tuple(pair.tokens.shape)}"
                )
            if pair.scalars.shape != (n_scalar,):
                raise DetectorError(
                    f"example {i}, candidate {j}: scalars must be ({n_scalar},), got "
                    f"{tuple(pair.scalars.shape)}"
                )
            n = pair.tokens.shape[0]
            tokens[i, j, :n], token_mask[i, j, :n] = pair.tokens, True
            scalars[i, j] = pair.scalars
        mask[i, : e.num_candidates] = True
        targets[i] = k if e.target == e.num_candidates else e.target
    return tokens, token_mask, scalars, mask, targets


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UniversalConfig:
    """Architecture of a universal detector; stored in every checkpoint."""

    embed_dim: int = 32
    heads: int = 4
    dropout: float = 0.0
    token_features: int = len(TOKEN_FEATURES)
    scalar_features: int = SCALARS
    features_version: str = FEATURES_VERSION

    def __post_init__(self) -> None:
        for name, low in (("embed_dim", 1), ("heads", 1)):
            value = getattr(self, name)
            if not is_integer(value) or value < low:
                raise DetectorError(f"detector {name} must be an integer >= {low}, got {value!r}")
        check_attention(self.embed_dim, self.heads, self.dropout)
        if (self.token_features, self.scalar_features, self.features_version) != (
            len(TOKEN_FEATURES),
            SCALARS,
            FEATURES_VERSION,
        ):
            raise DetectorError(
                f"detector was built for features version {self.features_version!r} "
                f"({self.token_features} token, {self.scalar_features} scalar features); this "
                f"engine computes version {FEATURES_VERSION!r} ({len(TOKEN_FEATURES)}, "
                f"{SCALARS}): retrain it"
            )

    def to_dict(self) -> dict:
        """The config as plain JSON-ready values."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> UniversalConfig:
        """Rebuild a config, refusing unknown keys (a newer or foreign checkpoint)."""
        return config_from_dict(cls, data)


class UniversalDetector(nn.Module):
    """Scores K candidate parents of a child and "no parent" from architecture-free features.

    forward(tokens (B, K, T, F), token_mask (B, K, T), scalars (B, K, S), mask (B, K)) → logits
    (B, K + 1), column K = no parent, padded slots ≈ −∞. 16,802 parameters at E = 32.
    """

    def __init__(self, config: UniversalConfig):
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.token_mlp = nn.Sequential(
            nn.Linear(config.token_features, dim), nn.GELU(), nn.Linear(dim, dim)
        )
        self.attention_score = nn.Linear(dim, 1)
        self.pair_mlp = nn.Sequential(
            nn.Linear(3 * dim + config.scalar_features, dim), nn.GELU(), nn.Linear(dim, dim)
        )
        self.raw_norm = nn.LayerNorm(dim)
        self.merge = nn.Linear(2 * dim, dim)
        self.no_parent = nn.Parameter(torch.randn(dim) * 0.02)
        self.cross_block = Block(dim, config.heads, config.dropout)
        self.cross_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)

    def pair_embedding(
        self, tokens: torch.Tensor, token_mask: torch.Tensor, scalars: torch.Tensor
    ) -> torch.Tensor:
        """(M, T, F), (M, T), (M, S) → (M, E): attention, mean and max pooling of the encoded
        tokens (padding excluded), joined with the scalars."""
        x = self.token_mlp(tokens)  # (M, T, E)
        m = token_mask.unsqueeze(-1)
        low = torch.finfo(x.dtype).min / 2
        weights = torch.softmax(self.attention_score(x).masked_fill(~m, low), dim=1)
        attended = (weights * x).sum(1)
        mean = (x * m).sum(1) / m.sum(1).clamp_min(1)
        top = x.masked_fill(~m, low).max(1).values
        return self.pair_mlp(torch.cat([attended, mean, top, scalars], dim=-1))

    def forward(
        self,
        tokens: torch.Tensor,
        token_mask: torch.Tensor,
        scalars: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """Logits (B, K + 1) with column K = no parent; padded slots ≈ −∞."""
        self._check_inputs(tokens, token_mask, scalars, mask)
        batch, k = mask.shape
        real = mask.reshape(-1)
        dtype = self.head.weight.dtype
        flat_tokens = tokens.reshape(batch * k, *tokens.shape[2:])[real].to(dtype)
        flat_token_mask = token_mask.reshape(batch * k, -1)[real]
        flat_scalars = scalars.reshape(batch * k, -1)[real].to(dtype)
        pair = self.pair_embedding(flat_tokens, flat_token_mask, flat_scalars)
        h = pair.new_zeros(batch * k, pair.shape[-1])
        h[real] = pair
        h = h.view(batch, k, -1)  # (B, K, E)
        z = standardize_candidates(h, mask)  # standing out among the siblings
        x = self.merge(torch.cat([z, self.raw_norm(h)], dim=-1))  # and close at all
        x = torch.cat([x, self.no_parent.expand(batch, 1, -1)], dim=1)  # (B, K + 1, E)
        padding = torch.cat([~mask, mask.new_zeros(batch, 1)], dim=1)
        x = self.cross_block(x, key_padding_mask=padding)
        logits = self.head(self.cross_norm(x)).squeeze(-1)
        return logits.masked_fill(padding, torch.finfo(logits.dtype).min / 2)

    def _check_inputs(self, tokens, token_mask, scalars, mask) -> None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.ndim != 2:
            raise DetectorError("mask must be a bool tensor of shape (B, K)")
        batch, k = mask.shape
        if batch == 0 or k == 0:
            raise DetectorError(f"empty batch: mask has shape {tuple(mask.shape)}")
        c = self.config
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 4:
            raise DetectorError("tokens must be a float tensor (B, K, T, F)")
        if tokens.shape[:2] != mask.shape or tokens.shape[3] != c.token_features:
            raise DetectorError(
                f"tokens must be {(batch, k, 'T', c.token_features)}, got {tuple(tokens.shape)}"
            )
        if not isinstance(token_mask, torch.Tensor) or token_mask.shape != tokens.shape[:3]:
            raise DetectorError("token_mask must be a bool tensor (B, K, T)")
        if not isinstance(scalars, torch.Tensor) or scalars.shape != (batch, k, c.scalar_features):
            raise DetectorError(f"scalars must be {(batch, k, c.scalar_features)}")
        for name, t in (("tokens", tokens), ("scalars", scalars)):
            if not t.is_floating_point() or not torch.isfinite(t).all():
                raise DetectorError(f"{name} must be finite floats")
        if (~mask.any(dim=1)).any():
            raise DetectorError("every query needs one real candidate")
        if (mask & ~token_mask.any(dim=2)).any():
            raise DetectorError("every real candidate needs one real token")


def universal_logits(
    model: UniversalDetector, pairs: list[PairFeatures], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Logits (K + 1,) of one query: one per candidate, then "no parent"."""
    tokens, token_mask, scalars, mask, _ = collate([UniversalExample(pairs, 0)])
    with torch.no_grad():
        logits = model(
            tokens.to(device), token_mask.to(device), scalars.to(device), mask.to(device)
        )
    return logits[0].cpu()


# --- checkpoints -------------------------------------------------------------------------------


def save_universal(model: UniversalDetector, path: str | Path, record: dict) -> None:
    """Write the weights, config and ``record`` as one safetensors file, atomically."""
    write_checkpoint(model, path, record, CHECKPOINT_FORMAT, CHECKPOINT_VERSION)


def read_universal(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[UniversalDetector, dict]:
    """(detector in eval mode, record) from a file written by ``save_universal``;
    ``DetectorError`` for a missing, corrupt, foreign or mismatched file."""
    path = Path(path)
    if not path.is_file():
        raise DetectorError(
            f"no universal detector checkpoint at {path.name} in {path.parent.name}/; "
            "`make detectors` trains one on the benchmark's zoos"
        )
    return read_checkpoint(
        path,
        lambda config: UniversalDetector(UniversalConfig.from_dict(config)),
        CHECKPOINT_FORMAT,
        CHECKPOINT_VERSION,
        device,
        "universal detector",
    )


@functools.cache
def _cached(path: Path, device: str, mtime_ns: int, size: int) -> tuple[UniversalDetector, dict]:
    # Keyed by the file's identity too: a checkpoint retrained in place is read again.
    return read_universal(path, device)


def load_universal(
    path: str | Path | None = None, device: torch.device | str = "cpu"
) -> tuple[UniversalDetector, dict]:
    """The shipped universal detector (``CHECKPOINT_PATH``) or the one at ``path``, cached."""
    path = Path(path) if path is not None else CHECKPOINT_PATH
    if not path.is_file():
        return read_universal(path, device)  # raises the clear error
    stat = path.stat()
    return _cached(path.resolve(), str(device), stat.st_mtime_ns, stat.st_size)


# --- ranking -----------------------------------------------------------------------------------


def rank_universal(
    child: LoadedModel,
    parents: list[LoadedModel],
    *,
    device: torch.device | str = "cpu",
    num_probes: int = DEFAULT_NUM_PROBES,
    probe_seed: int = DEFAULT_PROBE_SEED,
    path: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Ranking:
    """Rank candidates with the universal detector: softmax over the candidates and "no parent";
    the best is named unless ``no_parent_wins`` (as ``decision.rank_with_detector``).

    Any architecture: candidates that share no tensor with the child are skipped with the reason;
    function-space features a pair cannot have are flagged missing. ``IncompatibleModels`` when no
    candidate remains. ``progress(done, total)`` as each candidate's features are made.
    """
    if not parents:
        raise IncompatibleModels(f"no candidate parents given for {child.name}")
    model, _ = load_universal(path, device)
    comparable, skipped = [], []
    for parent in parents:
        try:
            weightspace.matched_tensors(parent, child)
            comparable.append(parent)
        except IncompatibleModels as exc:
            skipped.append(Skipped(parent.name, exc.message))
    if comparable:  # every candidate's weight-space evidence in one pass over the child
        weightspace.cache_weight_evidence(comparable, child, device)
    report = progress or (lambda _done, _total: None)
    if skipped:
        report(len(skipped), len(parents))
    kept: list[tuple[LoadedModel, PairFeatures]] = []
    for done, parent in enumerate(comparable, len(skipped) + 1):
        ctx = PairContext(parent, child, device, num_probes, probe_seed)
        kept.append((parent, pair_features(ctx)))
        report(done, len(parents))
    if not kept:
        reasons = "; ".join(f"{s.parent}: {s.reason}" for s in skipped)
        raise IncompatibleModels(f"no candidate can be compared with {child.name} ({reasons})")
    parents = [p for p, _ in kept]
    views = separation.candidate_separations(parents, child, device)
    pairs = with_query_features([f for _, f in kept], views)
    logits = universal_logits(model, pairs, device)
    return detector_ranking(child.name, [p.name for p in parents], logits, METHOD, skipped)
