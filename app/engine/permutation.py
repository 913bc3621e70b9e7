"""Function-preserving permutations of ``transformers`` models: the same function, other weights.

A permuted copy of a model is the hardest kind of disguised child for weight-space comparisons:
every tensor moves, yet the function is unchanged. Three symmetries of a transformer are used:

- the hidden units of every MLP (the nonlinearity acts elementwise, so it commutes with them);
- the attention heads of every block (heads are summed by the output projection, and the softmax
  acts within one head, so their order is arbitrary);
- the residual stream, with one permutation for the whole network (embeddings write into it, every
  block reads from and adds to it, and LayerNorm commutes with a permutation of its features: its
  mean and variance do not depend on the order, and its affine part is elementwise).

The residual permutation is visible in the last hidden state, whose features come out in the
permuted order; ``residual_permutation`` returns it so that callers can undo it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from app.engine.architectures import Network

State = dict[str, torch.Tensor]


class _Permuter:
    """A copy of a state, permuted in place along named axes, remembering what it touched."""

    def __init__(self, state: State):
        self.out = {k: v.clone() for k, v in state.items()}
        self.touched: set[str] = set()

    def take(self, name: str, dim: int, index: torch.Tensor) -> None:
        tensor = self.out[name]
        self.out[name] = tensor.index_select(dim, index.to(tensor.device))
        self.touched.add(name)

    def leave(self, name: str) -> None:
        """Mark a tensor whose position in the function does not depend on any permutation."""
        self.touched.add(name)


def _head_index(head_perm: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Feature index moving whole heads: within-head order is kept, so q·k and the value mixing of
    every head are the same numbers, only computed in another head slot."""
    offsets = torch.arange(head_dim)
    return (head_perm[:, None] * head_dim + offsets).flatten()


def _dims(network: Network) -> tuple[int, int, int]:
    config = network.module.config
    return config.hidden_size, config.num_attention_heads, config.num_hidden_layers


def _permute_gpt2(
    p: _Permuter, network: Network, residual: torch.Tensor, gen: torch.Generator
) -> None:
    hidden, heads, layers = _dims(network)
    # transformers' Conv1D computes x @ W + b with W of shape (in, out): inputs are rows.
    for name in ("wte.weight", "wpe.weight"):
        p.take(name, 1, residual)
    for i in range(layers):
        block = f"h.{i}"
        heads_idx = _head_index(torch.randperm(heads, generator=gen), hidden // heads)
        # c_attn's columns are [q | k | v], each laid out head by head.
        qkv_idx = torch.cat([heads_idx, heads_idx + hidden, heads_idx + 2 * hidden])
        fc = p.out[f"{block}.mlp.c_fc.weight"]
        units = torch.randperm(fc.shape[1], generator=gen)
        for ln in ("ln_1", "ln_2"):
            p.take(f"{block}.{ln}.weight", 0, residual)
            p.take(f"{block}.{ln}.bias", 0, residual)
        p.take(f"{block}.attn.c_attn.weight", 0, residual)
        p.take(f"{block}.attn.c_attn.weight", 1, qkv_idx)
        p.take(f"{block}.attn.c_attn.bias", 0, qkv_idx)
        p.take(f"{block}.attn.c_proj.weight", 0, heads_idx)
        p.take(f"{block}.attn.c_proj.weight", 1, residual)
        p.take(f"{block}.attn.c_proj.bias", 0, residual)
        p.take(f"{block}.mlp.c_fc.weight", 0, residual)
        p.take(f"{block}.mlp.c_fc.weight", 1, units)
        p.take(f"{block}.mlp.c_fc.bias", 0, units)
        p.take(f"{block}.mlp.c_proj.weight", 0, units)
        p.take(f"{block}.mlp.c_proj.weight", 1, residual)
        p.take(f"{block}.mlp.c_proj.bias", 0, residual)
    p.take("ln_f.weight", 0, residual)
    p.take("ln_f.bias", 0, residual)


def _permute_bert(
    p: _Permuter, network: Network, residual: torch.Tensor, gen: torch.Generator
) -> None:
    hidden, heads, layers = _dims(network)
    # nn.Linear computes x @ W.T + b with W of shape (out, in): inputs are columns.
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        p.take(f"embeddings.{name}.weight", 1, residual)
    p.take("embeddings.LayerNorm.weight", 0, residual)
    p.take("embeddings.LayerNorm.bias", 0, residual)
    for i in range(layers):
        block = f"encoder.layer.{i}"
        heads_idx = _head_index(torch.randperm(heads, generator=gen), hidden // heads)
        inter = p.out[f"{block}.intermediate.dense.weight"]
        units = torch.randperm(inter.shape[0], generator=gen)
        for proj in ("query", "key", "value"):
            p.take(f"{block}.attention.self.{proj}.weight", 0, heads_idx)
            p.take(f"{block}.attention.self.{proj}.weight", 1, residual)
            p.take(f"{block}.attention.self.{proj}.bias", 0, heads_idx)
        p.take(f"{block}.attention.output.dense.weight", 0, residual)
        p.take(f"{block}.attention.output.dense.weight", 1, heads_idx)
        p.take(f"{block}.attention.output.dense.bias", 0, residual)
        p.take(f"{block}.intermediate.dense.weight", 0, units)
        p.take(f"{block}.intermediate.dense.weight", 1, residual)
        p.take(f"{block}.intermediate.dense.bias", 0, units)
        p.take(f"{block}.output.dense.weight", 0, residual)
        p.take(f"{block}.output.dense.weight", 1, units)
        p.take(f"{block}.output.dense.bias", 0, residual)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            p.take(f"{block}.{ln}.weight", 0, residual)
            p.take(f"{block}.{ln}.bias", 0, residual)
    # The pooler is outside f, but it reads the residual stream: permuting its inputs keeps the
    # pooled output (and any task head on it) unchanged too. Its own outputs are not permuted.
    if "pooler.dense.weight" in p.out:
        p.take("pooler.dense.weight", 1, residual)
        p.leave("pooler.dense.bias")


_PERMUTERS: dict[str, Callable[[_Permuter, Network, torch.Tensor, torch.Generator], None]] = {
    "gpt2": _permute_gpt2,
    "bert": _permute_bert,
}


def _permuter_for(network: Network) -> Callable[..., None]:
    model_type = network.config.get("model_type") if network.family == "transformers" else None
    permuter = _PERMUTERS.get(model_type) if model_type else None
    if permuter is None:
        kind = f"model_type {model_type!r}" if model_type else f"family {network.family!r}"
        raise NotImplementedError(
            f"transformer permutation is not implemented for {kind}; "
            f"supported model types: {', '.join(sorted(_PERMUTERS))}"
        )
    return permuter


def residual_permutation(network: Network, seed: int) -> torch.Tensor:
    """The permutation of the residual stream that ``permute_transformer`` applies for ``seed``.

    The permuted model's last hidden state is the original's with its features reordered by it:
    ``permuted.view(N, L, H) == original.view(N, L, H)[..., perm]``. It is the first draw of the
    seeded generator, so both functions agree. Raises ``NotImplementedError`` for unsupported
    model types.
    """
    _permuter_for(network)
    hidden, _, _ = _dims(network)
    return torch.randperm(hidden, generator=torch.Generator().manual_seed(seed))


def permute_transformer(network: Network, state: State, seed: int) -> State:
    """A new state computing the same function as ``state`` with scrambled weights.

    Permuted (``gpt2`` and ``bert``), from one ``torch.Generator`` seeded with ``seed``:
    - the residual stream, one permutation for the whole network (``residual_permutation``):
      embeddings, every LayerNorm, every matrix reading from or writing to the stream, the final
      LayerNorm and the pooler's inputs. LayerNorm normalises with a mean and variance that do not
      depend on feature order and then scales elementwise, so it commutes with the permutation;
      the last hidden state comes out with its features in the permuted order.
    - the attention heads of every block, as whole heads (q, k, v together, and the matching inputs
      of the output projection): heads are independent and summed, so their order is arbitrary.
    - the MLP hidden units of every block: the activation is elementwise.
    Within-head dimensions are left alone. Buffers (masks, position ids) are copied unchanged.
    The input is not modified. Raises ``NotImplementedError`` for other model types, and for a
    model with parameters this permutation does not know about (e.g. cross-attention), since
    leaving them unpermuted would silently change the function.
    """
    permuter = _permuter_for(network)
    hidden, _, _ = _dims(network)
    gen = torch.Generator().manual_seed(seed)
    residual = torch.randperm(hidden, generator=gen)
    p = _Permuter(state)
    permuter(p, network, residual, gen)
    unknown = [n for n, _ in network.module.named_parameters() if n in state and n not in p.touched]
    if unknown:
        raise NotImplementedError(
            f"cannot permute a {network.config.get('model_type')!r} model with parameters "
            f"outside the supported layout: {', '.join(unknown[:5])}"
        )
    return p.out
