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
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from app.engine.errors import IncompatibleModels
from app.engine.model_files import TORCH_DTYPES, LoadedModel


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


@dataclass(frozen=True)
class _Step:
    """One streaming step: elements ``begin:end`` of the child's tensor ``name`` and of the
    corresponding tensor of each candidate in ``members``."""

    name: str
    members: tuple[int, ...]
    begin: int
    end: int
    shared: bool  # every candidate has the tensor (the outward ratios use it)
    last: bool  # the tensor's last block


class _Reader:
    """Reads a step's blocks into one of two reusable float32 buffers, so that the next step
    can be read (positioned reads release the GIL) while this one is compared."""

    def __init__(self, candidates, child, matches, size: int):
        self.candidates, self.child, self.matches = candidates, child, matches
        self.buffers = [torch.empty(size, dtype=torch.float32) for _ in range(2)]
        self.scratch: list[dict[torch.dtype, torch.Tensor]] = [{}, {}]
        self.turn = 0

    def _into(self, weights, name: str, begin: int, end: int, row, slot: int) -> None:
        stored = TORCH_DTYPES[weights.infos[name].dtype]
        if stored == torch.float32:
            weights.read_into(name, begin, end, row)
            return
        scratch = self.scratch[slot].get(stored)
        if scratch is None or scratch.numel() < row.numel():
            scratch = self.scratch[slot][stored] = torch.empty(row.numel(), dtype=stored)
        row.copy_(weights.read_into(name, begin, end, scratch[: row.numel()]))

    def read(self, step: _Step) -> tuple[torch.Tensor, torch.Tensor]:
        """(stacked candidates' blocks (len(members), width), the child's block (width,))."""
        slot, self.turn = self.turn, 1 - self.turn
        width = step.end - step.begin
        flat = self.buffers[slot][: (len(step.members) + 1) * width]
        stacked, mine = flat[:-width].view(len(step.members), width), flat[-width:]
        for row, i in enumerate(step.members):
            name = self.matches[i][step.name]
            self._into(self.candidates[i].weights, name, step.begin, step.end, stacked[row], slot)
        self._into(self.child.weights, step.name, step.begin, step.end, mine, slot)
        return stacked, mine


def _steps(child: LoadedModel, matches: list[dict], outward: bool, budget: int) -> list[_Step]:
    steps = []
    for name, info in child.weights.infos.items():
        members = tuple(i for i, m in enumerate(matches) if name in m)
        if not members:
            continue
        shared = outward and len(members) == len(matches)
        width = max(budget // (len(members) + 1), MIN_BLOCK)
        for begin in range(0, info.numel, width):
            end = min(begin + width, info.numel)
            steps.append(_Step(name, members, begin, end, shared, end == info.numel))
    return steps


# Columns compared per in-place pass: the difference and its norm stay close in cache, and the
# float32 sums stay short (float64 across chunks).
CHUNK = 1 << 17


def _squared_distances(stacked: torch.Tensor, mine: torch.Tensor) -> torch.Tensor:
    """‖row − mine‖² of each row of ``stacked``, float64 on the CPU; ``stacked`` is overwritten
    with the differences (in place, chunk by chunk: no temporary the size of the block)."""
    total = torch.zeros(stacked.shape[0], dtype=torch.float64, device=stacked.device)
    for begin in range(0, stacked.shape[1], CHUNK):
        part = stacked[:, begin : begin + CHUNK].sub_(mine[begin : begin + CHUNK])
        total += torch.linalg.vector_norm(part, dim=1).double().pow(2)
    return total.cpu()


def _difference_gram(stacked: torch.Tensor, mine: torch.Tensor) -> torch.Tensor:
    """G_ij = (row_i − mine)·(row_j − mine), (K, K) float64 on the CPU, whose diagonal is
    ``_squared_distances``; ``stacked`` is overwritten with the differences, chunk by chunk, each
    chunk's product taken while it is still in cache (one pass over the block)."""
    rows = stacked.shape[0]
    total = torch.zeros(rows, rows, dtype=torch.float64, device=stacked.device)
    for begin in range(0, stacked.shape[1], CHUNK):
        part = stacked[:, begin : begin + CHUNK].sub_(mine[begin : begin + CHUNK])
        total += (part @ part.T).double()
    return total.cpu()


def stored_squared_norm(model: LoadedModel, name: str) -> float | None:
    """‖θ^name‖² from the statistics registration stored (Σσ² = ‖W‖²_F; Σv² of the sorted
    values), or None where the model has none loaded; summed once per model and tensor."""
    statistics = model.cache.get("spectrum", {}).get(name)
    if statistics is None:
        return None
    sums = model.cache.setdefault("squared_norm", {})
    if name not in sums:
        sums[name] = float(statistics.pow(2).sum())
    return sums[name]


def weight_evidence(
    candidates: list[LoadedModel],
    child: LoadedModel,
    device: torch.device | str = "cpu",
    *,
    outward: bool = False,
    block_budget: int = BLOCK_BUDGET,
) -> tuple[list[PairWeights], list[float] | None]:
    """Every candidate's ``PairWeights`` against ``child`` and, with ``outward``, the outward
    ratios: ``weight_pass`` without the pairwise matrix."""
    evidence, ratios, _ = weight_pass(
        candidates, child, device, outward=outward, block_budget=block_budget
    )
    return evidence, ratios


_THREADS_LOCK = threading.Lock()
# Passes in progress, and torch's thread count before the first of them lowered it.
_threads = {"passes": 0, "before": 0}


@contextmanager
def _a_core_for_the_reader(device: torch.device | str) -> Iterator[None]:
    """On the CPU, one thread fewer for torch's arithmetic while a pass's reader prefetches:
    with both on every core they contend (a BERT-base pass over 16 candidates on 2 cores: 1.7 s
    with one arithmetic thread, 2.2 s with two). Concurrent passes share the lowered count; the
    last one to finish restores it."""
    if torch.device(device).type != "cpu":
        yield
        return
    with _THREADS_LOCK:
        if not _threads["passes"]:
            _threads["before"] = torch.get_num_threads()
            torch.set_num_threads(max(1, _threads["before"] - 1))
        _threads["passes"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _threads["passes"] -= 1
            if not _threads["passes"]:
                torch.set_num_threads(_threads["before"])


def weight_pass(
    candidates: list[LoadedModel],
    child: LoadedModel,
    device: torch.device | str = "cpu",
    *,
    outward: bool = False,
    block_budget: int = BLOCK_BUDGET,
) -> tuple[list[PairWeights], list[float] | None, np.ndarray | None]:
    """Every candidate's ``PairWeights`` against ``child``, in one streaming pass over the child's
    tensors; with ``outward``, also ``outward_log_ratios`` (else None).

    For each of the child's tensors, the same block of elements is read from the child once and
    from every candidate that has the tensor (``matched_tensors``), straight into a reused
    float32 buffer, and compared in one vectorised step on ``device``, in place: the candidates'
    distances to the child, chunk by chunk. Their norms come from the statistics registration
    stored (else from the blocks), and the dot products from norms and distances, so each
    element is read once.
    The next step's blocks are read by a second thread meanwhile. Nothing else is held: memory
    is bounded by two buffers of ``block_budget`` float32 elements, not by the models' or the
    largest tensor's size. Sums are float32 within a chunk of ``CHUNK`` columns and float64
    across chunks. One candidate alone is the one-by-one path.

    With ``outward``, the third value is the (K+1)×(K+1) matrix of squared distances among
    [child, candidates...] over the tensors every candidate shares with the child, running
    statistics left out (``is_data_statistic``), and the outward ratios come from the same
    numbers: the Gram matrix of the differences d_k = θ_k − θ_c, one small product per chunk
    taken as the differences are made (its diagonal is then the distances to the child). Else
    None.
    """
    matches = [{c: p for p, c in matched_tensors(k, child)} for k in candidates]
    count = len(candidates)
    squared = torch.zeros(count, dtype=torch.float64)
    parent_squared = torch.zeros(count, dtype=torch.float64)
    cosines = torch.zeros(count, dtype=torch.float64)
    tensors = torch.zeros(count, dtype=torch.float64)
    gram = torch.zeros(count, count, dtype=torch.float64)  # Σ (θ_i − θ_c)·(θ_j − θ_c), shared
    data_gram = torch.zeros(count, count, dtype=torch.float64)  # the same, running statistics
    steps = _steps(child, matches, outward, block_budget)
    size = max(((len(s.members) + 1) * (s.end - s.begin) for s in steps), default=0)
    reader = _Reader(candidates, child, matches, size)
    p_sq = d_sq = stored = None
    c_sq = 0.0
    with (
        _a_core_for_the_reader(device),
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="weights") as pool,
    ):
        pending = pool.submit(reader.read, steps[0]) if steps else None
        for number, step in enumerate(steps):
            stacked, mine = pending.result()
            if number + 1 < len(steps):
                pending = pool.submit(reader.read, steps[number + 1])
            if p_sq is None:  # the tensor's first block
                stored = [
                    stored_squared_norm(candidates[i], matches[i][step.name]) for i in step.members
                ]
                p_sq = torch.tensor([0.0 if v is None else v for v in stored], dtype=torch.float64)
                d_sq = torch.zeros(len(step.members), dtype=torch.float64)
            stacked, mine = stacked.to(device), mine.to(device)
            for row, value in enumerate(stored):
                if value is None:  # no stored statistics: the norm from this block
                    p_sq[row] += float(torch.linalg.vector_norm(stacked[row])) ** 2
            c_sq += float(torch.linalg.vector_norm(mine)) ** 2
            if step.shared:  # d_k = θ_k − θ_c and their products, in one pass
                block_gram = _difference_gram(stacked, mine)
                d_sq += block_gram.diagonal()
                if is_data_statistic(step.name):
                    data_gram += block_gram
                else:
                    gram += block_gram
            else:
                d_sq += _squared_distances(stacked, mine)
            if step.last:
                index = torch.tensor(step.members)
                squared[index] += d_sq
                parent_squared[index] += p_sq
                # cos as torch's cosine_similarity computes it (norms floored at 1e-8), from
                # θ_k·θ_c = (‖θ_k‖² + ‖θ_c‖² − ‖θ_k − θ_c‖²) / 2
                dot = (p_sq + c_sq - d_sq) / 2
                norms = p_sq.sqrt().clamp_min(1e-8) * max(c_sq**0.5, 1e-8)
                cosines[index] += dot / norms
                tensors[index] += 1
                p_sq = d_sq = stored = None
                c_sq = 0.0
    evidence = [
        PairWeights(
            float(squared[i].sqrt()),
            float(cosines[i] / tensors[i]),
            float(parent_squared[i].sqrt()),
        )
        for i in range(count)
    ]
    ratios = squared_matrix = None
    if outward:
        # θ_k − θ̄ = d_k − d̄ and θ_c − θ̄ = −d̄ (d̄ the mean of the d_k), over every shared
        # tensor: ‖θ_c − θ̄‖² = mean(G) and ‖θ_k − θ̄‖² = G_kk − 2·mean_j G_kj + mean(G)
        whole = gram + data_gram
        child_spread = float(whole.mean())
        spread = whole.diagonal() - 2 * whole.mean(1) + child_spread
        floor = 1e-30
        ratios = [
            0.5 * (np.log(max(float(s), floor)) - np.log(max(child_spread, floor))) for s in spread
        ]
        diagonal = gram.diagonal()
        among = (diagonal[:, None] + diagonal[None, :] - 2 * gram).clamp_min(0.0)
        squared_matrix = np.zeros((count + 1, count + 1))
        squared_matrix[1:, 1:] = among.numpy()
        squared_matrix[0, 1:] = squared_matrix[1:, 0] = diagonal.numpy()
        np.fill_diagonal(squared_matrix, 0.0)
    return evidence, ratios, squared_matrix


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
    (with ``outward``), and keeps the squared distances among them for ``shared_squared``."""
    evidence, ratios, squared = weight_pass(candidates, child, device, outward=outward)
    cache = child.cache.setdefault("pair_weights", {})
    for candidate, pair in zip(candidates, evidence, strict=True):
        cache[_pair_key(candidate)] = pair
    if squared is not None:
        key = tuple(_pair_key(c) for c in candidates)
        child.cache.setdefault("shared_squared", {})[key] = squared
    return ratios


def is_data_statistic(name: str) -> bool:
    """Whether a tensor is a normalisation layer's running statistic (``running_mean``,
    ``running_var``): a measurement of the training data, not a learnt weight. Fine-tunes on
    alike inputs all move it alike, which would make siblings look related to one another."""
    return name.rsplit(".", 1)[-1].startswith("running_")


def shared_squared(
    candidates: list[LoadedModel], child: LoadedModel, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Squared distances among [child, candidates...] over the tensors they all share (the
    batched pass's, when it ran for these candidates; else one pass of its own)."""
    key = tuple(_pair_key(c) for c in candidates)
    cached = child.cache.get("shared_squared", {}).get(key)
    if cached is None:
        cached = weight_pass(candidates, child, device, outward=True)[2]
        child.cache.setdefault("shared_squared", {})[key] = cached
    return cached


def spectrum_squared(
    candidates: list[LoadedModel], child: LoadedModel, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Squared distances among [child, candidates...] between their permutation-invariant
    statistics (``invariant_statistics``), the permutation-blind counterpart of
    ``shared_squared``: over the tensors every candidate shares with the child, normalisation
    statistics left out (``is_data_statistic``), each tensor's statistics divided by their mean
    norm over these models so that every tensor weighs alike, whatever its size or scale."""
    matches = [{c: p for p, c in matched_tensors(k, child)} for k in candidates]
    names = [
        n for n in child.weights.infos if all(n in m for m in matches) and not is_data_statistic(n)
    ]
    count = len(candidates) + 1
    squared = np.zeros((count, count))
    for name in names:
        rows = [invariant_statistics(child, name, device)]
        rows += [
            invariant_statistics(k, m[name], device)
            for k, m in zip(candidates, matches, strict=True)
        ]
        stacked = torch.stack(rows)
        scale = float(torch.linalg.vector_norm(stacked, dim=1).mean())
        if scale > 0:
            stacked = stacked / scale
            squared += torch.cdist(stacked, stacked).pow(2).numpy()
    np.fill_diagonal(squared, 0.0)
    return squared


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
    metadata = {"sha256": model.sha256, "version": STATISTICS_VERSION}
    return save_derived(tensors, folder / STATISTICS_FILE, metadata)


def save_derived(tensors: dict[str, torch.Tensor], target: Path, metadata: dict) -> Path:
    """Write what was derived from a model's weights to ``target`` (safetensors, with
    ``metadata``), through a temporary file renamed into place: a reader never sees half a
    file, and a failure leaves nothing behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=metadata)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def stored_for(model: LoadedModel, folder: Path, tag: str | None) -> bool:
    """Whether what ``folder`` stores under ``tag`` (the SHA-256 it was derived from) belongs to
    ``model``'s weights: the tag is the model's SHA-256, or, for a model opened from ``folder``
    itself, the folder's name (storage names each folder by its weights' SHA-256)."""
    if tag is None:
        return False
    own_folder = Path(model.path).resolve() == Path(folder).resolve()
    return tag == model.sha256 or (own_folder and tag == Path(folder).name)


def load_statistics(model: LoadedModel, folder: Path) -> bool:
    """Put the statistics stored in ``folder`` by ``save_statistics`` into ``model``'s cache, so
    ``invariant_statistics`` reads them instead of computing them; False (and nothing loaded)
    when there are none, or they belong to other weights or another version.

    They belong to these weights when their tag is the model's SHA-256, or, for a model opened
    from ``folder`` itself, the folder's name: storage names each folder by its weights'
    SHA-256. (The benchmark's synthetic catalog rows stand for other models under ids of their
    own while naming real folders; they must not pay for statistics real models have stored.)"""
    path = folder / STATISTICS_FILE
    if not path.is_file():
        return False
    try:
        with safe_open(path, framework="pt") as stored:
            metadata = stored.metadata() or {}
            if not stored_for(model, folder, metadata.get("sha256")):
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
