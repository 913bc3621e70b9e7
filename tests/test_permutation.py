"""Function-preserving permutations of tiny models of every family (``permute``), and the
residual-stream permutation of GPT-2 and BERT (``permute_transformer``)."""

from __future__ import annotations

import re

import pytest
import torch
import transformers

from app.engine.architectures import Network, build_network
from app.engine.permutation import SCOPES, permute, permute_transformer, residual_permutation
from app.engine.probes import probe_inputs
from app.engine.training import permute_hidden_units
from tests.factories import TINY_CNN_CONFIG, TINY_MLP_CONFIG

HIDDEN, VOCAB, LENGTH = 32, 50, 10

GPT2 = {
    "vocab_size": VOCAB,
    "n_embd": HIDDEN,
    "n_layer": 2,
    "n_head": 4,
    "n_positions": 32,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "bos_token_id": 0,
    "eos_token_id": 0,
}
BERT = {
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 32,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(**GPT2).to_dict(),
    "bert": lambda: transformers.BertConfig(**BERT).to_dict(),
}
# (tensor, axis along the residual stream) whose other axis carries MLP units or heads.
INNER = {
    "gpt2": [("h.0.mlp.c_fc.weight", 0), ("h.1.attn.c_attn.weight", 0)],
    "bert": [
        ("encoder.layer.0.intermediate.dense.weight", 1),
        ("encoder.layer.1.attention.self.query.weight", 1),
    ],
}
EMBEDDINGS = {
    "gpt2": ["wte.weight", "wpe.weight"],
    "bert": ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight"],
}


def _noisy(network: Network, seed: int = 0) -> dict[str, torch.Tensor]:
    """The init state plus noise, so LayerNorm weights and biases are not 1 and 0."""
    gen = torch.Generator().manual_seed(seed)
    return {
        k: v + 0.2 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
        for k, v in network._init_state.items()
    }


@pytest.fixture(params=sorted(CONFIGS))
def model(request) -> tuple[str, Network, dict[str, torch.Tensor]]:
    network = build_network(CONFIGS[request.param]())
    return request.param, network, _noisy(network)


def test_output_is_the_original_with_permuted_features(model):
    _, network, state = model
    tokens = torch.randint(0, VOCAB, (3, LENGTH), generator=torch.Generator().manual_seed(1))
    permuted = permute_transformer(network, state, seed=7)
    perm = residual_permutation(network, seed=7)
    assert sorted(perm.tolist()) == list(range(HIDDEN))
    assert not torch.equal(perm, torch.arange(HIDDEN))
    with torch.no_grad():
        out = network.output(state, tokens).view(3, LENGTH, HIDDEN)
        out_perm = network.output(permuted, tokens).view(3, LENGTH, HIDDEN)
    torch.testing.assert_close(out_perm, out[..., perm], atol=1e-4, rtol=1e-4)
    # The relation is not trivially true: unpermuted features do not match.
    assert not torch.allclose(out_perm, out, atol=1e-2)


def test_every_matrix_moves_and_values_are_only_reordered(model):
    name, network, state = model
    original = {k: v.clone() for k, v in state.items()}
    permuted = permute_transformer(network, state, seed=3)
    assert set(permuted) == set(state)
    for key, tensor in state.items():
        assert torch.equal(tensor, original[key]), f"input {key} was modified"
        assert tensor.shape == permuted[key].shape
        assert torch.equal(tensor.flatten().sort().values, permuted[key].flatten().sort().values)
    matrices = [k for k, v in state.items() if v.dim() == 2]
    unchanged = [k for k in matrices if torch.equal(state[k], permuted[k])]
    assert not unchanged
    for key in EMBEDDINGS[name]:
        assert not torch.equal(state[key], permuted[key])


def test_mlp_units_and_heads_are_permuted_beyond_the_residual_stream(model):
    name, network, state = model
    permuted = permute_transformer(network, state, seed=11)
    undo = torch.argsort(residual_permutation(network, seed=11))
    for key, residual_dim in INNER[name]:
        inner_dim = 1 - residual_dim
        restored = permuted[key].index_select(residual_dim, undo)
        # Only the inner axis is still scrambled: each residual slice holds the same values.
        torch.testing.assert_close(
            restored.sort(dim=inner_dim).values, state[key].sort(dim=inner_dim).values
        )
        assert not torch.equal(restored, state[key]), f"{key}: inner axis not permuted"


def test_seed_determines_the_permutation(model):
    _, network, state = model
    a = permute_transformer(network, state, seed=5)
    b = permute_transformer(network, state, seed=5)
    c = permute_transformer(network, state, seed=6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert torch.equal(residual_permutation(network, 5), residual_permutation(network, 5))
    assert not torch.equal(residual_permutation(network, 5), residual_permutation(network, 6))


def test_unsupported_model_types_raise():
    distilbert = transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=HIDDEN, n_layers=1, n_heads=4, hidden_dim=64,
        max_position_embeddings=32,
    )  # fmt: skip
    for config in (distilbert.to_dict(), TINY_MLP_CONFIG):
        network = build_network(config)
        with pytest.raises(NotImplementedError, match="not implemented"):
            permute_transformer(network, _noisy(network), seed=0)
        with pytest.raises(NotImplementedError, match="not implemented"):
            residual_permutation(network, seed=0)


def test_unknown_parameters_raise_rather_than_break_the_function():
    network = build_network(transformers.GPT2Config(**GPT2, add_cross_attention=True).to_dict())
    with pytest.raises(NotImplementedError, match="crossattention"):
        permute_transformer(network, _noisy(network), seed=0)


# ``permute``: one entry point, two scopes, every family ------------------------------------

TINY_BERT = {
    "model_type": "bert", "vocab_size": 32, "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 16,
    "type_vocab_size": 1, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
}  # fmt: skip
TINY_LLAMA = {
    "model_type": "llama", "architectures": ["LlamaModel"], "vocab_size": 32, "hidden_size": 32,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
    "intermediate_size": 64, "max_position_embeddings": 16, "tie_word_embeddings": True,
    "attention_dropout": 0.0,
}  # fmt: skip
TINY_VIT = {
    "model_type": "vit", "image_size": 8, "patch_size": 2, "num_channels": 1, "hidden_size": 32,
    "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
    "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
}  # fmt: skip
FAMILIES = {
    "mlp": {"model_type": "lineage-mlp", "sizes": [6, 8, 7, 3], "activation": "relu"},
    # Two blocks per stage: identity shortcuts share a stream, the projection starts a new one.
    "cnn": {**TINY_CNN_CONFIG, "blocks": 2},
    "gpt2": {"model_type": "gpt2", **GPT2},
    "bert": TINY_BERT,
    "llama": TINY_LLAMA,
    # Grouped-query attention: two query heads per key/value head, biases everywhere.
    "llama-gqa": {
        **TINY_LLAMA,
        "num_key_value_heads": 2,
        "attention_bias": True,
        "mlp_bias": True,
    },  # fmt: skip
    "vit": TINY_VIT,
}
# Tensors that only read or write the residual stream: unchanged by "units", moved by "residual".
STREAM = {
    "mlp": r"$^",
    "cnn": r"^(stem|stem_bn|fc)\.|\.bn2\.|\.shortcut\.",
    "gpt2": r"^(wte|wpe|ln_f)\.|\.ln_[12]\.|\.c_proj\.bias$",
    "bert": r"^(embeddings|pooler)\.|LayerNorm|(attention\.output|\.output)\.dense\.bias$",
    "llama": r"^(embed_tokens|norm)\.|layernorm|o_proj\.bias$|down_proj\.bias$",
    "vit": r"^(embeddings|pooler|layernorm)\.|\.layernorm_|o_proj\.bias$|fc2\.bias$",
}
STREAM["llama-gqa"] = STREAM["llama"]
# Tensors no permutation moves: a head's outputs and the pooler's (outside the stream).
INVARIANT = {"mlp": {"layers.2.bias"}, "cnn": {"fc.bias"}}
POOLER_BIAS = "pooler.dense.bias"
# Seeds whose draws move every axis: a permutation of few elements may be the identity (two
# key/value heads: one time in two per block), which these tests would rightly report.
MOVING_SEED = {"llama-gqa": 10}


def _family_state(network: Network, seed: int = 0) -> dict[str, torch.Tensor]:
    """The init state plus noise (positive BatchNorm variances), so that no tensor is constant
    and any permutation of its values shows."""
    state = _noisy(network, seed)
    return {k: v.abs() + 0.1 if k.endswith("running_var") else v for k, v in state.items()}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request) -> tuple[str, Network, dict[str, torch.Tensor], torch.Tensor]:
    network = build_network(FAMILIES[request.param])
    return request.param, network, _family_state(network), probe_inputs(network, 6, seed=2)


def _movable(name: str, state: dict[str, torch.Tensor], key: str) -> list[str]:
    """The float tensors of more than one value that a permutation can move."""
    return [
        k
        for k, v in state.items()
        if v.is_floating_point()
        and v.numel() > 1
        and k not in INVARIANT.get(key, ())
        and k != POOLER_BIAS
    ]


@pytest.mark.parametrize("scope", SCOPES)
def test_permute_keeps_the_function(family, scope):
    key, network, state, probes = family
    permuted = permute(network, state, seed=7, scope=scope)
    with torch.no_grad():
        out = network.output(state, probes)
        out_perm = network.output(permuted, probes)
    if network.family == "transformers" and scope == "residual":
        perm = residual_permutation(network, seed=7)
        hidden = network.module.config.hidden_size
        out = out.view(len(probes), -1, hidden)[..., perm].flatten(1)
    torch.testing.assert_close(out_perm, out, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scope", SCOPES)
def test_permute_moves_every_weight_matrix_and_only_reorders(family, scope):
    key, network, state, _ = family
    original = {k: v.clone() for k, v in state.items()}
    permuted = permute(network, state, seed=MOVING_SEED.get(key, 3), scope=scope)
    assert set(permuted) == set(state)
    stream = re.compile(STREAM[key])
    for k, tensor in state.items():
        assert torch.equal(tensor, original[k]), f"input {k} was modified"
        assert tensor.shape == permuted[k].shape and tensor.dtype == permuted[k].dtype
        assert torch.equal(tensor.flatten().sort().values, permuted[k].flatten().sort().values)
    movable = _movable(key, state, key)
    unchanged = {k for k in movable if torch.equal(state[k], permuted[k])}
    matrices = {k for k in movable if state[k].dim() >= 2}
    if scope == "residual":
        assert not unchanged, f"not permuted: {sorted(unchanged)}"
    else:
        # Hidden units and heads move; the residual stream's tensors are left exactly as they are.
        assert unchanged == {k for k in movable if stream.search(k)}
        assert matrices - unchanged, "no weight matrix moved"
    for k in set(state) - set(movable):
        assert torch.equal(state[k], permuted[k]), f"{k} should not move"


def test_units_is_residual_without_the_stream(family):
    """The heads and units one seed draws are the same under both scopes; ``lineage-mlp`` has
    no residual stream, so its two scopes agree, and agree with ``permute_hidden_units``."""
    key, network, state, _ = family
    units = permute(network, state, seed=4, scope="units")
    residual = permute(network, state, seed=4, scope="residual")
    if key == "mlp":
        expected = permute_hidden_units(network, state, seed=4)
        assert all(torch.equal(units[k], residual[k]) for k in state)
        assert all(torch.equal(units[k], expected[k]) for k in state)
    if key == "cnn":
        expected = permute_hidden_units(network, state, seed=4)
        assert all(torch.equal(units[k], expected[k]) for k in state)
        # bn1 is inside the blocks: the stream permutation never touches it.
        assert all(torch.equal(units[k], residual[k]) for k in state if ".bn1." in k)
    if network.family == "transformers":
        perm = residual_permutation(network, seed=4)
        hidden = network.module.config.hidden_size
        # An MLP's input matrix under "residual" is its "units" copy with permuted input columns.
        name = {
            "gpt2": "h.0.mlp.c_fc.weight",
            "bert": "encoder.layer.0.intermediate.dense.weight",
            "vit": "layers.0.mlp.fc1.weight",
        }.get(key, "layers.0.mlp.up_proj.weight")
        dim = next(d for d in (0, 1) if state[name].shape[d] == hidden)
        torch.testing.assert_close(residual[name], units[name].index_select(dim, perm))


def test_seed_and_scope_errors(family):
    _, network, state, _ = family
    a = permute(network, state, seed=5, scope="residual")
    b = permute(network, state, seed=5, scope="residual")
    c = permute(network, state, seed=6, scope="residual")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(ValueError, match="scope"):
        permute(network, state, seed=5, scope="everything")


def test_permute_transformer_is_the_residual_scope():
    for config in (CONFIGS["gpt2"](), CONFIGS["bert"](), TINY_LLAMA, TINY_VIT):
        network = build_network(config)
        state = _noisy(network)
        old = permute_transformer(network, state, seed=9)
        new = permute(network, state, seed=9, scope="residual")
        assert all(torch.equal(old[k], new[k]) for k in state)


def test_permute_refuses_unsupported_models():
    distilbert = transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=HIDDEN, n_layers=1, n_heads=4, hidden_dim=64,
        max_position_embeddings=32,
    )  # fmt: skip
    network = build_network(distilbert.to_dict())
    for scope in SCOPES:
        with pytest.raises(
            NotImplementedError, match="not implemented for model_type 'distilbert'"
        ):
            permute(network, _noisy(network), seed=0, scope=scope)
    cross = build_network(transformers.GPT2Config(**GPT2, add_cross_attention=True).to_dict())
    with pytest.raises(NotImplementedError, match="crossattention"):
        permute(cross, _noisy(cross), seed=0, scope="units")
