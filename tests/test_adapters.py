"""LoRA adapter children made with peft: merged onto each candidate and attributed to their base.

The family is small GPT-2s trained here: the base, two models trained the same way from other
initialisations (same shape, unrelated), and a full fine-tune of the base (a close relative).
"""

from __future__ import annotations

import json

import pytest

from app.bench.adapters import train_lora
from app.bench.data import task_data
from app.bench.zoo import CONFIGS
from app.engine.adapters import METHOD, InvalidAdapter, is_adapter
from app.engine.architectures import build_network, open_model
from app.engine.decision import rank_candidates
from app.engine.errors import IncompatibleModels, InvalidArgument
from app.engine.model_files import save_model
from app.engine.training import initial_state, train


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    config = CONFIGS["gpt2"]
    network = build_network(config)
    corpus, _ = task_data(network, None)
    states = {
        name: train(
            network, initial_state(config, seed), corpus, None, steps=150, lr=3e-3, seed=seed
        )
        for name, seed in (("base", 1), ("stranger-a", 2), ("stranger-b", 3))
    }
    task, _ = task_data(network, 3)
    states["sibling"] = train(
        network, states["base"], task_data(network, 5)[0], None, steps=60, lr=1e-3, seed=9
    )
    models = {name: save_model(root / name, state, config) for name, state in states.items()}
    adapter = train_lora(
        network, states["base"], task, None, root / "adapter", steps=120, base_name="org/base"
    )
    return {name: open_model(folder, name) for name, folder in models.items()}, adapter


def test_an_adapter_is_attributed_to_its_base(family):
    models, folder = family
    child = open_model(folder, "adapter")
    assert is_adapter(child)
    ranking = rank_candidates(child, [models[n] for n in ("stranger-a", "base", "stranger-b")])
    assert ranking.decision.parent == "base"
    assert ranking.decision.method == METHOD
    assert ranking.decision.confidence > 0.9
    scores = {c.parent: c.score for c in ranking.candidates}
    # Strangers of the same shape respond to ΔW as to their own shuffled units do (z near 0).
    assert scores["base"] > 3.0 > max(scores["stranger-a"], scores["stranger-b"])
    # A full fine-tune of the base is as aligned as the base itself: both lead the ranking and
    # the confidence says it is close to a coin toss between them.
    with_sibling = rank_candidates(child, list(models.values()))
    assert {c.parent for c in with_sibling.candidates[:2]} == {"base", "sibling"}
    assert with_sibling.decision.confidence < 0.75


def test_no_base_among_strangers_is_no_parent(family):
    models, folder = family
    ranking = rank_candidates(
        open_model(folder, "adapter"), [models["stranger-a"], models["stranger-b"]]
    )
    assert ranking.decision.parent is None
    assert ranking.decision.best in {"stranger-a", "stranger-b"}


def test_candidates_the_adapter_does_not_fit_are_skipped_with_the_reason(family, tmp_path):
    models, folder = family
    mlp_config = CONFIGS["mlp"]
    mlp = open_model(save_model(tmp_path / "mlp", initial_state(mlp_config, 0), mlp_config), "mlp")
    wide_config = CONFIGS["gpt2"] | {"n_embd": 48}
    wide = open_model(
        save_model(tmp_path / "wide", initial_state(wide_config, 0), wide_config), "wide"
    )
    ranking = rank_candidates(open_model(folder, "adapter"), [mlp, models["base"], wide])
    assert ranking.decision.parent == "base"
    reasons = {s.parent: s.reason for s in ranking.skipped}
    assert set(reasons) == {"mlp", "wide"}
    assert "does not fit" in reasons["wide"]
    with pytest.raises(IncompatibleModels, match="fits no candidate"):
        rank_candidates(open_model(folder, "adapter"), [mlp])


def test_an_adapter_is_not_scored_by_weight_distance(family):
    models, folder = family
    with pytest.raises(InvalidArgument, match="adapter-alignment"):
        rank_candidates(open_model(folder, "adapter"), [models["base"]], "weight-l2")


def test_bad_adapters_get_clear_errors(family, tmp_path):
    models, folder = family
    weights = (folder / "adapter_model.safetensors").read_bytes()
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "adapter_model.safetensors").write_bytes(weights)
    with pytest.raises(InvalidAdapter, match="without adapter_config.json"):
        rank_candidates(open_model(alone, "alone"), [models["base"]])
    prefix = tmp_path / "prefix-tuning"
    prefix.mkdir()
    (prefix / "adapter_model.safetensors").write_bytes(weights)
    (prefix / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    with pytest.raises(InvalidAdapter, match="only LoRA"):
        rank_candidates(open_model(prefix, "prefix"), [models["base"]])
    (prefix / "adapter_config.json").write_text("{not json")
    with pytest.raises(InvalidAdapter, match="not valid JSON"):
        rank_candidates(open_model(prefix, "prefix"), [models["base"]])
