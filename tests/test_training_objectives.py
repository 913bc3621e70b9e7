"""What each zoo family learns (``training.objective``): the masked LM of the BERT, the causal LM of
the Llama (and GPT-2), the [CLS]-feature classifier of the ViT. Each test trains for a few dozen
steps at most (seconds on a 2-core CPU)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from app.bench.data import language_task, task_data
from app.bench.zoo import CONFIGS
from app.engine.architectures import build_network
from app.engine.training import (
    CAUSAL_LM,
    CLASSIFICATION,
    IMAGE_CLASSIFICATION,
    MASK_RATE,
    MASKED_LM,
    NUM_CLASSES,
    accuracy,
    digits_task,
    evaluate,
    initial_state,
    mask_token_id,
    mask_tokens,
    objective,
    task_logits,
    task_loss,
    train,
)


@pytest.fixture(scope="module")
def networks():
    return {family: build_network(CONFIGS[family]) for family in ("bert", "llama", "vit", "gpt2")}


def _module(network, state):
    module = copy.deepcopy(network.module)
    module.load_state_dict(state)
    return module.eval()


def test_objective_follows_from_the_network(networks):
    assert objective(build_network(CONFIGS["mlp"])) == CLASSIFICATION
    assert objective(build_network(CONFIGS["cnn"])) == CLASSIFICATION
    assert objective(networks["gpt2"]) == CAUSAL_LM
    assert objective(networks["llama"]) == CAUSAL_LM
    assert objective(networks["bert"]) == MASKED_LM
    assert objective(networks["vit"]) == IMAGE_CLASSIFICATION
    # A BERT made a decoder is a causal LM.
    assert objective(build_network(CONFIGS["bert"] | {"is_decoder": True})) == CAUSAL_LM
    # A ViT is recognised by its config whatever input kind the engine gives it.
    as_tokens = dataclasses.replace(networks["vit"], input_kind="tokens")
    assert objective(as_tokens) == IMAGE_CLASSIFICATION


def test_masked_lm_data_never_holds_the_mask_token_and_masks_a_seeded_share(networks):
    network = networks["bert"]
    mask = mask_token_id(network.config)
    assert mask == CONFIGS["bert"]["vocab_size"] - 1
    for task, kwargs in ((None, {}), (3, {"few_shot": 32}), (3, {"imbalance": 0.05})):
        x, y = task_data(network, task, seed=1, **kwargs)
        assert y is not None and x.shape == y.shape and x.dtype == torch.long
        assert y.shape[1] == CONFIGS["bert"]["max_position_embeddings"]
        assert not (y == mask).any()  # the targets: never [MASK]
        masked = x != y
        assert torch.equal(masked, x == mask)  # inputs differ exactly where masked
        if "few_shot" not in kwargs:
            assert abs(masked.float().mean().item() - MASK_RATE) < 0.02
    # Seeded: the same seed gives the same masks, another seed other masks.
    assert torch.equal(task_data(network, 3, seed=1)[0], task_data(network, 3, seed=1)[0])
    assert not torch.equal(task_data(network, 3, seed=1)[0], task_data(network, 3, seed=2)[0])
    # The language's vocabulary parameter leaves the last id out; the default keeps it.
    assert language_task(CONFIGS["bert"], 3, vocab=mask).max() < mask
    assert int(language_task(CONFIGS["gpt2"], 3).max()) == CONFIGS["gpt2"]["vocab_size"] - 1


def test_mask_tokens_is_deterministic_given_the_generator():
    tokens = torch.randint(0, 31, (64, 16), generator=torch.Generator().manual_seed(0))
    a = mask_tokens(tokens, 31, torch.Generator().manual_seed(5))
    b = mask_tokens(tokens, 31, torch.Generator().manual_seed(5))
    c = mask_tokens(tokens, 31, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[a != 31], tokens[a != 31])


def test_masked_lm_loss_counts_only_the_masked_positions():
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, 31, (8, 16), generator=generator)
    x = mask_tokens(y, 31, generator)
    masked = x != y
    assert masked.any() and not masked.all()
    logits = torch.randn(8, 16, 32, generator=generator, requires_grad=True)
    loss = task_loss(logits, x, y)
    expected = F.cross_entropy(logits[masked], y[masked])
    assert torch.allclose(loss, expected)
    loss.backward()
    assert logits.grad[~masked].abs().sum() == 0 and logits.grad[masked].abs().sum() > 0
    # Scores at unmasked positions do not enter the loss.
    other = logits.detach().clone()
    other[~masked] = torch.randn(int((~masked).sum()), 32, generator=generator)
    assert torch.allclose(task_loss(other, x, y), expected)
    # Nothing masked: zero, and still differentiable.
    empty = task_loss(logits, y, y)
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_causal_and_class_losses_are_unchanged():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 32, (4, 16), generator=generator)
    logits = torch.randn(4, 16, 32, generator=generator)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 32), tokens[:, 1:].reshape(-1))
    assert torch.equal(task_loss(logits, tokens, None), expected)
    scores, labels = torch.randn(5, 10, generator=generator), torch.arange(5)
    assert torch.equal(task_loss(scores, None, labels), F.cross_entropy(scores, labels))


def test_vit_logits_are_the_cls_features_and_its_state_is_the_base_models(networks):
    network = networks["vit"]
    state = initial_state(network.config, 0)
    assert set(state) == set(network.module.state_dict())  # no head parameters
    x, _ = digits_task(network, None, subset=16)
    assert x.shape == (16, 1, 8, 8)
    module = _module(network, state)
    with torch.no_grad():
        logits = task_logits(network, module, x)
        hidden = module(pixel_values=x).last_hidden_state
    assert logits.shape == (16, NUM_CLASSES)
    assert torch.equal(logits, hidden[:, 0, :NUM_CLASSES])
    # The same images whichever input kind the engine gives a ViT.
    as_tokens = dataclasses.replace(network, input_kind="tokens")
    assert torch.equal(digits_task(as_tokens, None, subset=16)[0], x)
    x_tokens, y_tokens = task_data(as_tokens, 2)
    x_image, y_image = task_data(network, 2)
    assert torch.equal(x_tokens, x_image) and torch.equal(y_tokens, y_image)


def test_training_the_vit_raises_digits_accuracy_above_chance(networks):
    network = networks["vit"]
    x, y = digits_task(network, None)
    start = initial_state(network.config, 0)
    trained = train(network, start, x, y, steps=60, lr=1e-2, seed=0)
    assert accuracy(network, start, x, y) < 0.2
    assert accuracy(network, trained, x, y) > 0.25  # chance: 0.1
    assert evaluate(network, trained, x, y) < evaluate(network, start, x, y)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_training_a_language_model_reduces_its_loss(networks, family):
    network = networks[family]
    x, y = task_data(network, 1)
    start = initial_state(network.config, 0)
    trained = train(network, start, x, y, steps=40, lr=1e-2, seed=0)
    before, after = evaluate(network, start, x, y), evaluate(network, trained, x, y)
    assert after < 0.5 * before
    if family == "bert":
        # Only masked positions are scored, and [MASK] is never a target.
        assert (x != y).any() and not (y == mask_token_id(network.config)).any()


def test_masked_lm_loss_on_task_data_has_a_gradient(networks):
    """What the EWC regulariser computes: ``task_loss(task_logits(x), x, y)`` on ``task_data``
    batches is the masked-LM loss, with a gradient on the weights."""
    network = networks["bert"]
    x, y = task_data(network, 4)
    module = _module(network, initial_state(network.config, 0))
    loss = task_loss(task_logits(network, module, x[:64]), x[:64], y[:64])
    loss.backward()
    grad = module.get_input_embeddings().weight.grad
    assert torch.isfinite(loss) and float(loss.detach()) > 0 and grad.abs().sum() > 0


@pytest.mark.parametrize("family", ["bert", "llama", "vit"])
def test_seeded_training_is_deterministic(networks, family):
    network = networks[family]
    x, y = task_data(network, 2, seed=0)
    start = initial_state(network.config, 3)

    def run(seed):
        return train(network, start, x, y, steps=5, lr=3e-3, seed=seed)

    a, b, c = run(7), run(7), run(8)
    assert set(a) == set(start)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
