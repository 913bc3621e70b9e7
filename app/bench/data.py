"""Training data of the zoos: bundled with scikit-learn or generated, never downloaded.

- Image and vector families learn scikit-learn's 8×8 digits; a task relabels the ten classes by a
  seeded permutation (``training.digits_task``), so fine-tunes on different tasks move apart as
  fine-tunes on different data sets do.
- The language families (GPT-2, Llama: causal LMs; BERT: a masked LM, ``training.objective``)
  learn synthetic languages: task t is a first-order Markov chain over the vocabulary whose rows
  each put their mass on a few seeded successor tokens. The root is trained on a mixture of chains
  (its "pretraining corpus"), parents and children on single chains. A masked LM's languages leave
  out its [MASK] id (the last of the vocabulary); its labels are the original sequences and its
  inputs the same sequences with a seeded 15% of positions masked (``train`` re-masks every batch).

Variants used by the benchmark's splits: ``few_shot`` keeps k examples per class (k sequences for
a language); ``imbalanced`` keeps class c with probability ρ^(c/(C−1)) (a long tail, as in
imbalanced CIFAR); for a language the start tokens follow the same long tail.
"""

from __future__ import annotations

import torch

from app.engine.architectures import Network
from app.engine.training import (
    MASKED_LM,
    digits_task,
    is_language,
    mask_token_id,
    mask_tokens,
    objective,
)

NUM_SEQUENCES = 1024
SUCCESSORS = 3
ROOT_MIXTURE = 8  # chains mixed in the language root's corpus


def _chain(task: int, vocab: int) -> torch.Tensor:
    """Transition matrix (V, V) of language ``task``: a few likely successors per token."""
    generator = torch.Generator().manual_seed(50_000 + task)
    logits = torch.full((vocab, vocab), -1e9)
    for token in range(vocab):
        successors = torch.randperm(vocab, generator=generator)[:SUCCESSORS]
        logits[token, successors] = 2.0 * torch.randn(SUCCESSORS, generator=generator)
    return torch.softmax(logits, dim=1)


def _sample_chain(
    transitions: torch.Tensor, start: torch.Tensor, n: int, length: int, generator
) -> torch.Tensor:
    tokens = torch.empty(n, length, dtype=torch.long)
    tokens[:, 0] = torch.multinomial(start, n, replacement=True, generator=generator)
    for i in range(1, length):
        tokens[:, i] = torch.multinomial(transitions[tokens[:, i - 1]], 1, generator=generator)[
            :, 0
        ]
    return tokens


def language_task(
    config: dict,
    task: int | None,
    n: int = NUM_SEQUENCES,
    start_tail: float | None = None,
    vocab: int | None = None,
) -> torch.Tensor:
    """Token sequences (n, L) of synthetic language ``task`` (None: the root's mixture), L the
    config's ``n_positions`` (GPT-2) or ``max_position_embeddings`` (BERT, Llama).

    ``vocab``: the token ids the language uses are 0..vocab−1 (default: the config's
    ``vocab_size``); a masked LM passes ``vocab_size − 1`` so that [MASK] is never emitted.
    """
    vocab = int(config["vocab_size"]) if vocab is None else int(vocab)
    length = int(config.get("n_positions") or config.get("max_position_embeddings"))
    generator = torch.Generator().manual_seed(70_000 + (task if task is not None else -1))
    start = torch.ones(vocab)
    if start_tail is not None:
        start = start_tail ** (torch.arange(vocab) / (vocab - 1))
    start = start / start.sum()
    if task is not None:
        return _sample_chain(_chain(task, vocab), start, n, length, generator)
    per_chain = n // ROOT_MIXTURE
    parts = [
        _sample_chain(_chain(-1 - k, vocab), start, per_chain, length, generator)
        for k in range(ROOT_MIXTURE)
    ]
    return torch.cat(parts)[torch.randperm(per_chain * ROOT_MIXTURE, generator=generator)]


def task_data(
    network: Network,
    task: int | None,
    *,
    few_shot: int | None = None,
    imbalance: float | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(inputs, labels) of ``task`` for ``network``: digits images or vectors and their classes
    (MLP, CNN, ViT: by the network's input kind); token sequences for a language model
    (``training.is_language``), with labels None for a causal LM; for a masked LM the inputs are the
    sequences with a seeded ``MASK_RATE`` of positions replaced by [MASK] and the labels are the
    original sequences (``training.task_loss`` counts the positions where the two differ).

    ``few_shot``: keep that many examples per class (sequences for a language).
    ``imbalance`` ρ: class c kept with probability ρ^(c/9); for a language, start tokens follow
    that tail instead.
    """
    generator = torch.Generator().manual_seed(90_000 + seed)
    if is_language(network):
        masked = objective(network) == MASKED_LM
        vocab = mask_token_id(network.config) if masked else None
        x = language_task(network.config, task, start_tail=imbalance, vocab=vocab)
        if few_shot is not None:
            x = x[torch.randperm(len(x), generator=generator)[:few_shot]]
        if masked:
            return mask_tokens(x, mask_token_id(network.config), generator), x
        return x, None
    x, y = digits_task(network, task)
    if few_shot is not None:
        keep = [
            torch.nonzero(y == c)[:, 0][torch.randperm(int((y == c).sum()), generator=generator)]
            for c in range(10)
        ]
        index = torch.cat([k[:few_shot] for k in keep])
        x, y = x[index], y[index]
    if imbalance is not None:
        kept = torch.rand(len(y), generator=generator) < imbalance ** (y.float() / 9)
        x, y = x[kept], y[kept]
    return x, y
