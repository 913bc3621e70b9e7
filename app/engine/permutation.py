"""Function-preserving permutations: the same function, other weights.

A permuted copy of a model is the hardest kind of disguised child for weight-space comparisons:
every tensor moves, yet the function is unchanged. ``permute(network, state, seed, scope)`` is the
one entry point, for every family the engine builds; ``scope`` says which symmetries it uses:

- ``"units"``: hidden units only. ``lineage-mlp``: every hidden layer's units; ``lineage-cnn``: the
  inner channels of every residual block (``training.permute_hidden_units``); ``transformers``
  (``gpt2``, ``bert``, ``llama``, ``vit``): the hidden units of every block's MLP (the
  nonlinearity acts elementwise, so it commutes with them; Llama's ``gate_proj`` and ``up_proj``
  rows move together, ``down_proj``'s columns with them) and the attention heads of every block,
  as whole heads (heads are summed by the output projection and the softmax acts within one head,
  so their order is arbitrary; within-head order is kept, which rotary embeddings need). With
  grouped-query attention a key/value head moves with its group of query heads.
  The residual stream is not touched: the output is the original's, number for number.
- ``"residual"``: all of the above plus the residual stream, one permutation per stream.
  ``transformers``: one permutation for the whole network (embeddings write into it, every block
  reads from and adds to it, and LayerNorm and RMSNorm commute with a permutation of their
  features: mean, variance and root mean square do not depend on the order, the affine part is
  elementwise). ``lineage-cnn``: one permutation per stream of channels, which a projection
  shortcut ends (a new stream per stage; the stem starts the first; ``fc`` reads the last).
  ``lineage-mlp`` has no residual stream: ``"residual"`` is ``"units"``.

A transformer's residual permutation is visible in its last hidden state, whose features come
out in the permuted order; ``residual_permutation`` returns it so that callers can undo it. A CNN's
and an MLP's outputs (logits or penultimate features) are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from app.engine.architectures import Network
from app.engine.training import permute_hidden_units

State = dict[str, torch.Tensor]
# What ``permute`` may permute: hidden units (MLP units, inner channels, attention heads) only, or
# those and the residual stream.
SCOPES = ("units", "residual")


class _Permuter:
    """A copy of a state, permuted in place along named axes, remembering what it touched."""

    def __init__(self, state: State):
        self.out = {k: v.clone() for k, v in state.items()}
        self.touched: set[str] = set()

    def take(self, name: str, dim: int, index: torch.Tensor | None) -> None:
        """Reorder ``name`` along ``dim`` by ``index``; None: this axis is left as it is (the
        residual stream under scope "units")."""
        if index is not None:
            tensor = self.out[name]
            self.out[name] = tensor.index_select(dim, index.to(tensor.device))
        self.touched.add(name)

    def linear(self, prefix: str, rows: torch.Tensor | None, cols: torch.Tensor | None) -> None:
        """An ``nn.Linear`` (weight (out, in), optional bias (out,)): outputs by ``rows``, inputs
        by ``cols``."""
        self.take(f"{prefix}.weight", 0, rows)
        self.take(f"{prefix}.weight", 1, cols)
        if f"{prefix}.bias" in self.out:
            self.take(f"{prefix}.bias", 0, rows)

    def norm(self, prefix: str, index: torch.Tensor | None) -> None:
        """A LayerNorm, RMSNorm or BatchNorm: every per-feature tensor it has along ``index``."""
        for stat in ("weight", "bias", "running_mean", "running_var"):
            if f"{prefix}.{stat}" in self.out:
                self.take(f"{prefix}.{stat}", 0, index)
        if f"{prefix}.num_batches_tracked" in self.out:
            self.leave(f"{prefix}.num_batches_tracked")

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
    p: _Permuter, network: Network, residual: torch.Tensor | None, gen: torch.Generator
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
    p: _Permuter, network: Network, residual: torch.Tensor | None, gen: torch.Generator
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


def _permute_llama(
    p: _Permuter, network: Network, residual: torch.Tensor | None, gen: torch.Generator
) -> None:
    config = network.module.config
    heads, layers = config.num_attention_heads, config.num_hidden_layers
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    group = heads // kv_heads
    p.take("embed_tokens.weight", 1, residual)
    for i in range(layers):
        block = f"layers.{i}"
        head_dim = p.out[f"{block}.self_attn.q_proj.weight"].shape[0] // heads
        # Whole heads, within-head order kept: rotary embeddings rotate pairs of dimensions of one
        # head. Query head h reads key/value head h // group, so a key/value head moves with its
        # group of query heads; the query heads of one group may be shuffled among themselves.
        kv_perm = torch.randperm(kv_heads, generator=gen)
        q_perm = torch.cat([g * group + torch.randperm(group, generator=gen) for g in kv_perm])
        q_idx, kv_idx = _head_index(q_perm, head_dim), _head_index(kv_perm, head_dim)
        units = torch.randperm(p.out[f"{block}.mlp.gate_proj.weight"].shape[0], generator=gen)
        p.norm(f"{block}.input_layernorm", residual)
        p.norm(f"{block}.post_attention_layernorm", residual)
        p.linear(f"{block}.self_attn.q_proj", q_idx, residual)
        p.linear(f"{block}.self_attn.k_proj", kv_idx, residual)
        p.linear(f"{block}.self_attn.v_proj", kv_idx, residual)
        p.linear(f"{block}.self_attn.o_proj", residual, q_idx)
        p.linear(f"{block}.mlp.gate_proj", units, residual)
        p.linear(f"{block}.mlp.up_proj", units, residual)
        p.linear(f"{block}.mlp.down_proj", residual, units)
    p.norm("norm", residual)


# ViT's layer names: transformers 5's own, and the older BERT-like ones.
_VIT_LAYOUTS = {
    "layers": {
        "block": "layers.{i}",
        "query": "attention.q_proj",
        "key": "attention.k_proj",
        "value": "attention.v_proj",
        "attention_out": "attention.o_proj",
        "fc_in": "mlp.fc1",
        "fc_out": "mlp.fc2",
    },
    "encoder.layer": {
        "block": "encoder.layer.{i}",
        "query": "attention.attention.query",
        "key": "attention.attention.key",
        "value": "attention.attention.value",
        "attention_out": "attention.output.dense",
        "fc_in": "intermediate.dense",
        "fc_out": "output.dense",
    },
}


def _permute_vit(
    p: _Permuter, network: Network, residual: torch.Tensor | None, gen: torch.Generator
) -> None:
    config = network.module.config
    heads, layers = config.num_attention_heads, config.num_hidden_layers
    layout = next(
        (
            names
            for names in _VIT_LAYOUTS.values()
            if f"{names['block'].format(i=0)}.{names['query']}.weight" in p.out
        ),
        _VIT_LAYOUTS["layers"],
    )
    # cls_token (1, 1, H), position_embeddings (1, P + 1, H), mask_token (1, 1, H): features last.
    for name in ("embeddings.cls_token", "embeddings.position_embeddings", "embeddings.mask_token"):
        if name in p.out:
            p.take(name, 2, residual)
    # The patch embedding is a convolution: its output channels write into the stream.
    p.take("embeddings.patch_embeddings.projection.weight", 0, residual)
    p.take("embeddings.patch_embeddings.projection.bias", 0, residual)
    for i in range(layers):
        block = layout["block"].format(i=i)
        head_dim = p.out[f"{block}.{layout['query']}.weight"].shape[0] // heads
        heads_idx = _head_index(torch.randperm(heads, generator=gen), head_dim)
        units = torch.randperm(p.out[f"{block}.{layout['fc_in']}.weight"].shape[0], generator=gen)
        for proj in ("query", "key", "value"):
            p.linear(f"{block}.{layout[proj]}", heads_idx, residual)
        p.linear(f"{block}.{layout['attention_out']}", residual, heads_idx)
        p.linear(f"{block}.{layout['fc_in']}", units, residual)
        p.linear(f"{block}.{layout['fc_out']}", residual, units)
        p.norm(f"{block}.layernorm_before", residual)
        p.norm(f"{block}.layernorm_after", residual)
    p.norm("layernorm", residual)
    # The pooler reads the class token of the stream: its inputs move, its outputs do not.
    if "pooler.dense.weight" in p.out:
        p.linear("pooler.dense", None, residual)


_PERMUTERS: dict[
    str, Callable[[_Permuter, Network, torch.Tensor | None, torch.Generator], None]
] = {
    "gpt2": _permute_gpt2,
    "bert": _permute_bert,
    "llama": _permute_llama,
    "vit": _permute_vit,
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
    """The permutation of the residual stream that ``permute(..., seed, "residual")`` (and
    ``permute_transformer``) applies to a ``transformers`` model for ``seed``.

    The permuted model's last hidden state is the original's with its features reordered by it:
    ``permuted.view(N, L, H) == original.view(N, L, H)[..., perm]``. It is the first draw of the
    seeded generator, so the functions agree. Raises ``NotImplementedError`` for unsupported
    model types (and for the CNN and MLP families, whose outputs are not reordered).
    """
    _permuter_for(network)
    hidden, _, _ = _dims(network)
    return torch.randperm(hidden, generator=torch.Generator().manual_seed(seed))


def _permute_transformers(network: Network, state: State, seed: int, residual: bool) -> State:
    permuter = _permuter_for(network)
    hidden, _, _ = _dims(network)
    gen = torch.Generator().manual_seed(seed)
    # Drawn under both scopes, so that the heads and units of "units" are those of "residual".
    stream = torch.randperm(hidden, generator=gen)
    p = _Permuter(state)
    permuter(p, network, stream if residual else None, gen)
    unknown = [n for n, _ in network.module.named_parameters() if n in state and n not in p.touched]
    if unknown:
        raise NotImplementedError(
            f"cannot permute a {network.config.get('model_type')!r} model with parameters "
            f"outside the supported layout: {', '.join(unknown[:5])}"
        )
    return p.out


def _cnn_residual_seed(seed: int) -> int:
    """The seed of a CNN's stream permutations, apart from that of its inner channels (the same
    seed would draw the same permutation for a stream and a block of as many channels)."""
    return (seed * 0x9E3779B1 + 0x7F4A7C15) % (1 << 62)


def _permute_cnn_streams(network: Network, state: State, seed: int) -> State:
    """Permute the channels of every residual stream of a ``LineageCNN`` state.

    A block computes relu(bn2(conv2(h)) + shortcut(x)) from its input x: its output channels are
    its input's when the shortcut is the identity (the same stream), or a new stream when the
    shortcut is a projection (1×1 conv + BatchNorm, whose inputs read the old stream). The stem
    (conv + BatchNorm) starts the first stream; ``fc`` reads the last one after pooling. Each
    block's ``conv1`` reads its input stream, ``conv2`` and ``bn2`` write its output stream.
    """
    gen = torch.Generator().manual_seed(_cnn_residual_seed(seed))
    p = _Permuter(state)
    stream = torch.randperm(p.out["stem.weight"].shape[0], generator=gen)
    p.take("stem.weight", 0, stream)
    p.norm("stem_bn", stream)
    for i in range(len(network.module.stages)):
        block = f"stages.{i}"
        out = stream
        if f"{block}.shortcut.0.weight" in p.out:
            out = torch.randperm(p.out[f"{block}.conv2.weight"].shape[0], generator=gen)
            p.take(f"{block}.shortcut.0.weight", 0, out)
            p.take(f"{block}.shortcut.0.weight", 1, stream)
            p.norm(f"{block}.shortcut.1", out)
        p.take(f"{block}.conv1.weight", 1, stream)
        p.take(f"{block}.conv2.weight", 0, out)
        p.norm(f"{block}.bn2", out)
        stream = out
    p.take("fc.weight", 1, stream)
    return p.out


def permute(network: Network, state: State, seed: int, scope: str) -> State:
    """A new state computing the same function as ``state`` with scrambled weights.

    ``scope`` (``SCOPES``):
    - ``"units"``: hidden units only, the residual stream kept. ``lineage-mlp``: the units of
      every hidden layer; ``lineage-cnn``: the inner channels of every residual block (conv1
      outputs, bn1, conv2 inputs); ``transformers`` (``gpt2``, ``bert``, ``llama``, ``vit``): every
      block's MLP hidden units and its attention heads (whole heads; with grouped-query attention
      each key/value head with its group of query heads). Embeddings, norms and every tensor
      that only reads or writes the stream are unchanged; so is the output.
    - ``"residual"``: the same, plus the residual stream. ``transformers``: one permutation of the
      whole stream (``residual_permutation``): embeddings (GPT-2 ``wte``/``wpe``; BERT's word,
      position and token-type embeddings and their LayerNorm; Llama's ``embed_tokens``; ViT's
      ``cls_token``, ``position_embeddings`` and the patch projection's output channels), every
      LayerNorm or RMSNorm, every matrix reading from or writing to the stream, the final norm
      and the pooler's inputs; the last hidden state comes out with its features permuted.
      ``lineage-cnn``: one permutation per stream of channels (``_permute_cnn_streams``: stem
      and stem_bn, each block's conv2/bn2 outputs and conv1 inputs, projection shortcuts' outputs
      and inputs, fc's input columns); the logits and features are unchanged.
      ``lineage-mlp`` has no residual stream: ``"residual"`` is ``"units"``.
    The heads and units drawn for one seed are the same under both scopes. The input is not
    modified; buffers other than BatchNorm statistics are copied unchanged.

    Raises ``ValueError`` for an unknown scope, ``NotImplementedError`` for a model type without
    a permutation, or a ``transformers`` model with parameters outside the supported layout
    (e.g. cross-attention), since leaving them unpermuted would silently change the function.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown permutation scope {scope!r}; choose one of: {', '.join(SCOPES)}")
    if network.family == "lineage-mlp":
        return permute_hidden_units(network, state, seed)
    if network.family == "lineage-cnn":
        units = permute_hidden_units(network, state, seed)
        return _permute_cnn_streams(network, units, seed) if scope == "residual" else units
    return _permute_transformers(network, state, seed, residual=scope == "residual")


def permute_transformer(network: Network, state: State, seed: int) -> State:
    """``permute(network, state, seed, "residual")`` for a ``transformers`` model: the residual
    stream (``residual_permutation``), the attention heads and the MLP hidden units of every
    block. Raises ``NotImplementedError`` for other families and unsupported model types."""
    _permuter_for(network)
    return _permute_transformers(network, state, seed, residual=True)
