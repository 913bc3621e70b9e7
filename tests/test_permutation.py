"""Function-preserving permutations of tiny GPT-2 and BERT models."""

from __future__ import annotations

import pytest
import torch
import transformers

from app.engine.architectures import Network, build_network
from app.engine.permutation import permute_transformer, residual_permutation
from tests.factories import TINY_MLP_CONFIG

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
