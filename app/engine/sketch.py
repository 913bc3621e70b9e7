"""A compact weight sketch per model, for shortlisting candidates: two parts per tensor.

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

A child's shortlist takes the nearest catalog models of its architecture by each part in turn,
so it holds both the nearest in weights and the nearest in spectra; only those are opened and
scored. Neither part can find a parent whose weights the child never inherited (a student
distilled from scratch): weight evidence has nothing to go on there.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from app.engine.model_files import LoadedModel
from app.engine.weightspace import invariant_statistics

SKETCH_DIM = 32


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


@dataclass(frozen=True)
class Sketch:
    """A model's sketch: one row per comparable tensor, keyed by (name, statistics length); a
    row is the tensor's count sketch then its spectral sketch. ``layout`` digests the keys."""

    keys: tuple[tuple[str, int], ...]
    rows: np.ndarray  # (T, 2·SKETCH_DIM) float32
    layout: str

    def to_bytes(self) -> bytes:
        """The rows as little-endian float32 bytes (the keys are stored beside them)."""
        return self.rows.astype("<f4").tobytes()

    @classmethod
    def from_stored(cls, keys: tuple, data: bytes, layout: str) -> Sketch:
        """A sketch from its layout's keys (shared by every sketch of that layout), its
        ``to_bytes`` data and its layout digest."""
        rows = np.frombuffer(data, dtype="<f4").reshape(len(keys), 2 * SKETCH_DIM)
        return cls(keys, rows, layout)


def stored_keys(keys: list) -> tuple[tuple[str, int], ...]:
    """Keys as stored in JSON ([[name, length], ...]) back as a sketch's tuple."""
    return tuple((str(name), int(length)) for name, length in keys)


def model_sketch(model: LoadedModel) -> Sketch:
    """The sketch of ``model``'s comparable tensors (float, not empty), in name order, from its
    invariant statistics (read from storage when they were stored)."""
    names = sorted(n for n, i in model.weights.infos.items() if i.is_float and 0 not in i.shape)
    keys, rows = [], []
    for name in names:
        statistics = invariant_statistics(model, name).double().numpy()
        weights = model.weights[name].to(torch.float64).numpy()
        keys.append((name, statistics.shape[0]))
        rows.append(np.concatenate([count_sketch(name, weights), tensor_sketch(name, statistics)]))
    matrix = np.asarray(rows, dtype=np.float32).reshape(len(keys), 2 * SKETCH_DIM)
    return Sketch(tuple(keys), matrix, layout_of(keys))


def sketch_distances(child: Sketch, candidate: Sketch) -> tuple[float, float]:
    """(≈ weight-l2's distance, ≈ weight-spectrum's distance) between ``candidate`` and
    ``child``, over the tensors both have with the same statistics length (same name and shape,
    as ``weightspace.matched_tensors`` pairs them); infinite when they share none."""
    by_weights, by_spectra = _distances_to_all(child, [candidate])[0]
    return float(by_weights), float(by_spectra)


def sketch_distance(child: Sketch, candidate: Sketch) -> float:
    """≈ spectrum_distance(candidate, child) (see ``sketch_distances``)."""
    return sketch_distances(child, candidate)[1]


def _distances_to_all(child: Sketch, candidates: list[Sketch]) -> np.ndarray:
    """``sketch_distances`` of every candidate, (N, 2), computed a distinct tensor layout at a
    time (catalog models of one architecture share theirs) as one vectorised difference."""
    result = np.full((len(candidates), 2), np.inf)
    layouts: dict[str, list[int]] = {}
    for i, candidate in enumerate(candidates):
        layouts.setdefault(candidate.layout, []).append(i)
    for members in layouts.values():
        index = {key: j for j, key in enumerate(candidates[members[0]].keys)}
        shared = [(i, index[key]) for i, key in enumerate(child.keys) if key in index]
        if not shared:
            continue
        mine, theirs = (np.asarray(side) for side in zip(*shared, strict=True))
        aligned = len(theirs) == len(index) and bool((theirs == np.arange(len(theirs))).all())
        # (G, S, 2·D) in float32: a shortlist needs an order, not digits.
        stacked = np.stack(
            [candidates[i].rows if aligned else candidates[i].rows[theirs] for i in members]
        )
        squared = (stacked - child.rows[mine]) ** 2
        result[members, 0] = np.sqrt(squared[:, :, :SKETCH_DIM].sum(axis=(1, 2)))
        result[members, 1] = np.sqrt(squared[:, :, SKETCH_DIM:].sum(axis=(1, 2)))
    return result


def shortlist(child: Sketch, candidates: list[Sketch | None], size: int) -> list[int]:
    """Indices of ``size`` candidates near ``child``: the nearest by raw weights and by spectra
    in turn (each index once), then every candidate without a sketch (never dropped)."""
    present = [i for i, c in enumerate(candidates) if c is not None]
    distances = _distances_to_all(child, [candidates[i] for i in present])
    by_weights = [present[j] for j in np.argsort(distances[:, 0], kind="stable")]
    by_spectra = [present[j] for j in np.argsort(distances[:, 1], kind="stable")]
    chosen: list[int] = []
    taken: set[int] = set()
    for pair in zip(by_weights, by_spectra, strict=True):
        for i in pair:
            if i not in taken and len(chosen) < size:
                chosen.append(i)
                taken.add(i)
        if len(chosen) >= size:
            break
    return chosen + [i for i, c in enumerate(candidates) if c is None]
