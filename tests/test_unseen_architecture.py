"""A family of an architecture that no calibration zoo and no detector training ever held.

Qwen2 (grouped-query attention, RMSNorm, SwiGLU, rotary, biases on q/k/v) is none of the zoo
families. A tiny family is trained here the way the zoos are: a root on a mixture of synthetic
languages, five parents fine-tuned from it on a language each, a child of the first parent, and a
cousin (a child of the fifth, which is then left out). With the shipped ``calibration.json`` and
universal detector, both ``auto`` and ``detector`` must name the child's parent among the four
candidates and answer "none" for the cousin among the same four.
"""

from __future__ import annotations

import pytest

from app.bench.data import language_task
from app.engine.architectures import build_network, open_model
from app.engine.calibration import load_calibration
from app.engine.decision import rank_candidates
from app.engine.model_files import save_model
from app.engine.training import initial_state, train

CONFIG = {
    "model_type": "qwen2",
    "architectures": ["Qwen2Model"],
    "vocab_size": 32,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 16,
    "tie_word_embeddings": True,
    "attention_dropout": 0.0,
}
ZOO_TYPES = {"lineage-mlp", "lineage-cnn", "gpt2", "bert", "llama", "vit"}


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict:
    root_dir = tmp_path_factory.mktemp("qwen2")
    network = build_network(CONFIG)
    states = {}

    def fit(name: str, start: dict, task: int | None, steps: int, seed: int) -> None:
        tokens = language_task(CONFIG, task, n=256)
        states[name] = train(network, start, tokens, None, steps=steps, lr=3e-3, seed=seed)
        save_model(root_dir / name, states[name], CONFIG)

    fit("root", initial_state(CONFIG, 0), None, 150, 1)
    for i in range(5):
        fit(f"parent-{i}", states["root"], 100 + i, 60, 10 + i)
    fit("child", states["parent-0"], 200, 40, 20)
    fit("cousin", states["parent-4"], 201, 40, 21)
    return {name: open_model(root_dir / name, name) for name in states}


def test_the_architecture_is_new_to_every_fit():
    assert CONFIG["model_type"] not in ZOO_TYPES
    calibration = load_calibration()
    assert calibration["auto"].get("separation"), "the shipped calibration has no separation"


@pytest.mark.parametrize("method", ["auto", "detector"])
def test_a_child_is_named_and_a_cousin_refused(family, method):
    candidates = [family[f"parent-{i}"] for i in range(4)]
    child = rank_candidates(family["child"], candidates, method)
    assert child.decision.parent == "parent-0", child.to_dict()
    cousin = rank_candidates(family["cousin"], candidates, method)
    assert cousin.decision.parent is None, cousin.to_dict()
    if method == "auto":
        assert child.separation["basis"] == "weights"
        assert cousin.separation["basis"] == "not-separated"
        # The evidence behind it: the parent shares a path with the child, no candidate with
        # the cousin beyond what the candidates share among themselves.
        weights = child.separation["views"]["weights"]
        assert weights["relatedness"]["parent-0"] > max(weights["null"])
        # Every figure is given per candidate; the named parent's betweenness decided.
        for figure in ("relatedness", "hubs", "betweenness"):
            assert set(weights[figure]) == {f"parent-{i}" for i in range(4)}
        assert child.separation["value"] == weights["betweenness"]["parent-0"]
