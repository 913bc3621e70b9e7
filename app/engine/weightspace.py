"""Weight-space evidence: compare θ_c with θ_p directly, no forward pass, no config needed.

Tensors are compared where both models have a float tensor of the same shape under the same name
(up to a base-model prefix such as ``bert.``), so a child whose head was replaced is compared on the
rest. ``fp16``/``bf16`` weights are compared in float32.

Hidden-unit permutation (the same function with scrambled weights) defeats ``weight-l2`` and
``weight-cos``. ``spectrum_distance`` compares permutation-invariant statistics instead: the
singular values of each weight matrix (conv kernels reshaped to (out, in·k·k)) and the sorted
values of each vector. Permuting the rows or columns of W, as a hidden-unit or residual-stream
permutation does, leaves both unchanged.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from app.engine.errors import IncompatibleModels
from app.engine.model_files import LoadedModel


def matched_tensors(parent: LoadedModel, child: LoadedModel) -> list[tuple[str, str]]:
    """(parent name, child name) pairs of float tensors with equal shapes.

    Names match exactly, or after dropping one leading module prefix on either side
    (``bert.encoder.x`` ↔ ``encoder.x``): task models prefix their base model's names.
    """
    p_info = {n: i for n, i in parent.weights.infos.items() if i.is_float and 0 not in i.shape}
    c_info = {n: i for n, i in child.weights.infos.items() if i.is_float and 0 not in i.shape}
    pairs = []
    c_by_suffix = {n.split(".", 1)[1]: n for n in c_info if "." in n}
    p_by_suffix = {n.split(".", 1)[1]: n for n in p_info if "." in n}
    for p_name, info in p_info.items():
        c_name = next(
            (
                c
                for c in (p_name, c_by_suffix.get(p_name))
                if c is not None and c in c_info and c_info[c].shape == info.shape
            ),
            None,
        )
        if c_name is not None:
            pairs.append((p_name, c_name))
    if not pairs:  # the parent carries the prefix, the child does not
        for c_name, info in c_info.items():
            p_name = p_by_suffix.get(c_name)
            if p_name is not None and p_info[p_name].shape == info.shape:
                pairs.append((p_name, c_name))
    if not pairs:
        raise IncompatibleModels(
            f"{child.name} and {parent.name} share no tensor of the same name and shape"
        )
    return pairs


# Elements (float32) that the blocks of one streaming step may hold together: the child's block
# and one block per candidate (64 MB). With the arithmetic's temporaries, weight-space scoring of
# any number of candidates of any size holds about three times this, whatever the largest tensor.
BLOCK_BUDGET = 1 << 24
MIN_BLOCK = 1 << 12


@dataclass(frozen=True)
class PairWeights:
    """One candidate's weight-space evidence against the child, over their matched tensors."""

    l2: float  # ‖θ_c − θ_p‖₂
    cosine: float  # mean over matched tensors of cos(θ_c^t, θ_p^t)
    parent_norm: float  # ‖θ_p‖₂ over the same tensors

    @property
    def relative(self) -> float:
        """‖θ_c − θ_p‖ / ‖θ_p‖."""
        return self.l2 / max(self.parent_norm, 1e-30)


def weight_evidence(
    candidates: list[LoadedModel],
    child: LoadedModel,
    device: torch.device | str = "cpu",
    *,
    outward: bool = False,
    block_budget: int = BLOCK_BUDGET,
) -> tuple[list[PairWeights], list[float] | None]:
    """Every candidate's ``PairWeights`` against ``child``, in one streaming pass over the child's
    tensors; with ``outward``, also ``outward_log_ratios`` (else None).

    For each of the child's tensors, the same block of elements is read from the child once and
    from every candidate that has the tensor (``matched_tensors``), stacked, and compared in one
    vectorised step on ``device``. Nothing else is held: memory is bounded by ``block_budget``
    float32 elements (and the arithmetic's temporaries), not by the models' or the largest
    tensor's size. Sums are float32 within a block and float64 across blocks. One candidate
    alone is the one-by-one path; it computes the same sums in the same order.
    """
    matches = [{c: p for p, c in matched_tensors(k, child)} for k in candidates]
    count = len(candidates)
    squared = torch.zeros(count, dtype=torch.float64)
    parent_squared = torch.zeros(count, dtype=torch.float64)
    cosines = torch.zeros(count, dtype=torch.float64)
    tensors = torch.zeros(count, dtype=torch.float64)
    spread = torch.zeros(count, dtype=torch.float64)  # Σ ‖θ_k − θ̄‖² over shared tensors
    child_spread = 0.0
    for name, info in child.weights.infos.items():
        members = [i for i, m in enumerate(matches) if name in m]
        if not members:
            continue
        shared = outward and len(members) == count
        step = max(block_budget // (len(members) + 1), MIN_BLOCK)
        dot = torch.zeros(len(members), dtype=torch.float64)
        p_sq = torch.zeros(len(members), dtype=torch.float64)
        c_sq = 0.0
        d_sq = torch.zeros(len(members), dtype=torch.float64)
        block = torch.empty((len(members), min(step, info.numel)), dtype=torch.float32)
        for begin in range(0, info.numel, step):
            end = min(begin + step, info.numel)
            width = end - begin
            for row, i in enumerate(members):
                block[row, :width].copy_(
                    candidates[i].weights.read_block(matches[i][name], begin, end)
                )
            stacked = block[:, :width].to(device)
            mine = child.weights.read_block(name, begin, end).to(device, torch.float32)
            # norms rather than squares and sums: no (K, n) temporary beyond the difference
            d_sq += torch.linalg.vector_norm(stacked - mine, dim=1).double().cpu().pow(2)
            dot += (stacked @ mine).double().cpu()
            p_sq += torch.linalg.vector_norm(stacked, dim=1).double().cpu().pow(2)
            c_sq += float(torch.linalg.vector_norm(mine)) ** 2
            if shared:
                centre = stacked.mean(0)
                spread += (stacked - centre).pow(2).sum(1).double().cpu()
                child_spread += float((mine - centre).pow(2).sum())
        index = torch.tensor(members)
        squared[index] += d_sq
        parent_squared[index] += p_sq
        # cos as torch's cosine_similarity computes it: norms floored at 1e-8
        norms = p_sq.sqrt().clamp_min(1e-8) * max(c_sq**0.5, 1e-8)
        cosines[index] += dot / norms
        tensors[index] += 1
    evidence = [
        PairWeights(
            float(squared[i].sqrt()),
            float(cosines[i] / tensors[i]),
            float(parent_squared[i].sqrt()),
        )
        for i in range(count)
    ]
    ratios = None
    if outward:
        floor = 1e-30
        ratios = [
            0.5 * (np.log(max(float(s), floor)) - np.log(max(child_spread, floor))) for s in spread
        ]
    return evidence, ratios


def _pair_key(parent: LoadedModel) -> tuple[str, str]:
    return (parent.name, parent.sha256)


def pair_weights(
    parent: LoadedModel, child: LoadedModel, device: torch.device | str = "cpu"
) -> PairWeights:
    """``PairWeights`` of one (parent, child) pair, kept in the child's cache per parent (where
    ``cache_weight_evidence`` may have put it already)."""
    cache = child.cache.setdefault("pair_weights", {})
    key = _pair_key(parent)
    if key not in cache:
        cache[key] = weight_evidence([parent], child, device)[0][0]
    return cache[key]


def cache_weight_evidence(
    candidates: list[LoadedModel],
    child: LoadedModel,
    device: torch.device | str = "cpu",
    *,
    outward: bool = False,
) -> list[float] | None:
    """Batched scoring: every candidate's ``PairWeights`` in one pass (``weight_evidence``),
    left in the child's cache where ``pair_weights`` finds them; returns the outward ratios
    (with ``outward``)."""
    evidence, ratios = weight_evidence(candidates, child, device, outward=outward)
    cache = child.cache.setdefault("pair_weights", {})
    for candidate, pair in zip(candidates, evidence, strict=True):
        cache[_pair_key(candidate)] = pair
    return ratios


def l2_distance(parent: LoadedModel, child: LoadedModel) -> float:
    """‖θ_c − θ_p‖₂ over the matched tensors."""
    return pair_weights(parent, child).l2


def mean_cosine(parent: LoadedModel, child: LoadedModel) -> float:
    """Mean over matched tensors of cos(θ_c^t, θ_p^t)."""
    return pair_weights(parent, child).cosine


def invariant_statistics(
    model: LoadedModel, name: str, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Permutation-invariant summary of one tensor: singular values (matrices), sorted values;
    float64 on the CPU, computed on ``device`` (a GPU's eigensolver for its matrices)."""
    cache = model.cache.setdefault("spectrum", {})
    if name not in cache:
        # One tensor at a time unless the model's float32 copy is already built (registration
        # computes every tensor's statistics without ever holding the whole model in float32).
        floats = model.cached_float_tensors()
        tensor = floats[name] if floats is not None else model.weights[name].float()
        tensor = tensor.to(device)
        if tensor.ndim >= 2:
            matrix = tensor.reshape(tensor.shape[0], -1)
            # σ(W) = sqrt(eig(WᵀW)) on the smaller side: an embedding of 30k rows costs a 384×384
            # eigenproblem instead of a 30k×384 SVD.
            gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
            if gram.device.type == "cpu":
                # numpy's LAPACK: torch's CPU eigvalsh took 0.67 s on a 384×384 matrix, numpy 0.03.
                eigenvalues = torch.from_numpy(np.linalg.eigvalsh(gram.double().numpy()))
            else:
                eigenvalues = torch.linalg.eigvalsh(gram.double()).cpu()
            cache[name] = eigenvalues.clamp_min(0.0).flip(0).sqrt()
        else:
            cache[name] = tensor.reshape(-1).double().sort().values.cpu()
    return cache[name]


# Where a model folder keeps what was derived from its weights once (a hidden folder: the model's
# own files are never touched, and no weight-file glob sees it).
STATISTICS_FILE = Path(".lineage") / "statistics.safetensors"
# Bump when invariant_statistics changes what it computes: stored files of another version are
# ignored and the statistics computed afresh.
STATISTICS_VERSION = "1"


def save_statistics(model: LoadedModel, folder: Path, device: torch.device | str = "cpu") -> Path:
    """Compute the invariant statistics of every comparable tensor of ``model`` and store them in
    ``folder/.lineage/statistics.safetensors`` (float64, keyed by tensor name, tagged with the
    model's SHA-256 and ``STATISTICS_VERSION``), written to a temporary file and renamed, so a
    reader never sees half a file. Computed on ``device``."""
    names = [n for n, i in model.weights.infos.items() if i.is_float and 0 not in i.shape]
    tensors = {name: invariant_statistics(model, name, device).contiguous() for name in names}
    target = folder / STATISTICS_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    os.close(handle)
    try:
        metadata = {"sha256": model.sha256, "version": STATISTICS_VERSION}
        save_file(tensors, temporary, metadata=metadata)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def load_statistics(model: LoadedModel, folder: Path) -> bool:
    """Put the statistics stored in ``folder`` by ``save_statistics`` into ``model``'s cache, so
    ``invariant_statistics`` reads them instead of computing them; False (and nothing loaded)
    when there are none, or they belong to other weights or another version."""
    path = folder / STATISTICS_FILE
    if not path.is_file():
        return False
    try:
        with safe_open(path, framework="pt") as stored:
            metadata = stored.metadata() or {}
            if metadata.get("sha256") != model.sha256:
                return False
            if metadata.get("version") != STATISTICS_VERSION:
                return False
            loaded = {name: stored.get_tensor(name) for name in stored.keys()}  # noqa: SIM118
    except (OSError, SafetensorError):
        return False  # unreadable: computed afresh, as if never stored
    model.cache.setdefault("spectrum", {}).update(loaded)
    return True


def spectrum_distance(
    parent: LoadedModel, child: LoadedModel, device: torch.device | str = "cpu"
) -> float:
    """sqrt(Σ_t ‖σ(θ_c^t) − σ(θ_p^t)‖²) with σ the invariant statistics above (stored ones where
    registration stored them, else computed on ``device``)."""
    total = 0.0
    for p_name, c_name in matched_tensors(parent, child):
        mine = invariant_statistics(child, c_name, device)
        diff = mine - invariant_statistics(parent, p_name, device)
        total += float(diff.pow(2).sum())
    return total**0.5


def relative_l2_distance(parent: LoadedModel, child: LoadedModel) -> float:
    """‖θ_c − θ_p‖ / ‖θ_p‖ over the matched tensors."""
    return pair_weights(parent, child).relative


def outward_log_ratios(candidates: list[LoadedModel], child: LoadedModel) -> list[float]:
    """log(‖θ_k − θ̄‖ / ‖θ_c − θ̄‖) for each candidate k, θ̄ the candidates' mean weights.

    Fine-tuning moves a model away from its family: seen from the candidates' centre (an
    estimate of their common root, as in task arithmetic), a parent lies nearer than its child,
    and the child's own descendants lie farther. A positive ratio marks a candidate that looks
    like a descendant of the child rather than an ancestor. Computed over the tensors every
    candidate shares with the child, a block at a time (``weight_evidence``).
    """
    return weight_evidence(candidates, child, outward=True)[1]
