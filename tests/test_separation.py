"""``auto``'s separation test: the star fit, the held-out null, and the verdicts it gives.

Families here are star-shaped by construction: a root plus independent Gaussian displacements
in a high dimension, where squared distances are additive as fine-tunes' nearly are.
"""

from __future__ import annotations

import numpy as np
import pytest

from app.bench.calibrate import SEPARATION_GRID, _judge_all, _verdict_inputs
from app.engine import separation as views
from app.engine.separation import (
    HUB,
    NOT_SEPARATED,
    SPECTRA,
    UNRELATED,
    WEIGHTS,
    judge,
    separation,
    star_offsets,
)

DIM = 4000
CONSTANTS = {
    "weights_between": 0.5,
    "spectra_floor": 0.3,
    "weights_far": 4.0,
    "spectra_near": 3.0,
    "spectra_margin": None,
    "hub_max": 0.2,
}


def _squared(points: list[np.ndarray]) -> np.ndarray:
    x = np.stack(points)
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


@pytest.fixture
def family():
    """A root, five siblings fine-tuned from it, each sibling's own child, and a stranger."""
    rng = np.random.default_rng(0)
    root = rng.normal(size=DIM)
    siblings = [root + rng.normal(scale=0.1, size=DIM) for _ in range(5)]
    children = [s + rng.normal(scale=0.05, size=DIM) for s in siblings]
    far = siblings[0] + rng.normal(scale=0.14, size=DIM)  # farther than the siblings' own paths
    stranger = rng.normal(size=DIM)
    return {
        "root": root,
        "siblings": siblings,
        "children": children,
        "far": far,
        "stranger": stranger,
    }


def test_star_offsets_recover_an_exact_star():
    offsets = np.array([1.0, 2.0, 0.5, 3.0, 1.5])
    squared = offsets[:, None] + offsets[None, :]
    np.fill_diagonal(squared, 0.0)
    np.testing.assert_allclose(star_offsets(squared), offsets)
    with pytest.raises(ValueError):
        star_offsets(squared[:2, :2])


def test_a_child_is_separated_and_a_cousin_is_not(family):
    candidates = family["siblings"][1:]  # the first sibling is the absent parent of a cousin
    child = family["children"][1]  # a child of candidate 0
    sep = separation(_squared([child, *candidates]))
    assert sep.best == 0
    assert sep.relatedness[0] > 0.5 > max(sep.relatedness[1:]) + 0.3
    assert max(sep.null) < 0.2  # the held-out candidates: siblings of one another

    cousin = separation(_squared([family["children"][0], *candidates]))
    assert max(cousin.relatedness) < 0.2
    assert cousin.unrelated < 3.0  # inside the family

    stranger = separation(_squared([family["stranger"], *candidates]))
    assert max(stranger.relatedness) < 0.05
    assert stranger.unrelated > 10.0  # far outside it

    far = separation(_squared([family["far"], *family["siblings"]]))
    assert far.best == 0 and far.relatedness[0] > 0.25


def test_the_null_is_deterministic_and_follows_the_candidates(family):
    points = [family["children"][1], *family["siblings"][1:]]
    first = separation(_squared(points))
    again = separation(_squared(points))
    assert first == again
    order = [0, 3, 1, 4, 2]  # the child stays first; the candidates are shuffled
    shuffled = separation(_squared([points[i] for i in order]))
    np.testing.assert_allclose(
        shuffled.relatedness, [first.relatedness[i - 1] for i in order[1:]], rtol=1e-9
    )
    np.testing.assert_allclose(sorted(shuffled.null), sorted(first.null), rtol=1e-9)


def test_too_few_candidates_have_no_null(family):
    assert separation(_squared([family["children"][0], *family["siblings"][:3]])) is None


def _order(sep) -> list[int]:
    """A ranking that agrees with the weights' relatedness (best first)."""
    return sorted(range(len(sep.relatedness)), key=lambda i: -sep.relatedness[i])


def test_verdicts_name_the_parent_and_say_why_none(family):
    candidates = family["siblings"][1:]
    child = separation(_squared([family["children"][1], *candidates]))
    named = judge(_order(child), {WEIGHTS: child, SPECTRA: child}, CONSTANTS)
    assert named.named and named.index == 0 and named.basis == WEIGHTS
    assert named.value >= named.threshold and named.strength > 0

    # The ranking breaks ties among passing candidates, and never names one that fails.
    assert judge([2, 0, 1, 3], {WEIGHTS: child, SPECTRA: child}, CONSTANTS).index == 0

    cousin = separation(_squared([family["children"][0], *candidates]))
    refused = judge(_order(cousin), {WEIGHTS: cousin, SPECTRA: cousin}, CONSTANTS)
    assert not refused.named and refused.basis == NOT_SEPARATED and refused.strength < 0

    stranger = separation(_squared([family["stranger"], *candidates]))
    alone = judge(_order(stranger), {WEIGHTS: stranger, SPECTRA: stranger}, CONSTANTS)
    assert not alone.named and alone.basis == UNRELATED

    # A permuted child: its raw weights are far from everyone, its spectra (here: the child's
    # true position) are not; the spectra name their own best, whatever the ranking says.
    permuted = judge([3, 2, 1, 0], {WEIGHTS: stranger, SPECTRA: child}, CONSTANTS)
    assert permuted.named and permuted.index == 0 and permuted.basis == SPECTRA


def test_displacements_every_fine_tune_shares_cancel_out(family):
    # Fine-tunes that all moved the same way (Adam's first steps) are related to one another;
    # a cousin among them still lies off every path, and a child on its parent's.
    rng = np.random.default_rng(3)
    shared = rng.normal(scale=0.1, size=DIM)
    siblings = [s + shared for s in family["siblings"]]
    cousin = siblings[0] + rng.normal(scale=0.05, size=DIM)
    child = siblings[1] + rng.normal(scale=0.05, size=DIM)
    for point, named in ((cousin, None), (child, 0)):
        sep = separation(_squared([point, *siblings[1:]]))
        verdict = judge(_order(sep), {WEIGHTS: sep, SPECTRA: sep}, CONSTANTS)
        assert verdict.index == named, sep


def test_an_ancestor_lies_on_the_path_whatever_the_candidates_are(family):
    # A chain among the candidates (root → a → a's child, root → b → b's child): the star fits
    # them badly, the path test does not care: a child of a names a.
    rng = np.random.default_rng(5)
    root = family["root"]
    a, b = (root + rng.normal(scale=0.1, size=DIM) for _ in range(2))
    a_child, b_child = a + rng.normal(scale=0.1, size=DIM), b + rng.normal(scale=0.1, size=DIM)
    merge = a + rng.normal(scale=0.1, size=DIM)
    sep = separation(_squared([merge, root, a, b, a_child, b_child]))
    # a lies on every path; the root on the paths to b's side only (a is between it and a's)
    assert sep.betweenness[1] > 0.8 and 0.3 < sep.betweenness[0] < sep.betweenness[1]
    assert max(sep.betweenness[2:]) < 0.3  # b and both grandchildren lie off its paths
    # auto's ranking puts the nearer ancestor first; the test names the first that passes
    verdict = judge([1, 0, 2, 3, 4], {WEIGHTS: sep, SPECTRA: sep}, CONSTANTS)
    assert verdict.index == 1 and verdict.basis == WEIGHTS


def test_a_base_among_its_own_fine_tunes_is_named_as_the_hub(family):
    # The root registered beside its fine-tunes; the child is another fine-tune of the root.
    rng = np.random.default_rng(1)
    child = family["root"] + rng.normal(scale=0.1, size=DIM)
    sep = separation(_squared([child, family["root"], *family["siblings"][:4]]))
    assert sep.hubs[0] < 0.05 < min(sep.hubs[1:])
    order = [1, 0, 2, 3, 4]  # the ranking puts a sibling first: the base is named all the same
    verdict = judge(order, {WEIGHTS: sep, SPECTRA: sep}, CONSTANTS)
    assert verdict.named and verdict.index == 0 and verdict.basis == WEIGHTS
    # It lies on the child's path to every sibling; with a bar no candidate reaches, the hub
    # rule still names it.
    strict = {**CONSTANTS, "weights_between": 2.0}
    hub = judge(order, {WEIGHTS: sep, SPECTRA: sep}, strict)
    assert hub.index == 0 and hub.basis == HUB
    plain = judge(order, {WEIGHTS: sep, SPECTRA: sep}, {**strict, "hub_max": None})
    assert not plain.named and plain.basis == NOT_SEPARATED


def test_the_vectorised_grid_search_judges_as_judge_does(family):
    rng = np.random.default_rng(2)
    queries = []
    for i in range(16):
        points = [family["children"][i % 5], *rng.permutation(family["siblings"])[:4]]
        if i % 3 == 0:
            points[0] = family["stranger"] + rng.normal(scale=0.1, size=DIM)
        if i % 4 == 1:
            points[1] = family["root"]
        views = {WEIGHTS: _squared(points), SPECTRA: _squared([points[-1], *points[1:]])}
        query = {"_separations": {v: separation(m) for v, m in views.items()}}
        queries.append((query, rng.normal(size=4).tolist()))
    evidence = _verdict_inputs(queries)
    keys = list(SEPARATION_GRID)
    points = list(zip(*SEPARATION_GRID.values(), strict=False))
    assert len(points) >= 3
    for values in points:
        constants = dict(zip(keys, values, strict=True))
        expected = []
        for query, scores in queries:
            order = sorted(range(4), key=lambda i: -scores[i])
            verdict = judge(order, query["_separations"], constants)
            expected.append(-1 if verdict.index is None else verdict.index)
        assert _judge_all(evidence, constants).tolist() == expected, constants


def test_a_stranger_among_the_candidates_is_left_out_of_the_star(family):
    # Siblings that barely moved from their root, and a stranger beside them: the stranger's
    # large distances would swamp the siblings' small offsets if it were fitted as a leaf.
    rng = np.random.default_rng(4)
    root = family["root"]
    siblings = [root + rng.normal(scale=0.01, size=DIM) for _ in range(5)]
    cousin = siblings[0] + rng.normal(scale=0.01, size=DIM)
    child = siblings[1] + rng.normal(scale=0.01, size=DIM)
    candidates = [*siblings[1:], family["stranger"]]
    for point, named in ((cousin, False), (child, True)):
        sep = separation(_squared([point, *candidates]))
        assert len(sep.null) == 4  # the stranger takes no part in the null
        assert sep.hubs[-1] > 10 and min(sep.hubs[:-1]) > 0.3  # no sibling looks like a root
        verdict = judge(_order(sep), {WEIGHTS: sep, SPECTRA: sep}, CONSTANTS)
        assert verdict.named == named and (not named or verdict.index == 0), sep


def _null_one_by_one(among: np.ndarray) -> list[float]:
    """The null by its definition: a star refitted without each candidate in turn."""
    out = []
    for held in range(len(among)):
        rest = [i for i in range(len(among)) if i != held]
        offsets = views.star_offsets(among[np.ix_(rest, rest)])
        values, _ = views._relatedness_to(among[held, rest], offsets)
        out.append(float(values.max()))
    return out


def _betweenness_one_by_one(squared: np.ndarray) -> list[float]:
    k = len(squared) - 1
    floor = views.OFFSET_FLOOR
    return [
        1.0
        - float(
            np.median(
                [
                    (squared[0, c] + squared[c, q] - squared[0, q]) / max(squared[c, q], floor)
                    for q in range(1, k + 1)
                    if q != c
                ]
            )
        )
        for c in range(1, k + 1)
    ]


@pytest.mark.parametrize("k", [4, 5, 12, 40])
def test_vectorised_null_and_betweenness_equal_their_definitions(k):
    """All leave-one-out stars from one matrix's sums (O(K²), so a catalog scored without a
    shortlist stays fast), and every candidate's betweenness at once, equal the candidate-by-
    candidate definitions."""
    rng = np.random.default_rng(k)
    points = rng.normal(size=(k + 1, 30)) * rng.uniform(0.1, 3.0, size=(k + 1, 1))
    squared = ((points[:, None] - points[None]) ** 2).sum(-1)
    assert views.held_out_null(squared[1:, 1:]) == pytest.approx(
        _null_one_by_one(squared[1:, 1:]), abs=1e-12
    )
    assert views.betweenness(squared) == pytest.approx(_betweenness_one_by_one(squared), abs=1e-12)
