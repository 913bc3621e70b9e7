"""Is a candidate the child's ancestor? Evidence from the candidate set itself.

The weights ask whether a candidate lies on the child's path to every other candidate
(``betweenness``, below): an ancestor does, a sibling, a cousin or a stranger does not. The
spectra, which strangers can share, ask how much of a star's path the child shares with a
candidate, against a null; that machinery follows.

Models fine-tuned from one root sit, in weight space, around that root like the leaves of a star:
fine-tuning displacements of different tasks are nearly orthogonal in high dimension, so the
squared distance between two siblings i and j is close to a_i + a_j, a_i the squared length of
i's own path from the root. A child x of candidate b extends b's path: its squared distance to
every other candidate q is about a_b + ε² + a_q, while its squared distance to b is only ε².

Given the squared distances S among the child and K candidates (in any view where that additivity
roughly holds: raw weights, permutation-invariant spectra, the Gram matrix of the outputs), the
star is fitted to the candidates by least squares, the child's own offset a_x is the median of
S_xq − a_q (robust to its one parent), and each candidate's *relatedness* to the child is

    ρ(x, c) = 1 − S_xc / (a_x + a_c),

the share of the path through the root that x and c have in common. ρ ≈ 0 for a sibling-like
candidate, 2a_b / (2a_b + ε²) for the parent: it is dimensionless and needs no constant fitted on
other architectures to be read.

The null comes from the request's own candidates: each candidate in turn is held out and scored
as a pseudo-orphan against the rest (a model whose parent, the root, is absent, and whose
siblings are present: exactly a cousin's situation). Their best relatedness values are what
"ranked first but not separated" looks like for this family, at this scale, today.

``unrelated`` measures how far outside the family the child lies: a_x over the median
candidate offset. A child of another root is much farther from every candidate than they are
from one another.

One candidate may itself be the star's centre: a base model registered beside its own
fine-tunes has an offset near 0 (its ``hub`` ratio, a_c over the median offset). A child of that
base is then one more leaf of the star, with ρ ≈ 0 to it as to its siblings; what marks it is
that it belongs to the family (``unrelated`` small) while the best candidate is the family's
common ancestor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from app.engine import weightspace
from app.engine.model_files import LoadedModel

MIN_CANDIDATES = 4  # a star fitted to K − 1 ≥ 3 candidates for every held-out one
OFFSET_FLOOR = 1e-12
OUTSIDER = 10.0  # a candidate this many times farther from the root than the median is not a leaf


def star_offsets(squared: np.ndarray) -> np.ndarray:
    """Least-squares a_i of S_ij ≈ a_i + a_j over the pairs i < j of a K×K matrix (K ≥ 3):
    a_i = (r_i − T/(K−1)) / (K−2), r_i the row sums, T the sum over pairs."""
    k = len(squared)
    if k < 3:
        raise ValueError("a star needs at least three leaves")
    rows = squared.sum(1) - np.diag(squared)
    total = rows.sum() / 2
    return (rows - total / (k - 1)) / (k - 2)


def _relatedness_to(row: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """ρ of one outside model against the leaves of a fitted star, from its squared distances."""
    floor = OFFSET_FLOOR * max(float(np.abs(offsets).max()), OFFSET_FLOOR)
    offsets = np.maximum(offsets, floor)
    own = max(float(np.median(row - offsets)), floor)
    return 1.0 - row / (own + offsets), own


@dataclass(frozen=True)
class Separation:
    """One view's verdict inputs: the child's relatedness to every candidate, the held-out
    candidates' best relatedness (the null), and how far outside the family the child lies."""

    relatedness: list[float]  # ρ(x, c) per candidate, in the candidates' order
    null: list[float]  # per held-out candidate, its best ρ against the others
    unrelated: float  # a_x / median a_c
    hubs: list[float]  # a_c / median a_c: near 0 for the common ancestor of the others
    betweenness: list[float]  # π(c): near 1 when c lies on the child's path to every other

    @property
    def best(self) -> int:
        return int(np.argmax(self.relatedness))

    def to_dict(self, names: list[str]) -> dict:
        """The view's figures for a result: per candidate (by ``names``, in order) its
        relatedness, hub ratio and betweenness; the null; how far outside the family the
        child lies."""

        def by_name(values: list[float]) -> dict[str, float]:
            return {n: round(v, 4) for n, v in zip(names, values, strict=True)}

        return {
            "relatedness": by_name(self.relatedness),
            "hubs": by_name(self.hubs),
            "betweenness": by_name(self.betweenness),
            "null": [round(v, 4) for v in self.null],
            "unrelated": round(self.unrelated, 3),
        }


def family_members(squared: np.ndarray) -> list[int]:
    """The candidates that belong to the star: all but those whose own offset is more than
    ``OUTSIDER`` times the median offset. A candidate from another root (a stranger registered
    beside a family) is far from every other; left in, the cross terms of its large distances
    (2·(s − root)·d_i, of order ‖s − root‖·‖d_i‖, not ‖d_i‖²) swamp the family's small offsets."""
    offsets = star_offsets(squared)
    typical = max(float(np.median(np.maximum(offsets, 0.0))), OFFSET_FLOOR)
    return [i for i, a in enumerate(offsets) if a <= OUTSIDER * typical]


def separation(squared: np.ndarray) -> Separation | None:
    """The view's ``Separation`` from squared distances among [child, candidates...] (index 0
    the child); None with fewer than ``MIN_CANDIDATES`` candidates in the family's star
    (``family_members``). Outsiders get a relatedness and a hub ratio from the same star, and
    take no part in the null."""
    squared = np.asarray(squared, dtype=np.float64)
    k = len(squared) - 1
    if k < MIN_CANDIDATES:
        return None
    among = squared[1:, 1:]
    members = family_members(among)
    if len(members) < MIN_CANDIDATES:
        return None
    offsets = np.empty(k)
    offsets[members] = star_offsets(among[np.ix_(members, members)])
    for outsider in (i for i in range(k) if i not in members):
        # Its own offset from its distances to the star's leaves, as the child's below.
        _, offsets[outsider] = _relatedness_to(among[outsider, members], offsets[members])
    relatedness, own = _relatedness_to(squared[0, 1:][members], offsets[members])
    everyone = 1.0 - squared[0, 1:] / (own + np.maximum(offsets, OFFSET_FLOOR))
    everyone[members] = relatedness  # (outsiders: the same a_x, their own offsets)
    null = held_out_null(among[np.ix_(members, members)])
    typical = max(float(np.median(np.maximum(offsets[members], 0.0))), OFFSET_FLOOR)
    hubs = [float(max(a, 0.0) / typical) for a in offsets]
    return Separation([float(v) for v in everyone], null, own / typical, hubs, betweenness(squared))


def held_out_null(among: np.ndarray) -> list[float]:
    """For each candidate h of a star's K×K squared distances, its best relatedness to the
    others (``_relatedness_to``) against the star fitted without it: the null of the view.

    All K leave-one-out stars at once, in O(K²): without h, the row sums are r_i − S_ih and the
    sum over pairs T − r_h, so ``star_offsets``' closed form gives every held-out fit from the
    full matrix's sums."""
    k = len(among)
    rows = among.sum(1) - np.diag(among)
    total = rows.sum() / 2
    # offsets[h, i]: a_i of the star fitted to every candidate but h (its diagonal unused)
    offsets = ((rows[None, :] - among) - (total - rows)[:, None] / (k - 2)) / (k - 3)
    others = ~np.eye(k, dtype=bool)
    distances = among[others].reshape(k, k - 1)  # row h: S_hi over i ≠ h
    offsets = offsets[others].reshape(k, k - 1)
    floor = OFFSET_FLOOR * np.maximum(np.abs(offsets).max(1), OFFSET_FLOOR)[:, None]
    offsets = np.maximum(offsets, floor)
    own = np.maximum(np.median(distances - offsets, axis=1)[:, None], floor)
    return [float(v) for v in (1.0 - distances / (own + offsets)).max(1)]


def betweenness(squared: np.ndarray) -> list[float]:
    """π(c) = 1 − median over the other candidates q of (S_xc + S_cq − S_xq) / S_cq, for every
    candidate c, from squared distances among [child x, candidates...].

    When c is an ancestor of x, c lies on the path from x to every other candidate: x's own
    displacement from c is nearly orthogonal to c's displacement from anyone else, the squared
    distances add up along the path, and the excess S_xc + S_cq − S_xq is about 0 (π ≈ 1).
    When c is a sibling, a cousin or a stranger, the path from x to q does not pass through c:
    the excess is twice c's own path from where their paths split, about S_cq, and π ≈ 0. It
    needs no star: candidates related among themselves (a base, its fine-tunes and theirs) are
    measured alike, and displacements that all fine-tunes share cancel out."""
    squared = np.asarray(squared, dtype=np.float64)
    k = len(squared) - 1
    child, among = squared[0, 1:], squared[1:, 1:]
    # ratios[c, q] over q ≠ c, every candidate at once
    excess = child[:, None] + among - child[None, :]
    ratios = excess / np.maximum(among, OFFSET_FLOOR)
    others = ~np.eye(k, dtype=bool)
    return [float(v) for v in 1.0 - np.median(ratios[others].reshape(k, k - 1), axis=1)]


# The views a decision reads, in order: raw weights first; the permutation-blind spectra only
# when the raw weights find the child far from every candidate (permuted units, or a stranger).
WEIGHTS, SPECTRA = "weights", "spectra"
HUB = "hub"  # named: the best candidate is the common ancestor of the others
VIEWS = (WEIGHTS, SPECTRA)
# Why an answer was given: named by one view, or "none" for one of two reasons.
NOT_SEPARATED = "not-separated"  # related to the candidates' family; none stands out as parent
UNRELATED = "unrelated"  # far from every candidate in every view
MARGIN = "margin"  # too few candidates for a null: the calibrated margin decided

EXPLANATIONS = {
    WEIGHTS: "this candidate lies on the path from its weights to every other candidate's",
    HUB: (
        "its weights belong to the family whose common ancestor is this candidate (a base "
        "model registered beside its other fine-tunes)"
    ),
    SPECTRA: (
        "its weights are far from every candidate, but their permutation-invariant spectra "
        "share a path with this candidate beyond what its siblings share (a permuted child)"
    ),
    NOT_SEPARATED: (
        "related to the candidates' family, but the best candidate is not separated from its "
        "siblings: a cousin or a sibling, not a child"
    ),
    UNRELATED: "unrelated to every candidate: far from all of them in weights and in spectra",
    MARGIN: f"fewer than {MIN_CANDIDATES} candidates: no null; the calibrated margin decided",
}


def threshold(view: Separation, floor: float, null_margin: float | None) -> float:
    """The relatedness a candidate must reach in ``view``: ``floor`` (a dimensionless share of
    the path, fitted on other families), raised to the null's largest value plus
    ``null_margin`` when that is higher (None: the floor alone). A candidate set whose members
    are related among themselves (fine-tunes of one parent that all moved the same way) has a
    high null, and a child must then stand out further to be named."""
    if null_margin is None:
        return floor
    return max(floor, max(view.null) + null_margin)


@dataclass(frozen=True)
class Verdict:
    """Which candidate is the parent (``index``, None for "none"), which view decided and the
    evidence: the deciding relatedness (or hub ratio) and the bar it was held to."""

    index: int | None
    basis: str  # WEIGHTS, HUB, SPECTRA, NOT_SEPARATED, UNRELATED or MARGIN
    value: float
    threshold: float

    @property
    def named(self) -> bool:
        return self.index is not None

    @property
    def explanation(self) -> str:
        return EXPLANATIONS[self.basis]

    @property
    def strength(self) -> float:
        """How far the evidence clears its bar (below 0: short of it): relatedness above its
        threshold, or for a hub the hub ratio below ``hub_max``."""
        if self.basis == HUB:
            return self.threshold - self.value
        return self.value - self.threshold


def _first(order: list[int], passing) -> int | None:
    """The first candidate of the ranking ``order`` that ``passing(index)`` accepts."""
    return next((i for i in order if passing(i)), None)


def judge(order: list[int], views: dict[str, Separation], constants: dict) -> Verdict:
    """The verdict from the views' separations; ``order``: the candidates' indices, best first
    by the ranking (``auto``'s), which breaks ties between candidates that all pass a view.

    1. Weights: the best-ranked candidate that lies on the child's path to every other
       candidate (``betweenness`` ≥ ``weights_between``): an ancestor.
    2. Hub: when the weights place the child inside the family (``unrelated`` <
       ``weights_far``), the best-ranked candidate that is the family's common ancestor (hub
       ratio ≤ ``hub_max``; None: never).
    3. Spectra: when the weights find the child far from every candidate but the spectra place
       it inside the family (``unrelated`` ≤ ``spectra_near``), the candidate of highest
       spectral relatedness, if it clears the spectra's threshold (the ranking is not used:
       with the weights far, its weight-space components are noise).
    Else "none": ``UNRELATED`` when the child lies outside the family in every view it was
    measured in, ``NOT_SEPARATED`` when it lies inside but no candidate stands out.
    ``constants``: ``weights_between``, ``spectra_floor``, ``weights_far``, ``spectra_near``,
    ``hub_max`` and ``spectra_margin`` (the spectra's ``null_margin``, see ``threshold``), all
    dimensionless.
    """
    weights, spectra = views[WEIGHTS], views.get(SPECTRA)
    bar = constants["weights_between"]
    named = _first(order, lambda i: weights.betweenness[i] >= bar)
    if named is not None:
        return Verdict(named, WEIGHTS, weights.betweenness[named], bar)
    best = order[0]
    far = weights.unrelated >= constants["weights_far"]
    hub_max = constants.get("hub_max")
    if hub_max is not None and not far:
        hub = _first(order, lambda i: weights.hubs[i] <= hub_max)
        if hub is not None:
            return Verdict(hub, HUB, weights.hubs[hub], hub_max)
    if far and spectra is not None and spectra.unrelated <= constants["spectra_near"]:
        spectral_bar = threshold(
            spectra, constants["spectra_floor"], constants.get("spectra_margin")
        )
        top = int(np.argmax(spectra.relatedness))
        if spectra.relatedness[top] >= spectral_bar:
            return Verdict(top, SPECTRA, spectra.relatedness[top], spectral_bar)
        return Verdict(None, NOT_SEPARATED, spectra.relatedness[top], spectral_bar)
    if far:
        return Verdict(None, UNRELATED, weights.betweenness[best], bar)
    return Verdict(None, NOT_SEPARATED, weights.betweenness[best], bar)


def separations(squared: dict[str, object] | None) -> dict[str, Separation] | None:
    """Each view's ``Separation`` from its squared distances among [child, candidates...];
    None when there are too few candidates for a null (or no distances)."""
    if not squared:
        return None
    views = {view: separation(np.asarray(s)) for view, s in squared.items()}
    if any(v is None for v in views.values()):
        return None
    return views


def candidate_separations(
    candidates: list[LoadedModel], child: LoadedModel, device: torch.device | str = "cpu"
) -> dict[str, Separation] | None:
    """The views' separations of ``child`` among ``candidates``: raw weights (from the batched
    pass's pairwise distances when it ran) and permutation-invariant spectra."""
    if len(candidates) < MIN_CANDIDATES:
        return None
    return separations(
        {
            WEIGHTS: weightspace.shared_squared(candidates, child, device),
            SPECTRA: weightspace.spectrum_squared(candidates, child, device),
        }
    )
