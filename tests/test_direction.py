"""The direction evidence: a candidate farther than the child from the candidates' centre looks
like a descendant, and ``auto`` with the ``weight-direction`` term prefers the parent."""

from __future__ import annotations

import copy

import pytest
import torch

from app.engine.calibration import load_calibration
from app.engine.decision import DIRECTION, combine_auto, rank_candidates
from app.engine.model_files import load_model, save_model
from app.engine.weightspace import outward_log_ratios

# Enough weights (about 4k) that independent random steps of one size are alike in length.
CONFIG = {"model_type": "lineage-mlp", "sizes": [32, 64, 32], "activation": "relu"}


def _step(state: dict[str, torch.Tensor], seed: int, size: float) -> dict[str, torch.Tensor]:
    """A 'fine-tune': the state plus an independent random move of the given size."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + size * torch.randn(v.shape, generator=gen) for k, v in state.items()}


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """root → parents a, b; a → child; child → grandchild (the child's descendant). Every step
    moves the weights by the same amount, so the parent and the descendant are equally far from
    the child and plain weight distance cannot choose between them."""
    out = tmp_path_factory.mktemp("family")
    gen = torch.Generator().manual_seed(0)
    root = {
        "layers.0.weight": torch.randn(64, 32, generator=gen),
        "layers.0.bias": torch.randn(64, generator=gen),
        "layers.1.weight": torch.randn(32, 64, generator=gen),
        "layers.1.bias": torch.randn(32, generator=gen),
    }
    states = {"root": root, "a": _step(root, 1, 0.3), "b": _step(root, 2, 0.3)}
    states["child"] = _step(states["a"], 3, 0.3)
    states["grandchild"] = _step(states["child"], 4, 0.3)
    models = {}
    for name, state in states.items():
        save_model(out / name, state, CONFIG)
        models[name] = load_model(out / name, name)
    return models


def test_descendants_point_outward_and_parents_inward(family):
    candidates = [family[n] for n in ("root", "a", "b", "grandchild")]
    ratios = dict(
        zip(
            ["root", "a", "b", "grandchild"],
            outward_log_ratios(candidates, family["child"]),
            strict=True,
        )
    )
    assert ratios["grandchild"] > 0 > ratios["a"]
    assert ratios["root"] < 0 and ratios["b"] < 0


def test_ratios_are_zero_when_the_child_is_one_of_them_in_position(family):
    # The child's own weights as a candidate sit exactly as far out as the child: log ratio 0.
    candidates = [family[n] for n in ("root", "a", "child")]
    ratios = outward_log_ratios(candidates, family["child"])
    assert ratios[2] == pytest.approx(0.0, abs=1e-9)


def test_direction_term_demotes_the_descendant_only_when_calibrated(family):
    names = ["root", "a", "b", "grandchild"]
    outward = outward_log_ratios([family[n] for n in names], family["child"])
    scores = [{"weight-l2": 0.0} for _ in names]
    calibration = copy.deepcopy(load_calibration())
    calibration["auto"]["noise"] = {"weight-l2": 0.05}
    without = combine_auto(scores, 0.1, calibration, outward)
    assert without == [0.0] * len(names)  # equal distances: no preference
    calibration["auto"]["noise"][DIRECTION] = 0.1
    with_term = combine_auto(scores, 0.1, calibration, outward)
    assert with_term[names.index("grandchild")] < min(
        with_term[i] for i in range(len(names)) if names[i] != "grandchild"
    )
    # Far from every candidate (relative distance above the cut-off), the term is not used.
    far = combine_auto(scores, 10.0, calibration, outward)
    assert far == [0.0] * len(names)


def test_auto_prefers_the_parent_to_the_descendant_with_the_term(family):
    candidates = [family[n] for n in ("root", "a", "b", "grandchild")]
    calibration = copy.deepcopy(load_calibration())
    calibration["auto"]["noise"] = {"weight-l2": 0.05, DIRECTION: 0.05}
    ranking = rank_candidates(family["child"], candidates, calibration=calibration)
    assert ranking.candidates[0].parent == "a"
    assert ranking.candidates[-1].parent in {"grandchild", "root", "b"}
    scores = {c.parent: c.score for c in ranking.candidates}
    assert scores["a"] > scores["grandchild"]
    # The ratios travel with the answer, for the graph's conflicts (lineage.proposed_direction).
    assert set(ranking.direction) == {"root", "a", "b", "grandchild"}
    assert ranking.direction["grandchild"] > 0 > ranking.direction["a"]
    assert ranking.to_dict()["direction"] == ranking.direction
