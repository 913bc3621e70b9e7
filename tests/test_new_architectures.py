"""ViT and Llama ``transformers`` models through the engine: input kinds, probes, outputs, the
vectorised and sub-network paths, and rankings that find the true parent (also of a permuted
copy)."""

from __future__ import annotations

import pytest
import torch

from app.engine.architectures import build_network, function_subnetwork, open_model
from app.engine.decision import rank_candidates
from app.engine.methods import PairContext, batch_parent_outputs
from app.engine.model_files import load_model, save_model
from app.engine.permutation import permute
from app.engine.probes import probe_inputs
from app.engine.training import initial_state, noisy_copy
from tests.test_permutation import TINY_BERT, TINY_LLAMA, TINY_VIT

CONFIGS = {"vit": TINY_VIT, "llama": TINY_LLAMA}
FUNCTION_METHODS = ("l2", "lin-l2", "cka", "taylor-l2")


def test_vit_takes_images_and_token_models_take_tokens():
    vit = build_network(TINY_VIT)
    assert vit.input_kind == "image"
    probes = probe_inputs(vit, 5)
    assert probes.shape == (5, 1, 8, 8) and probes.dtype == torch.float32
    with torch.no_grad():
        out = vit.output(vit._init_state, probes)
    # 16 patches of 2×2 and the class token, 32 features each.
    assert out.shape == (5, 17 * 32)
    for config in (TINY_LLAMA, TINY_BERT):
        network = build_network(config)
        assert network.input_kind == "tokens"
        tokens = probe_inputs(network, 5)
        assert tokens.shape == (5, 16) and tokens.dtype == torch.int64
        assert network.output(network._init_state, tokens).shape == (5, 16 * 32)


def test_vit_probes_follow_its_channels_and_image_size():
    """``num_channels`` (ViT's key) and an ``image_size`` other than 8; a config that leaves
    them out gets the ``transformers`` defaults the module was built with."""
    network = build_network({**TINY_VIT, "num_channels": 3, "image_size": 12})
    probes = probe_inputs(network, 4)
    assert probes.shape == (4, 3, 12, 12)
    assert torch.equal(probes[:, 0], probes[:, 2])  # the digit repeated over the channels
    assert network.output(network._init_state, probes).shape == (4, (36 + 1) * 32)
    defaults = {k: v for k, v in TINY_VIT.items() if k not in ("num_channels", "image_size")}
    network = build_network({**defaults, "patch_size": 16})
    assert probe_inputs(network, 2).shape == (2, 3, 224, 224)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def family(request, tmp_path_factory):
    """A parent, an independently initialised stranger and the parent's lightly moved child, saved
    as model folders; also a copy of the child with permuted hidden units and heads."""
    config = CONFIGS[request.param]
    out = tmp_path_factory.mktemp(request.param)
    parent = initial_state(config, 1)
    child = noisy_copy(parent, 0.05, seed=3)
    network = build_network(config)
    folders = {
        "parent": save_model(out / "parent", parent, config),
        "stranger": save_model(out / "stranger", initial_state(config, 2), config),
        "child": save_model(out / "child", child, config),
        "permuted": save_model(
            out / "permuted", permute(network, child, seed=5, scope="units"), config
        ),
    }
    return request.param, {name: out / name for name in folders}


@pytest.mark.parametrize("method", ("auto", "weight-spectrum", *FUNCTION_METHODS))
def test_rank_candidates_finds_the_true_parent(family, method):
    _, folders = family
    candidates = [open_model(folders["stranger"]), open_model(folders["parent"])]
    ranking = rank_candidates(open_model(folders["child"]), candidates, method)
    assert not ranking.skipped
    assert ranking.decision.best == str(folders["parent"]), ranking
    assert ranking.candidates[0].parent == str(folders["parent"])
    assert ranking.candidates[0].score > ranking.candidates[1].score


@pytest.mark.parametrize("method", ("l2", "cka", "weight-spectrum"))
def test_a_permuted_child_still_ranks_its_parent_first(family, method):
    """Permuted units and heads leave the function (and the singular values) alone."""
    _, folders = family
    candidates = [open_model(folders["stranger"]), open_model(folders["parent"])]
    ranking = rank_candidates(open_model(folders["permuted"]), candidates, method)
    assert ranking.decision.best == str(folders["parent"]), ranking


def test_batched_parent_outputs_are_vectorised_and_match(family):
    _, folders = family

    def contexts():
        child = load_model(folders["child"], "child")
        return [
            PairContext(load_model(folders[name], name), child) for name in ("parent", "stranger")
        ]

    alone = [ctx.parent_output for ctx in contexts()]
    batched = contexts()
    assert batch_parent_outputs(batched) == 2  # torch.func.vmap ran, no fallback
    for ctx, expected in zip(batched, alone, strict=True):
        torch.testing.assert_close(ctx.parent_output, expected, rtol=1e-5, atol=1e-5)


def test_function_subnetwork_keeps_the_first_blocks(family):
    name, folders = family
    config = CONFIGS[name]
    model = load_model(folders["parent"], "parent")
    sub_config, sub = function_subnetwork(
        config, model.num_parameters, max_parameters=model.num_parameters - 1
    )
    assert sub is not None and (sub.blocks, sub.of) == (1, 2)
    assert sub_config["num_hidden_layers"] == 1
    ctx = PairContext(model, load_model(folders["child"], "child"))
    ctx.__dict__["function_config"] = (sub_config, sub)
    assert ctx.parent_output.shape == ctx.child_output.shape
    assert ctx.subnetwork == sub
