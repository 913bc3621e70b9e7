"""The Lineage Detector: a small learned scorer of (candidate parent, child) pairs.

One query is a child and K candidate parents. Batches are padded to the largest K:

    weights   (B, K, 2, H, W)  channel 0 the candidate's chosen-layer weight matrix, 1 the child's
    features  (B, K, 2, N, D)  the candidate's features on N probe inputs, then the child's
    scores    (B, K, S) | None learning-free scores, higher = more parent-like, standardised
    mask      (B, K) bool      True where the candidate slot is real

and the detector returns logits (B, K + 1) whose column K is "no parent" ((B, K) without it).

Two variants share that interface:

- ``paper``: the detector of Yu & Wang ("Neural Lineage", CVPR 2024): per pair, a weight and a
  feature encoder (1×1 conv 2→3 + ReLU → 3×3 conv 3→E + BatchNorm + ReLU → average pool), tokens
  [CLS, weight + type 0, feature + type 1] through one self-attention, the CLS output standardised
  across the query's candidates, a learnable no-parent vector appended, Linear(E→1).
- ``ours``: each weight and feature image is first divided by the RMS of its child channel, so a
  layer's scale (which differs between architectures and layers) says nothing and the
  parent-child difference is measured in units of the child's size; a pre-LayerNorm transformer
  block runs over the pair's tokens, which add the S scores (type 2) and a permutation-invariant
  token from the weight matrices' singular values (type 3: survives hidden-unit permutation, which
  scrambles the conv encoders' view); the standardised CLS vectors are joined by the raw
  (LayerNormed) ones, because standardisation alone erases "is anyone close at all?" and makes
  "no parent" undecidable for a single candidate; finally the candidates and the no-parent token
  attend to each other in a second block, so each logit can depend on the rival candidates.

Checkpoints are safetensors files with the config and a free-form JSON record in their metadata;
nothing is ever unpickled. Training and evaluation live in ``detector_training``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from app.engine.errors import LineageError
from app.engine.results import CandidateScore, Decision, Ranking, Skipped

VARIANTS = ("paper", "ours")
CHECKPOINT_FORMAT = "lineage-detector"
CHECKPOINT_VERSION = "1"
SPECTRUM_SIZE = 16  # singular values kept per weight matrix in the ``ours`` spectrum token
STANDARDIZE_EPS = 1e-5
RMS_FLOOR = 1e-6


def no_parent_wins(best: float, no_parent: float) -> bool:
    """A trained detector answers "no parent" when its no-parent token is more probable than
    its best candidate."""
    return no_parent > best


def detector_ranking(
    child: str, names: list[str], logits: torch.Tensor, method: str, skipped: list[Skipped]
) -> Ranking:
    """A detector's answer from its logits (one per candidate of ``names``, then "no parent"):
    softmax over them; the best candidate is named unless ``no_parent_wins``; the margin is
    over the runner-up candidate (over "none" with a single candidate)."""
    probs = torch.softmax(logits.double(), 0)
    order = sorted(range(len(names)), key=lambda i: -float(logits[i]))
    best = order[0]
    runner_up = float(probs[order[1]]) if len(order) > 1 else float(probs[-1])
    margin = float(probs[best]) - runner_up
    if no_parent_wins(float(probs[best]), float(probs[-1])):
        decision = Decision(None, float(probs[-1]), method, names[best], margin, False)
    else:
        decision = Decision(names[best], float(probs[best]), method, names[best], margin, False)
    candidates = [
        CandidateScore(names[i], float(probs[i]), {method: float(probs[i])}) for i in order
    ]
    return Ranking(child, decision, candidates, skipped)


class DetectorError(LineageError):
    """A bad detector config, input batch, training set or checkpoint."""

    code = "detector_error"


def is_integer(value: object) -> bool:
    """An ``int`` that is not a ``bool`` (which JSON and keyword arguments would let through)."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class DetectorConfig:
    """Architecture of a detector; stored in every checkpoint so the model can be rebuilt."""

    variant: str = "ours"
    embed_dim: int = 32
    n_scores: int = 0
    no_parent: bool = True
    heads: int = 4
    dropout: float = 0.0
    # Weight and feature images larger than this on a side are average-pooled down to it before
    # the convolutions, so the cost per pair is bounded for any layer size (a 1536 × 384 layer
    # included); the singular values of ``ours`` are taken from the full matrices.
    max_side: int = 16

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise DetectorError(
                f"unknown detector variant {self.variant!r}; expected one of {', '.join(VARIANTS)}"
            )
        for name, low in (("embed_dim", 1), ("n_scores", 0), ("heads", 1), ("max_side", 3)):
            value = getattr(self, name)
            if not is_integer(value) or value < low:
                raise DetectorError(f"detector {name} must be an integer >= {low}, got {value!r}")
        check_attention(self.embed_dim, self.heads, self.dropout)
        if not isinstance(self.no_parent, bool):
            raise DetectorError(f"detector no_parent must be true or false, got {self.no_parent!r}")
        if self.variant == "paper" and self.n_scores:
            raise DetectorError("the paper detector takes no scores: use n_scores=0 or 'ours'")

    def to_dict(self) -> dict:
        """The config as plain JSON-ready values."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> DetectorConfig:
        """Rebuild a config, refusing unknown keys (a newer or foreign checkpoint)."""
        return config_from_dict(cls, data)


def check_attention(embed_dim: int, heads: int, dropout: object) -> None:
    """Refuse an attention width that heads do not divide, or a dropout outside [0, 1)."""
    if embed_dim % heads:
        raise DetectorError(
            f"detector embed_dim ({embed_dim}) must be divisible by heads ({heads})"
        )
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise DetectorError(f"detector dropout must be a number in [0, 1), got {dropout!r}")


def config_from_dict(cls, data: object):
    """A detector config dataclass ``cls`` from stored JSON, refusing anything but an object of
    its own keys (a newer or foreign checkpoint)."""
    if not isinstance(data, dict):
        raise DetectorError(f"detector config must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise DetectorError(f"unknown detector config keys: {', '.join(map(str, unknown))}")
    return cls(**data)


def _conv_encoder(hidden: int, dim: int) -> nn.Sequential:
    """(M, 2, H, W) → (M, E): 1×1 conv + ReLU → 3×3 conv + BatchNorm + ReLU → average pool."""
    return nn.Sequential(
        nn.Conv2d(2, hidden, 1),
        nn.ReLU(),
        nn.Conv2d(hidden, dim, 3, padding=1),
        nn.BatchNorm2d(dim),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim), nn.Dropout(dropout)
        )

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.attn_norm(x)
        x = x + self.attn(h, h, h, key_padding_mask=key_padding_mask, need_weights=False)[0]
        return x + self.mlp(self.mlp_norm(x))


def standardize_candidates(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """z_k = (h_k − mean) / sqrt(var + ε) over the real candidates of each query, per dimension.

    h (B, K, E), mask (B, K); padded slots come out as 0. A lone candidate gives z = 0, not NaN.
    """
    m = mask.unsqueeze(-1).to(h.dtype)  # (B, K, 1)
    n = m.sum(1, keepdim=True)
    mean = (h * m).sum(1, keepdim=True) / n
    var = ((h - mean).pow(2) * m).sum(1, keepdim=True) / n
    return (h - mean) / torch.sqrt(var + STANDARDIZE_EPS) * m


def _per_child_scale(x: torch.Tensor) -> torch.Tensor:
    """Divide both channels of each (2, H, W) image by the RMS of its child channel."""
    rms = x[:, 1:2].pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()  # (M, 1, 1, 1)
    return x / rms.clamp_min(RMS_FLOOR)


def _spectrum(w: torch.Tensor) -> torch.Tensor:
    """(M, 2, H, W) → (M, 48): the top singular values of parent and child and their difference.

    Both spectra are divided by the child's largest singular value, which keeps the parent/child
    ratio of norms; zero-padded to SPECTRUM_SIZE for matrices with fewer singular values.
    """
    k = min(SPECTRUM_SIZE, w.shape[-2], w.shape[-1])
    sv = torch.linalg.svdvals(w.float())[..., :k]  # (M, 2, k), descending
    sv = sv / sv[:, 1:2, :1].clamp_min(RMS_FLOOR)
    sv = F.pad(sv, (0, SPECTRUM_SIZE - k)).to(w.dtype)
    parent, child = sv[:, 0], sv[:, 1]
    return torch.cat([parent, child, parent - child], dim=-1)


class LineageDetector(nn.Module):
    """Scores K candidate parents of a child (and "no parent"); see the module docstring.

    Parameters at E = 32: ``paper`` 6,323; ``ours`` with S = 4 27,153 (S = 0: 26,993).
    """

    def __init__(self, config: DetectorConfig):
        super().__init__()
        self.config = config
        dim = config.embed_dim
        paper = config.variant == "paper"
        hidden = 3 if paper else 8
        self.weight_encoder = _conv_encoder(hidden, dim)
        self.feature_encoder = _conv_encoder(hidden, dim)
        self.cls = nn.Parameter(torch.randn(dim) * 0.02)
        self.type_embedding = nn.Parameter(torch.randn(2 if paper else 4, dim) * 0.02)
        if paper:
            self.attention = nn.MultiheadAttention(
                dim, config.heads, dropout=config.dropout, batch_first=True
            )
        else:
            self.score_proj = nn.Linear(config.n_scores, dim) if config.n_scores else None
            self.spectrum_mlp = nn.Sequential(
                nn.Linear(3 * SPECTRUM_SIZE, dim), nn.GELU(), nn.Linear(dim, dim)
            )
            self.pair_block = Block(dim, config.heads, config.dropout)
            self.pair_norm = nn.LayerNorm(dim)
            self.merge = nn.Linear(2 * dim, dim)
            self.cross_block = Block(dim, config.heads, config.dropout)
            self.cross_norm = nn.LayerNorm(dim)
        self.no_parent = nn.Parameter(torch.randn(dim) * 0.02) if config.no_parent else None
        self.head = nn.Linear(dim, 1)

    def forward(
        self,
        weights: torch.Tensor,
        features: torch.Tensor,
        scores: torch.Tensor | None,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """Logits (B, K + 1) with column K = no parent, or (B, K); padded slots ≈ −∞."""
        self._check_inputs(weights, features, scores, mask)
        batch, k = mask.shape
        dtype = self.head.weight.dtype
        real = mask.reshape(-1)

        def pick(t: torch.Tensor) -> torch.Tensor:  # (B, K, ...) → (M, ...), real slots only
            return t.reshape(batch * k, *t.shape[2:])[real].to(dtype)

        # Only real slots are encoded, so padding never enters BatchNorm's statistics.
        w, f = pick(weights), pick(features)
        small_w, small_f = self._pooled(w), self._pooled(f)
        if self.config.variant == "paper":
            pair = self._pair_paper(small_w, small_f)
        else:
            scores_ = pick(scores) if self.config.n_scores else None
            pair = self._pair_ours(small_w, small_f, w, scores_)
        h = pair.new_zeros(batch * k, pair.shape[-1])
        h[real] = pair
        h = h.view(batch, k, -1)  # (B, K, E)
        z = standardize_candidates(h, mask)
        logits = (
            self._head_paper(z) if self.config.variant == "paper" else self._head_ours(z, h, mask)
        )
        keep = mask
        if self.no_parent is not None:
            keep = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        return logits.masked_fill(~keep, torch.finfo(logits.dtype).min / 2)

    def _pair_paper(self, w: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        tw = self.weight_encoder(w) + self.type_embedding[0]
        tf = self.feature_encoder(f) + self.type_embedding[1]
        tokens = torch.stack([self.cls.expand_as(tw), tw, tf], dim=1)  # (M, 3, E)
        return self.attention(tokens, tokens, tokens, need_weights=False)[0][:, 0]

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        side = self.config.max_side
        if x.shape[-2] <= side and x.shape[-1] <= side:
            return x
        return F.adaptive_avg_pool2d(x, (min(x.shape[-2], side), min(x.shape[-1], side)))

    def _pair_ours(
        self, w: torch.Tensor, f: torch.Tensor, full_w: torch.Tensor, s: torch.Tensor | None
    ) -> torch.Tensor:
        tw = self.weight_encoder(_per_child_scale(w)) + self.type_embedding[0]
        tokens = [self.cls.expand_as(tw), tw]
        tokens.append(self.feature_encoder(_per_child_scale(f)) + self.type_embedding[1])
        if s is not None:
            tokens.append(self.score_proj(s) + self.type_embedding[2])
        tokens.append(self.spectrum_mlp(_spectrum(full_w)) + self.type_embedding[3])
        x = self.pair_block(torch.stack(tokens, dim=1))  # (M, T, E)
        return self.pair_norm(x[:, 0])

    def _with_no_parent(self, x: torch.Tensor) -> torch.Tensor:
        if self.no_parent is None:
            return x
        return torch.cat([x, self.no_parent.expand(x.shape[0], 1, -1)], dim=1)

    def _head_paper(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self._with_no_parent(z)).squeeze(-1)

    def _head_ours(self, z: torch.Tensor, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self._with_no_parent(self.merge(torch.cat([z, h], dim=-1)))
        padding = ~mask
        if self.no_parent is not None:
            padding = torch.cat([padding, padding.new_zeros(mask.shape[0], 1)], dim=1)
        x = self.cross_block(x, key_padding_mask=padding)
        return self.head(self.cross_norm(x)).squeeze(-1)

    def _check_inputs(self, weights, features, scores, mask) -> None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.ndim != 2:
            raise DetectorError("mask must be a bool tensor of shape (B, K)")
        batch, k = mask.shape
        if batch == 0 or k == 0:
            raise DetectorError(f"empty batch: mask has shape {tuple(mask.shape)}")
        for name, t, dims in (
            ("weights", weights, "(B, K, 2, H, W)"),
            ("features", features, "(B, K, 2, N, D)"),
        ):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise DetectorError(f"{name} must be a float tensor {dims}")
            if t.ndim != 5 or t.shape[2] != 2 or 0 in t.shape:
                raise DetectorError(f"{name} must have shape {dims}, got {tuple(t.shape)}")
            if t.shape[:2] != mask.shape:
                raise DetectorError(
                    f"{name} hold (B, K) = {tuple(t.shape[:2])} but mask is {(batch, k)}"
                )
            if not torch.isfinite(t).all():
                raise DetectorError(f"{name} hold NaN or infinity")
        n_scores = self.config.n_scores
        if n_scores:
            if not isinstance(scores, torch.Tensor) or scores.shape != (batch, k, n_scores):
                got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else None
                raise DetectorError(
                    f"detector expects scores of shape (B, K, S) = {(batch, k, n_scores)}, "
                    f"got {got}"
                )
            if not torch.isfinite(scores).all():
                raise DetectorError("scores hold NaN or infinity")
        elif scores is not None and scores.numel():
            raise DetectorError(
                f"detector was built with n_scores=0 but got scores of shape {tuple(scores.shape)}"
            )
        device = self.head.weight.device
        for name, t in (
            ("weights", weights),
            ("features", features),
            ("scores", scores),
            ("mask", mask),
        ):
            if t is not None and t.device != device:
                raise DetectorError(f"{name} are on {t.device}, the detector on {device}")
        empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise DetectorError(f"mask rows {empty} hold no real candidate")


# --- checkpoints -------------------------------------------------------------------------------


def write_checkpoint(
    model: nn.Module, path: str | Path, record: dict, checkpoint_format: str, version: str
) -> None:
    """Write a detector's weights, its ``config.to_dict()`` and ``record`` as one safetensors
    file with ``checkpoint_format`` and ``version`` in its metadata, atomically.

    A reader never sees a half-written file: the data goes to a temporary file in the same
    directory, which then replaces ``path``.
    """
    path = Path(path)
    try:
        record_json = json.dumps(record, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise DetectorError(f"record for {path} is not JSON-serialisable: {exc}") from exc
    state = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    metadata = {
        "format": checkpoint_format,
        "version": version,
        "config": json.dumps(model.config.to_dict(), sort_keys=True),
        "record": record_json,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise DetectorError(f"cannot write detector checkpoint {path}: {exc}") from exc
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would keep a shipped checkpoint from others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(model: LineageDetector, path: str | Path, record: dict) -> None:
    """Write a per-family detector (``write_checkpoint``)."""
    write_checkpoint(model, path, record, CHECKPOINT_FORMAT, CHECKPOINT_VERSION)


def _json_field(metadata: dict, key: str, path: Path) -> object:
    if key not in metadata:
        raise DetectorError(f"{path}: detector checkpoint has no {key!r} metadata")
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as exc:
        raise DetectorError(f"{path}: {key!r} metadata is not valid JSON: {exc}") from exc


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(sorted(names)[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def read_checkpoint(
    path: str | Path,
    build: Callable[[object], nn.Module],
    checkpoint_format: str,
    version: str,
    device: str | torch.device = "cpu",
    what: str = "lineage detector",
) -> tuple[nn.Module, dict]:
    """(detector in eval mode, record) from a file written by ``write_checkpoint`` with
    ``checkpoint_format`` and ``version`` (``what`` names it in errors); ``build(config)`` makes
    the detector from the stored
    config (``DetectorError`` or ``TypeError`` for a bad one). Nothing is unpickled; a missing,
    corrupt, foreign or mismatched file is a ``DetectorError`` that says which."""
    path = Path(path)
    if not path.is_file():
        raise DetectorError(f"no detector checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != checkpoint_format:
                raise DetectorError(
                    f"{path} is not a {what} checkpoint: 'format' metadata is "
                    f"{metadata.get('format')!r}, expected {checkpoint_format!r}"
                )
            if metadata.get("version") != version:
                raise DetectorError(
                    f"{path}: unsupported detector checkpoint version {metadata.get('version')!r}"
                )
            config = _json_field(metadata, "config", path)
            record = _json_field(metadata, "record", path)
            if not isinstance(record, dict):
                raise DetectorError(f"{path}: 'record' metadata must be a JSON object")
            # Built on the meta device: no memory, and the caller's random state is left alone.
            try:
                with torch.device("meta"):
                    model = build(config)
            except (DetectorError, TypeError) as exc:
                message = exc.message if isinstance(exc, DetectorError) else str(exc)
                raise DetectorError(f"{path}: bad detector config: {message}") from exc
            expected = model.state_dict()
            stored = set(handle.keys())
            missing, unexpected = set(expected) - stored, stored - set(expected)
            if missing or unexpected:
                parts = [f"missing tensors {_names(list(missing))}"] if missing else []
                parts += [f"unexpected tensors {_names(list(unexpected))}"] if unexpected else []
                raise DetectorError(f"{path} does not match its config: {'; '.join(parts)}")
            state = {}
            for name, want in expected.items():
                shape = tuple(handle.get_slice(name).get_shape())
                if shape != tuple(want.shape):
                    raise DetectorError(
                        f"{path}: tensor {name} has shape {shape}, the config needs "
                        f"{tuple(want.shape)}"
                    )
                tensor = handle.get_tensor(name)
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    raise DetectorError(f"{path}: tensor {name} holds NaN or infinity")
                state[name] = tensor
    except SafetensorError as exc:
        raise DetectorError(
            f"{path} is not a readable safetensors file (truncated or corrupt): {exc}"
        ) from exc
    model = model.to_empty(device=device)
    model.load_state_dict(state)
    return model.eval(), record


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[LineageDetector, dict]:
    """(per-family detector in eval mode, record) from a file written by ``save_checkpoint``."""
    return read_checkpoint(
        path,
        lambda config: LineageDetector(DetectorConfig.from_dict(config)),
        CHECKPOINT_FORMAT,
        CHECKPOINT_VERSION,
        device,
    )


# --- the examples a detector reads -----------------------------------------------------------


@dataclass
class DetectorExample:
    """One query: a child against K candidates; ``target`` is the parent's index, K for none."""

    weights: torch.Tensor  # (K, 2, H, W)
    features: torch.Tensor  # (K, 2, N, D)
    scores: torch.Tensor | None  # (K, S)
    target: int

    @property
    def num_candidates(self) -> int:
        return self.weights.shape[0]


def check_example(example: DetectorExample, i: int) -> None:
    """``DetectorError`` naming example ``i`` unless its tensors and target fit together."""
    w, f, s = example.weights, example.features, example.scores
    if w.ndim != 4 or w.shape[1] != 2 or 0 in w.shape:
        raise DetectorError(f"example {i}: weights must be (K, 2, H, W), got {tuple(w.shape)}")
    k = w.shape[0]
    if f.ndim != 4 or f.shape[:2] != (k, 2) or 0 in f.shape:
        raise DetectorError(f"example {i}: features must be ({k}, 2, N, D), got {tuple(f.shape)}")
    if s is not None and (s.ndim != 2 or s.shape[0] != k):
        raise DetectorError(f"example {i}: scores must be ({k}, S), got {tuple(s.shape)}")
    if not is_integer(example.target) or not 0 <= example.target <= k:
        raise DetectorError(f"example {i}: target {example.target!r} is not in 0..{k}")


def example_signature(example: DetectorExample) -> tuple:
    """The shapes a batch must share: (weights (2, H, W), features (2, N, D), S or None)."""
    scores = None if example.scores is None else example.scores.shape[1]
    return tuple(example.weights.shape[1:]), tuple(example.features.shape[1:]), scores


def collate(
    examples: Sequence[DetectorExample],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(weights, features, scores, mask, targets) padded to the batch's largest K.

    A no-parent target (K_i of its own example) becomes the batch's K, the no-parent column.
    """
    if not examples:
        raise DetectorError("cannot collate an empty batch")
    for i, example in enumerate(examples):
        check_example(example, i)
    first = example_signature(examples[0])
    for i, example in enumerate(examples):
        shapes = example_signature(example)
        if shapes != first:
            raise DetectorError(
                f"example {i} has (weights, features, scores) shapes {shapes} but "
                f"example 0 has {first}; a batch must share H, W, N, D and S"
            )
    batch, k = len(examples), max(e.num_candidates for e in examples)
    ref = examples[0]
    weights = ref.weights.new_zeros(batch, k, *ref.weights.shape[1:])
    features = ref.features.new_zeros(batch, k, *ref.features.shape[1:])
    scores = None if ref.scores is None else ref.scores.new_zeros(batch, k, ref.scores.shape[1])
    mask = torch.zeros(batch, k, dtype=torch.bool)
    targets = torch.empty(batch, dtype=torch.long)
    for i, e in enumerate(examples):
        n = e.num_candidates
        weights[i, :n], features[i, :n], mask[i, :n] = e.weights, e.features, True
        if scores is not None:
            scores[i, :n] = e.scores
        targets[i] = k if e.target == n else e.target
    return weights, features, scores, mask, targets
