"""A compact sketch per model, for shortlisting candidates: two parts per tensor, one of outputs.

**Raw weights** (``weight-l2``'s evidence): a count sketch of each tensor θ_t, every value added
with a seeded random sign into one of ``SKETCH_DIM`` seeded buckets (Charikar et al.), so that
‖c(θ_c,t) − c(θ_p,t)‖ estimates ‖θ_c,t − θ_p,t‖ without bias. A fine-tune stays near its parent
in weight space; this part finds it, but not a child whose hidden units were permuted.

**Spectra** (``weight-spectrum``'s evidence, blind to permuted units). Take
each comparable tensor t's invariant statistics s_t (``weightspace.invariant_statistics``:
singular values of a matrix, sorted values of a vector; both unchanged by permuting hidden units
or the residual stream). Short ones are kept as they are (zero-padded to ``SKETCH_DIM``); longer
ones are projected, r_t = R_t·s_t with R_t a Gaussian matrix of ``SKETCH_DIM`` rows scaled by
1/√SKETCH_DIM and seeded by the tensor's name and length, so every model maps the same tensor
the same way. Then for two models

    ‖r_c − r_p‖² = Σ_t ‖R_t (s_c,t − s_p,t)‖²  ≈  Σ_t ‖s_c,t − s_p,t‖² = spectrum_distance²

(Johnson–Lindenstrauss: each projected term is unbiased, and summing over many tensors averages
their error).

**Outputs** (function-space evidence, for a model with a config whose network the engine builds).
One forward pass, without gradients, on the architecture's fixed probes (``probes.probe_inputs``,
the pair methods' own) gives the model's features F (M × H): one row per probe, the input of
the head (``lineage-mlp``, ``lineage-cnn``) or, per probe token, the last hidden state
(``transformers``). What the part keeps is how the model relates the probes to one another: the
Gram matrix K = F̄·F̄ᵀ of the centred features, scaled to unit Frobenius norm, so that

    ‖K_c − K_p‖² = 2 − 2·CKA(F_c, F_p)   (linear centred kernel alignment)

which is unchanged by permuting hidden units or the residual stream (any orthogonal map of the
features, and their scale). K is kept as a count sketch of its M² entries into ``OUTPUT_DIM``
seeded buckets (seeded by M, so every model hashes the same entry the same way): 1,024 numbers
whatever the model's size, whose squared distance estimates ‖K_c − K_p‖² without bias, within
about √(2/1024) ≈ 4 % (with 256, the tiny GPT-2's teachers, often only 3–5 % nearer their distilled
students than the next model, were lost to that noise in 2 of 15 queries). Output
parts are compared only between sketches of the same ``outputs_key`` (a digest of the part's
version and of the probes). A student distilled from scratch shares no weight with its teacher,
only what it computes: this part finds it; it also ranks high the parent of a child whose hidden
units were permuted. (The predicted class distributions were tried first: they find distilled
students too, but on the small ResNet's benchmark zoos kept the parent of only 93 % of the
permuted children at K = 16, against 100 % with the features' Gram matrix.) A model without a
config, one whose network cannot be run, or one of more than ``OUTPUTS_MAX_PARAMETERS`` has no
output part.

A child's shortlist takes the nearest catalog models of its architecture by each part in turn
(weights, spectra, outputs; a part the child or a candidate lacks is skipped), so it holds the
nearest by each; only those are opened and scored. A catalog's stored sketches are compared as
they are read (``SketchScan``): a batch of one layout at a time, one vectorised difference.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from app.engine.architectures import model_state, network_for
from app.engine.errors import LineageError
from app.engine.model_files import LoadedModel
from app.engine.probes import probe_inputs
from app.engine.stored_outputs import output_name, stored_output
from app.engine.weightspace import invariant_statistics

SKETCH_DIM = 32
# The output part is OUTPUT_DIM numbers (4 KB). Bump OUTPUTS_VERSION when what it computes
# changes: output parts of another version are then never compared (their key differs).
OUTPUT_DIM = 1024
OUTPUTS_VERSION = "1"
# Larger models have no output part: their forward pass would hold a float32 copy of every weight
# (1.6 GB at this size) and cost registration more than the rest of their sketch.
OUTPUTS_MAX_PARAMETERS = 400_000_000
# Parts of a sketch, in the order a shortlist takes them.
PARTS = ("weights", "spectra", "outputs")


@lru_cache(maxsize=4096)
def _projection(name: str, length: int) -> np.ndarray:
    """R_t, (SKETCH_DIM, length), the same for every model: seeded by the tensor's name and
    length alone."""
    seed = zlib.crc32(f"{name}:{length}".encode())
    rng = np.random.default_rng(seed)
    return rng.standard_normal((SKETCH_DIM, length)) / np.sqrt(SKETCH_DIM)


def count_sketch(name: str, values: np.ndarray) -> np.ndarray:
    """c(θ_t) (SKETCH_DIM,): Σ_i s_i·θ_i into bucket h_i, with the signs s and buckets h seeded by
    the tensor's name and size, so every model hashes the same tensor the same way."""
    values = values.reshape(-1)
    rng = np.random.default_rng(zlib.crc32(f"count:{name}:{values.size}".encode()))
    buckets = rng.integers(0, SKETCH_DIM, values.size)
    signs = rng.integers(0, 2, values.size) * 2 - 1
    return np.bincount(buckets, weights=signs * values, minlength=SKETCH_DIM)


def tensor_sketch(name: str, statistics: np.ndarray) -> np.ndarray:
    """r_t (SKETCH_DIM,) of one tensor's invariant statistics: exact (zero-padded) when they
    fit, else their seeded projection."""
    length = statistics.shape[0]
    if length <= SKETCH_DIM:
        row = np.zeros(SKETCH_DIM)
        row[:length] = statistics
        return row
    return _projection(name, length) @ statistics


def layout_of(keys: list[tuple[str, int]] | tuple) -> str:
    """A short digest of a sketch's keys: models with the same tensors share it, so sketches are
    compared a layout at a time and a catalog stores each layout's keys once."""
    text = json.dumps([[name, length] for name, length in keys], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# Outputs ------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _gram_hashing(rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(buckets, signs) of the output part's count sketch, one per entry of an M × M Gram matrix,
    the same for every model: seeded by M alone."""
    rng = np.random.default_rng(zlib.crc32(f"outputs:gram:{rows}".encode()))
    buckets = rng.integers(0, OUTPUT_DIM, rows * rows).astype(np.int32)
    signs = (rng.integers(0, 2, rows * rows) * 2 - 1).astype(np.int8)
    return buckets, signs


def output_features(
    model: LoadedModel, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(F (M, H), the probes): the model's features on its architecture's probes, one row per
    probe (per probe token or image patch for ``transformers``: the last hidden state; the
    input of the head for ``lineage-mlp`` and ``lineage-cnn``), float64 on ``device``, from one
    forward pass without gradients. Raises ``LineageError`` when the network cannot be built or
    does not fit the weights."""
    network = network_for(model.config, device)
    probes = probe_inputs(network, device=device)
    transformers = network.family == "transformers"
    # (N, L·H) for transformers: L tokens or image patches; the features for the others
    use_head = transformers
    output = stored_output(model, output_name(network.config, use_head, probes))
    if output is None:  # not stored at registration: one forward pass
        # Read tensor by tensor into the state alone: the model keeps no float32 copy of itself.
        state, _ = model_state(network, model, device, keep=False)
        with torch.no_grad():
            output = network.output(state, probes, use_head)
    output = output.to(device).double()
    if transformers:
        return output.reshape(-1, int(network.module.config.hidden_size)), probes
    return output, probes


def output_sketch(
    model: LoadedModel, device: torch.device | str = "cpu"
) -> tuple[str, np.ndarray] | None:
    """(outputs_key, the count sketch of K, (OUTPUT_DIM,) float32) of ``model`` (see the
    module's docstring), or None when it has no output part: no config, a network the engine
    cannot build or run, or more than ``OUTPUTS_MAX_PARAMETERS``."""
    if not model.config or model.num_parameters > OUTPUTS_MAX_PARAMETERS:
        return None
    try:
        features, probes = output_features(model, device)
    except (LineageError, RuntimeError):
        return None
    features = features - features.mean(dim=0)
    gram = (features @ features.T).cpu().numpy()  # K (M, M): the probes' similarities
    norm = float(np.linalg.norm(gram))
    if norm > 0:
        gram /= norm
    buckets, signs = _gram_hashing(gram.shape[0])
    sketch = np.bincount(buckets, weights=signs * gram.reshape(-1), minlength=OUTPUT_DIM)
    digest = hashlib.sha256(f"outputs:{OUTPUTS_VERSION}:{list(probes.shape)}:".encode())
    digest.update(probes.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32], sketch.astype(np.float32)


# Sketches -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sketch:
    """A model's sketch: one row per comparable tensor, keyed by (name, statistics length); a
    row is the tensor's count sketch then its spectral sketch. ``layout`` digests the keys.
    ``outputs`` (OUTPUT_DIM,), comparable between sketches of the same ``outputs_key``; both
    None when the model has no output part."""

    keys: tuple[tuple[str, int], ...]
    rows: np.ndarray  # (T, 2·SKETCH_DIM) float32
    layout: str
    outputs: np.ndarray | None = None  # (OUTPUT_DIM,) float32
    outputs_key: str | None = None

    def to_bytes(self) -> bytes:
        """The rows as little-endian float32 bytes (the keys are stored beside them)."""
        return self.rows.astype("<f4").tobytes()

    def outputs_bytes(self) -> bytes | None:
        """The output part as little-endian float32 bytes, or None."""
        return None if self.outputs is None else self.outputs.astype("<f4").tobytes()

    @classmethod
    def from_stored(
        cls,
        keys: tuple,
        data: bytes,
        layout: str,
        outputs: bytes | None = None,
        outputs_key: str | None = None,
    ) -> Sketch:
        """A sketch from its layout's keys (shared by every sketch of that layout), its
        ``to_bytes`` data, its layout digest and, when it has one, its output part as
        ``outputs_bytes`` and its key (rows stored before output parts existed have none)."""
        rows = np.frombuffer(data, dtype="<f4").reshape(len(keys), 2 * SKETCH_DIM)
        vector = None
        if outputs is not None and outputs_key:
            vector = np.frombuffer(outputs, dtype="<f4").reshape(OUTPUT_DIM)
        return cls(keys, rows, layout, vector, outputs_key if vector is not None else None)


def stored_keys(keys: list) -> tuple[tuple[str, int], ...]:
    """Keys as stored in JSON ([[name, length], ...]) back as a sketch's tuple."""
    return tuple((str(name), int(length)) for name, length in keys)


def model_sketch(
    model: LoadedModel, device: torch.device | str = "cpu", *, outputs: bool = True
) -> Sketch:
    """The sketch of ``model``'s comparable tensors (float, not empty), in name order, from its
    invariant statistics (read from storage when they were stored), and, unless ``outputs`` is
    False, its output part (one forward pass on ``device``; see ``output_sketch``)."""
    names = sorted(n for n, i in model.weights.infos.items() if i.is_float and 0 not in i.shape)
    keys, rows = [], []
    for name in names:
        statistics = invariant_statistics(model, name).double().numpy()
        weights = model.weights[name].to(torch.float64).numpy()
        keys.append((name, statistics.shape[0]))
        rows.append(np.concatenate([count_sketch(name, weights), tensor_sketch(name, statistics)]))
    matrix = np.asarray(rows, dtype=np.float32).reshape(len(keys), 2 * SKETCH_DIM)
    part = output_sketch(model, device) if outputs else None
    key, vector = part if part is not None else (None, None)
    return Sketch(tuple(keys), matrix, layout_of(keys), vector, key)


# Distances and shortlists ------------------------------------------------------------------


class _Batch:
    """Sketches of one layout waiting to be compared, copied into one reused buffer with their
    halves apart: (B, 2, S, D), the raw-weight rows of a sketch then its spectral rows."""

    def __init__(self, tensors: int, size: int):
        self.rows = np.empty((size, 2, tensors, SKETCH_DIM), dtype=np.float32)
        self.positions: list[int] = []


class SketchScan:
    """The distances of many candidates' sketches to one child's, computed as they come (from a
    list, or streamed from the catalog's rows in any order): candidates of one layout are
    copied a batch at a time into one buffer and compared with the child's aligned rows as one
    vectorised difference, so no copy of the whole catalog is ever held. A distance is infinite
    where a part cannot be compared: no tensor in common, or no output part of the child's key.

    Candidates of a layout whose keys are not known yet are kept aside until ``finish`` is
    given them (a catalog reads each layout's keys once, after its sketches)."""

    BATCH = 64

    def __init__(self, child: Sketch, known: dict[str, tuple] | None = None):
        self.child = child
        self._keys: dict[str, tuple] = {child.layout: child.keys, **(known or {})}
        self._alignment: dict[str, tuple[np.ndarray, np.ndarray, bool] | None] = {}
        self._batches: dict[str, _Batch] = {}
        self._aside: dict[str, list[tuple[int, bytes | np.ndarray]]] = {}
        self._present: list[int] = []
        self._absent: list[int] = []  # a stored sketch that does not fit its layout's keys
        self._weights: list[tuple[list[int], np.ndarray]] = []  # (positions, (B, 2) distances)
        self._outputs: tuple[list[int], list[np.ndarray]] = ([], [])

    def add(
        self,
        position: int,
        layout: str | None,
        data: bytes | np.ndarray | None,
        outputs_key: str | None = None,
        outputs: bytes | np.ndarray | None = None,
    ) -> None:
        """Candidate ``position``'s stored sketch (its ``to_bytes`` data and layout, or its
        rows, and its output part); one without (stored before sketches existed) is not
        present."""
        if data is None or layout is None:
            return
        self._present.append(position)
        if layout in self._keys:
            self._take(position, layout, data)
        else:
            self._aside.setdefault(layout, []).append((position, data))
        if outputs is not None and outputs_key and outputs_key == self.child.outputs_key:
            vector = np.frombuffer(outputs, "<f4") if isinstance(outputs, bytes) else outputs
            if vector.size == OUTPUT_DIM:
                self._outputs[0].append(position)
                self._outputs[1].append(vector.reshape(OUTPUT_DIM))

    def unknown_layouts(self) -> set[str]:
        """Layouts seen whose keys the scan was not given."""
        return set(self._aside)

    def finish(
        self, count: int, keys: dict[str, tuple] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(distances (count, len(PARTS)), present (count,) bool) once every candidate is
        added, at positions below ``count``; ``keys``: those of the ``unknown_layouts`` (a layout
        left unknown compares as sharing no tensor)."""
        self._keys.update(keys or {})
        for layout, waiting in self._aside.items():
            for position, data in waiting:
                self._take(position, layout, data)
        self._aside = {}
        for layout in list(self._batches):
            self._flush(layout)
        distances = np.full((count, len(PARTS)), np.inf)
        for positions, values in self._weights:
            distances[positions, :2] = values
        positions, vectors = self._outputs
        if positions and self.child.outputs is not None:
            distances[positions, 2] = _output_distances(np.stack(vectors), self.child)
        present = np.zeros(count, dtype=bool)
        present[self._present] = True
        present[self._absent] = False
        return distances, present

    def _take(self, position: int, layout: str, data: bytes | np.ndarray) -> None:
        """Copy one sketch of a known layout into its batch (compared once the batch is full)."""
        if self._aligned(layout) is None:
            return  # infinite: nothing in common with the child
        batch = self._batches.get(layout)
        if batch is None:
            batch = self._batches[layout] = _Batch(len(self._keys[layout]), self.BATCH)
        rows = np.frombuffer(data, dtype="<f4") if isinstance(data, bytes) else data
        if rows.size != batch.rows[0].size:  # a stored sketch that does not fit its keys
            self._absent.append(position)
            return
        batch.rows[len(batch.positions)] = _as_halves(rows, batch.rows.shape[2])
        batch.positions.append(position)
        if len(batch.positions) == self.BATCH:
            self._flush(layout)

    def _aligned(self, layout: str) -> tuple[np.ndarray, np.ndarray, bool] | None:
        if layout not in self._alignment:
            self._alignment[layout] = _align(self.child, self._keys[layout])
        return self._alignment[layout]

    def _flush(self, layout: str) -> None:
        batch = self._batches[layout]
        if not batch.positions:
            return
        count = len(batch.positions)
        distances = _weight_distances(batch.rows[:count], self._aligned(layout), self.child)
        self._weights.append((batch.positions, distances))
        batch.positions = []


def _align(child: Sketch, keys: tuple) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """(child's rows, the layout's rows, whether the latter are all of them in order) of the
    tensors both have, or None when they share none."""
    index = {key: j for j, key in enumerate(keys)}
    shared = [(i, index[key]) for i, key in enumerate(child.keys) if key in index]
    if not shared:
        return None
    mine, theirs = (np.asarray(side) for side in zip(*shared, strict=True))
    everything = len(theirs) == len(index) and bool((theirs == np.arange(len(theirs))).all())
    return mine, theirs, everything


def _weight_distances(
    rows: np.ndarray, alignment: tuple[np.ndarray, np.ndarray, bool], child: Sketch
) -> np.ndarray:
    """(B, 2) distances of candidates' rows (B, 2, S, D) float32 to the child's aligned rows,
    one per half; ``rows`` is overwritten (in place: a shortlist needs an order, not digits).
    Each half of each candidate is one contiguous run, summed on its own: the same rows give the
    same distance in any batch and at any place in it (ties stay ties, and go to the oldest)."""
    mine, theirs, everything = alignment
    count = rows.shape[0]
    squared = rows if everything else rows[:, :, theirs]
    own = child.rows[mine].reshape(-1, 2, SKETCH_DIM).transpose(1, 0, 2)
    np.subtract(squared, own, out=squared)
    np.square(squared, out=squared)
    return np.sqrt(squared.reshape(count, 2, -1).sum(axis=2))


def _output_distances(vectors: np.ndarray, child: Sketch) -> np.ndarray:
    """(B,) distances of candidates' output parts (B, OUTPUT_DIM) to the child's."""
    difference = vectors - child.outputs
    np.square(difference, out=difference)
    return np.sqrt(difference.sum(axis=1))


def _as_halves(rows: np.ndarray, tensors: int) -> np.ndarray:
    """A stored sketch's (T·2·D,) values as (2, T, D): its raw-weight rows, then its spectral."""
    return rows.reshape(tensors, 2, SKETCH_DIM).transpose(1, 0, 2)


# What one process keeps of the catalog's sketches (``SketchIndex``), at most.
INDEX_MAX_BYTES = 512 * 2**20


class _Stack:
    """Rows appended one at a time, each under a model id, read back as one array (assembled
    when asked, after adds); a row replaced by a newer one of its id is no longer live."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape
        self.parts: list[np.ndarray] = []
        self.whole = np.empty((0, *shape), dtype=np.float32)
        self.ids: list[int] = []
        self.live: list[bool] = []

    def append(self, model_id: int, row: np.ndarray) -> int:
        self.parts.append(row.reshape(1, *self.shape).astype(np.float32, copy=False))
        self.ids.append(model_id)
        self.live.append(True)
        return len(self.ids) - 1

    def array(self) -> np.ndarray:
        if self.parts:
            self.whole = np.concatenate([self.whole, *self.parts])
            self.parts = []
        return self.whole

    def matches(self, order: np.ndarray, sorted_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(live rows whose id is among the query's, their positions in the query), given the
        query's ids sorted (``sorted_ids``) and the sorting ``order``."""
        ids = np.asarray(self.ids, dtype=np.int64)
        at = np.minimum(np.searchsorted(sorted_ids, ids), max(len(sorted_ids) - 1, 0))
        found = np.asarray(self.live, dtype=bool) & (sorted_ids[at] == ids)
        rows = np.flatnonzero(found)
        return rows, order[at[rows]]


@dataclass
class _Cached:
    sha256: str
    layout: str
    row: int
    outputs_key: str | None
    output_row: int | None


class SketchIndex:
    """A worker's copy of one catalog's sketches, kept between jobs, so that a shortlist costs
    one light query (the candidates' ids, no sketch) and one vectorised comparison.

    A stored sketch is a function of the weights, so an entry (a model id and its weights'
    SHA-256) never goes stale; a model registered before output parts existed is read again
    once its row has one (``has`` compares the output part's key). Which models are candidates
    is always read from the database, never kept. At most ``max_bytes`` of sketches are kept;
    beyond it ``add`` refuses, and the caller compares the rest as it reads them."""

    BATCH = 1024

    def __init__(self, max_bytes: int = INDEX_MAX_BYTES):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.keys: dict[str, tuple] = {}  # layout → its keys
        self._rows: dict[str, _Stack] = {}  # layout → (2, T, D) per entry
        self._outputs: dict[str, _Stack] = {}  # output key → (OUTPUT_DIM,) per entry
        self._entries: dict[int, _Cached] = {}
        self._misfits: set[tuple[int, str]] = set()  # a sketch that does not fit its layout

    def __len__(self) -> int:
        return len(self._entries)

    def has(self, model_id: int, sha256: str, outputs_key: str | None) -> bool:
        """Whether model ``model_id``'s entry, for these weights and output key, is kept."""
        entry = self._entries.get(model_id)
        if (model_id, sha256) in self._misfits:
            return True
        return entry is not None and entry.sha256 == sha256 and entry.outputs_key == outputs_key

    def misfit(self, model_id: int, sha256: str) -> bool:
        """Whether the model's stored sketch does not fit its layout's keys."""
        return (model_id, sha256) in self._misfits

    def add(
        self,
        model_id: int,
        sha256: str,
        layout: str,
        data: bytes,
        outputs_key: str | None,
        outputs: bytes | None,
    ) -> bool:
        """Keep one stored sketch (its layout's keys must be in ``keys``), replacing the id's
        earlier entry; False when that would exceed ``max_bytes`` (nothing kept)."""
        tensors = len(self.keys[layout])
        rows = np.frombuffer(data, dtype="<f4")
        if rows.size != tensors * 2 * SKETCH_DIM:
            self._misfits.add((model_id, sha256))
            return True
        vector = None if outputs is None else np.frombuffer(outputs, dtype="<f4")
        if vector is not None and (not outputs_key or vector.size != OUTPUT_DIM):
            vector = None
        size = rows.nbytes + (0 if vector is None else vector.nbytes)
        if self.bytes + size > self.max_bytes:
            return False
        old = self._entries.get(model_id)
        if old is not None:  # rows are appended, never moved: the old ones stop counting
            self._rows[old.layout].live[old.row] = False
            if old.output_row is not None:
                self._outputs[old.outputs_key].live[old.output_row] = False
        stack = self._rows.setdefault(layout, _Stack((2, tensors, SKETCH_DIM)))
        row = stack.append(model_id, _as_halves(rows, tensors))
        output_row = None
        if vector is not None:
            outputs_stack = self._outputs.setdefault(outputs_key, _Stack((OUTPUT_DIM,)))
            output_row = outputs_stack.append(model_id, vector)
        self._entries[model_id] = _Cached(sha256, layout, row, outputs_key, output_row)
        self.bytes += size
        return True

    def distances(self, child: Sketch, ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
        """(len(ids), len(PARTS)) distances to ``child`` of the kept entries of the models
        ``ids`` where ``wanted`` (infinite elsewhere, and where a part cannot be compared): the
        same numbers ``SketchScan`` gives for the same sketches, found without a loop over
        models (each layout's rows are matched to the query's ids by sorting)."""
        distances = np.full((len(ids), len(PARTS)), np.inf)
        if not len(ids):
            return distances
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        for layout, stack in self._rows.items():
            alignment = _align(child, self.keys[layout])
            if alignment is None:
                continue
            rows, positions = stack.matches(order, sorted_ids)
            keep = wanted[positions]
            rows, positions = rows[keep], positions[keep]
            if not len(rows):
                continue
            matrix = stack.array()
            for begin in range(0, len(rows), self.BATCH):
                part = slice(begin, begin + self.BATCH)
                distances[positions[part], :2] = _weight_distances(  # a copy: written over
                    matrix[rows[part]], alignment, child
                )
        stack = self._outputs.get(child.outputs_key) if child.outputs is not None else None
        if stack is not None:
            rows, positions = stack.matches(order, sorted_ids)
            keep = wanted[positions]
            rows, positions = rows[keep], positions[keep]
            matrix = stack.array()
            for begin in range(0, len(rows), self.BATCH):  # a batch at a time: stays in cache
                part = slice(begin, begin + self.BATCH)
                distances[positions[part], 2] = _output_distances(_take(matrix, rows[part]), child)
        return distances


def _take(matrix: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``matrix[rows]``: a view, not a copy, when the rows are consecutive (a catalog whose
    every kept sketch is a candidate, the usual case); for a reader that does not write."""
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows) and (np.diff(rows) == 1).all():
        return matrix[rows[0] : rows[-1] + 1]
    return matrix[rows]


def _distances_to_all(child: Sketch, candidates: list[Sketch]) -> np.ndarray:
    """(N, len(PARTS)) distances of ``candidates`` to ``child`` (see ``SketchScan``)."""
    scan = SketchScan(child, {c.layout: c.keys for c in candidates})
    for i, candidate in enumerate(candidates):
        scan.add(i, candidate.layout, candidate.rows, candidate.outputs_key, candidate.outputs)
    return scan.finish(len(candidates))[0]


def sketch_distances(child: Sketch, candidate: Sketch) -> tuple[float, float]:
    """(≈ weight-l2's distance, ≈ weight-spectrum's distance) between ``candidate`` and
    ``child``, over the tensors both have with the same statistics length (same name and shape,
    as ``weightspace.matched_tensors`` pairs them); infinite when they share none."""
    by_weights, by_spectra, _ = _distances_to_all(child, [candidate])[0]
    return float(by_weights), float(by_spectra)


def sketch_distance(child: Sketch, candidate: Sketch) -> float:
    """≈ spectrum_distance(candidate, child) (see ``sketch_distances``)."""
    return sketch_distances(child, candidate)[1]


def output_distance(child: Sketch, candidate: Sketch) -> float:
    """≈ ‖K_c − K_p‖ (Frobenius) between the two models' normalised Gram matrices of their
    features on the probes (see the module's docstring); infinite when either has no output
    part or their keys differ."""
    return float(_distances_to_all(child, [candidate])[0, 2])


def nearest(distances: np.ndarray, present: np.ndarray, size: int) -> list[int]:
    """Indices of ``size`` of the ``present`` rows of ``distances`` (N, parts): the nearest by
    each part in turn (each index once; a part's infinite distances are skipped), then, while
    there is room, the present rows no part could compare, in order; then every row not
    ``present`` (a candidate without a sketch is never dropped)."""
    orders = []
    for column in distances.T:
        finite = np.flatnonzero(present & np.isfinite(column))
        orders.append(finite[np.argsort(column[finite], kind="stable")])
    chosen: list[int] = []
    taken: set[int] = set()
    for rank in range(max((len(order) for order in orders), default=0)):
        for order in orders:
            if rank < len(order) and len(chosen) < size and int(order[rank]) not in taken:
                chosen.append(int(order[rank]))
                taken.add(int(order[rank]))
        if len(chosen) >= size:
            break
    for i in np.flatnonzero(present):
        if len(chosen) >= size:
            break
        if int(i) not in taken:
            chosen.append(int(i))
            taken.add(int(i))
    return chosen + [int(i) for i in np.flatnonzero(~present)]


def shortlist(child: Sketch, candidates: list[Sketch | None], size: int) -> list[int]:
    """Indices of ``size`` candidates near ``child``: the nearest by raw weights, by spectra and
    by outputs in turn (each index once), then every candidate without a sketch (never
    dropped)."""
    present = [i for i, c in enumerate(candidates) if c is not None]
    distances = np.full((len(candidates), len(PARTS)), np.inf)
    distances[present] = _distances_to_all(child, [candidates[i] for i in present])
    mask = np.zeros(len(candidates), dtype=bool)
    mask[present] = True
    return nearest(distances, mask, size)
