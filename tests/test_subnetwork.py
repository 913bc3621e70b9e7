"""Function-space methods on a model above the parameter budget work on its first blocks, say so
in the ranking, and read nothing of the blocks they left out."""

from __future__ import annotations

import pytest
import torch
import transformers

from app.engine import architectures
from app.engine.architectures import function_subnetwork, open_model
from app.engine.decision import rank_candidates

GPT2 = {
    "model_type": "gpt2",
    "vocab_size": 64,
    "n_embd": 32,
    "n_layer": 6,
    "n_head": 2,
    "n_positions": 32,
    "bos_token_id": 0,
    "eos_token_id": 0,
}


def _save(folder, state, config):
    model = transformers.GPT2Model(transformers.GPT2Config(**config))
    model.load_state_dict(state, strict=False)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    out = tmp_path_factory.mktemp("subnetwork")
    torch.manual_seed(0)
    root = transformers.GPT2Model(transformers.GPT2Config(**GPT2)).state_dict()
    gen = torch.Generator().manual_seed(1)

    def moved(state, size, only=None):
        return {
            k: v + size * torch.randn(v.shape, generator=gen)
            if v.is_floating_point() and (only is None or only(k))
            else v.clone()
            for k, v in state.items()
        }

    parent, other = moved(root, 0.05), moved(root, 0.05)
    child = moved(parent, 0.01)
    # The same child, its blocks 2..5 replaced by noise: the first two blocks are untouched.
    late = moved(child, 1.0, only=lambda k: k.startswith("h.") and int(k.split(".")[1]) >= 2)
    paths = {
        name: _save(out / name, state, GPT2)
        for name, state in {"parent": parent, "other": other, "child": child, "late": late}.items()
    }
    return paths


def test_small_models_are_built_whole():
    config, sub = function_subnetwork(GPT2, 10_000, max_parameters=10**9)
    assert config is GPT2 and sub is None
    no_blocks = {"model_type": "lineage-mlp", "sizes": [4, 8, 3]}
    assert function_subnetwork(no_blocks, 10**12, max_parameters=1)[1] is None


def test_a_large_model_keeps_as_many_blocks_as_fit():
    whole = architectures._parameters_on_meta(GPT2)
    one = architectures._parameters_on_meta({**GPT2, "n_layer": 1})
    per_block = (whole - one) // 5
    budget = one + per_block + per_block // 2  # room for two blocks and a half
    config, sub = function_subnetwork(GPT2, whole, max_parameters=budget)
    assert config["n_layer"] == 2 and sub.blocks == 2 and sub.of == 6
    assert sub.parameters == architectures._parameters_on_meta(config) <= budget
    # a budget below one block still keeps one
    assert function_subnetwork(GPT2, whole, max_parameters=1)[1].blocks == 1


def test_function_space_reads_only_the_kept_blocks(family, monkeypatch):
    whole = architectures._parameters_on_meta(GPT2)
    one = architectures._parameters_on_meta({**GPT2, "n_layer": 1})
    per_block = (whole - one) // 5
    monkeypatch.setattr(architectures, "FUNCTION_SPACE_MAX_PARAMETERS", one + per_block)
    parents = [open_model(family["parent"], "parent"), open_model(family["other"], "other")]
    child = rank_candidates(open_model(family["child"], "child"), parents, "l2")
    late = rank_candidates(open_model(family["late"], "late"), parents, "l2")
    assert child.subnetwork == {"blocks": 2, "of": 6, "parameters": one + per_block}
    assert child.to_dict()["subnetwork"] == child.subnetwork
    # blocks 2..5 never enter f: the noisy copy scores exactly as the child does
    assert [c.score for c in child.candidates] == [c.score for c in late.candidates]
    assert child.candidates[0].parent == "parent"
    # with the budget above the model, the whole model is used and the late blocks count
    monkeypatch.setattr(architectures, "FUNCTION_SPACE_MAX_PARAMETERS", 10**9)
    full = rank_candidates(open_model(family["late"], "late"), parents, "l2")
    assert full.subnetwork is None
    assert [c.score for c in full.candidates] != [c.score for c in late.candidates]


def test_weight_methods_record_no_subnetwork(family, monkeypatch):
    monkeypatch.setattr(architectures, "FUNCTION_SPACE_MAX_PARAMETERS", 1)
    parents = [open_model(family["parent"], "parent"), open_model(family["other"], "other")]
    ranking = rank_candidates(open_model(family["child"], "child"), parents, "weight-l2")
    assert ranking.subnetwork is None
