"""Small, seeded training loops that make model zoos on a CPU in seconds.

Used by ``lineage demo``, the zoo builder and the tests. Image and vector data come from
scikit-learn's bundled digits; a "task" is the digits with its labels relabelled by a seeded
permutation, so parents fine-tuned on different tasks really move apart, as fine-tunes on
different data sets do.

What a network learns (``objective``) follows from the network itself:

- ``lineage-mlp`` / ``lineage-cnn``: classification, cross-entropy on the labels ``y``.
- a ``transformers`` vision model (ViT: input kind "image", or a config with ``num_channels`` or
  ``image_size``): classification of the digits; the class scores are the first ``NUM_CLASSES``
  features of the final [CLS] hidden state (``last_hidden_state[:, 0, :10]``), so no head
  parameters exist and the trained state is exactly the base model's.
- any other ``transformers`` model is a language model over the synthetic languages of
  ``app.bench.data`` whose output layer is its input embedding matrix (a tied head, no extra
  parameters). It is a *masked* LM when it is an encoder: its ``model_type`` has a masked-LM class
  in ``transformers`` (BERT, RoBERTa, ...) and its config does not set ``is_decoder``; otherwise
  (GPT-2, Llama, ...) a *causal* LM, whose labels are the next tokens (``y`` is None).

Masked LM: the last token id (``vocab_size − 1``) is [MASK], never emitted by the data. ``train``
replaces a seeded ``MASK_RATE`` of the positions of every batch by [MASK] (drawn from its
generator, so a seed gives the same masks), the model sees the masked sequence, and the loss is the
cross-entropy at the masked positions against the original tokens. ``task_loss(logits, x, y)``
takes the masked inputs as ``x`` and the original sequences as ``y`` and counts exactly the
positions where the two differ.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from app.engine.architectures import Network, build_network
from app.engine.probes import digits

CLASSIFICATION = "classification"  # lineage-mlp, lineage-cnn: class scores from the module
IMAGE_CLASSIFICATION = "image-classification"  # a transformers vision model (ViT): [CLS] features
CAUSAL_LM = "causal-lm"  # GPT-2, Llama: next-token prediction
MASKED_LM = "masked-lm"  # BERT: prediction of the [MASK]ed tokens
NUM_CLASSES = 10  # the digits' classes: a vision transformer's first features are its scores
MASK_RATE = 0.15  # share of a masked LM's positions replaced by [MASK] at every step


def is_vision(network: Network) -> bool:
    """Whether ``network`` is a ``transformers`` model of images (ViT): input kind "image", or a
    config that names ``num_channels`` or ``image_size`` (before the engine knew vision models)."""
    if network.family != "transformers":
        return False
    config = network.config
    return network.input_kind == "image" or "num_channels" in config or "image_size" in config


def is_masked_lm(config: dict) -> bool:
    """Whether a ``transformers`` text model trains as a masked LM: an encoder, i.e. its
    ``model_type`` has a masked-LM class in ``transformers`` and the config does not make it a
    decoder (``is_decoder``)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return config.get("model_type") in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not config.get(
        "is_decoder", False
    )


def objective(network: Network) -> str:
    """What ``network`` learns: ``CLASSIFICATION``, ``IMAGE_CLASSIFICATION``, ``CAUSAL_LM`` or
    ``MASKED_LM`` (the rules are in the module's docstring)."""
    if network.family != "transformers":
        return CLASSIFICATION
    if is_vision(network):
        return IMAGE_CLASSIFICATION
    return MASKED_LM if is_masked_lm(network.config) else CAUSAL_LM


def is_language(network: Network) -> bool:
    """Whether ``network`` learns the synthetic languages (token data) rather than the digits."""
    return objective(network) in (CAUSAL_LM, MASKED_LM)


def mask_token_id(config: dict) -> int:
    """A masked LM's [MASK] id: the last of the vocabulary, which the languages never emit."""
    return int(config["vocab_size"]) - 1


def mask_tokens(
    tokens: torch.Tensor, mask_id: int, generator: torch.Generator, rate: float = MASK_RATE
) -> torch.Tensor:
    """``tokens`` with each position replaced by ``mask_id`` with probability ``rate``, drawn from
    ``generator`` (one uniform per position, in order): the same generator state, the same masks."""
    chosen = torch.rand(tokens.shape, generator=generator) < rate
    return tokens.masked_fill(chosen, mask_id)


def initial_state(config: dict, seed: int) -> dict[str, torch.Tensor]:
    """A freshly initialised state for ``config``, seeded: different seeds share no weights."""
    torch.manual_seed(seed)
    network = build_network(config)
    torch.manual_seed(seed)
    for module in network.module.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        else:
            # Modules without their own initialiser (transformers' Conv1D) would otherwise keep
            # build_network's fixed-seed values, and every "independent" model would share them.
            for param in module.parameters(recurse=False):
                if param.dim() >= 2:
                    nn.init.normal_(param, std=0.02)
    return {k: v.detach().clone() for k, v in network.module.state_dict().items()}


def noisy_copy(
    state: dict[str, torch.Tensor], relative: float, seed: int
) -> dict[str, torch.Tensor]:
    """A fine-tune stand-in for timing: θ + relative·std(θ)·ε per float tensor of more than one
    value, ε seeded Gaussian noise; other tensors are kept as they are."""
    generator = torch.Generator().manual_seed(seed)
    return {
        k: v + relative * v.std() * torch.randn(v.shape, generator=generator)
        if v.is_floating_point() and v.numel() > 1
        else v
        for k, v in state.items()
    }


def digits_task(
    network: Network, task: int | None, num_classes: int = 10, subset: int | None = None, seed=0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of the digits for ``network``'s input kind; ``task`` relabels the classes
    by a seeded permutation (None: the true labels); ``subset`` keeps that many random samples;
    labels are taken modulo ``num_classes``."""
    images, labels = digits()
    x = torch.from_numpy(images)
    y = torch.from_numpy(labels)
    if task is not None:
        mapping = torch.randperm(10, generator=torch.Generator().manual_seed(1000 + task))
        y = mapping[y]
    y = y % num_classes
    if subset is not None:
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:subset]
        x, y = x[keep], y[keep]
    if network.input_kind == "vector":
        x = x.flatten(1)
    else:
        size = network.config.get("image_size", 8)
        x = x[:, None]
        if size != 8:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        channels = network.config.get("in_channels", network.config.get("num_channels", 1))
        x = x.repeat(1, channels, 1, 1)
    return x, y


def task_logits(network: Network, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The task's logits of ``module`` (``network``'s architecture) on ``x``: class scores (N, C)
    of an MLP or CNN; the first ``NUM_CLASSES`` features of the final [CLS] state (N, 10) of a
    vision transformer, given ``x`` as ``pixel_values`` (N, C, H, W); token scores (N, L, V) of a
    language model (causal or masked: the same computation on the sequence it is given), whose
    output layer is its input embedding matrix (GPT-2's tied head)."""
    if network.family == "transformers":
        if is_vision(network):
            hidden = module(pixel_values=x).last_hidden_state  # (N, 1 + patches, H)
            return hidden[:, 0, :NUM_CLASSES]
        hidden = module(x, attention_mask=torch.ones_like(x)).last_hidden_state  # (N, L, H)
        return hidden @ module.get_input_embeddings().weight.T
    return module(x)


def task_loss(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of the task:

    - ``y`` None (a causal LM): on the next token of ``x``;
    - ``y`` token labels (N, L) with token logits (N, L, V) (a masked LM): ``x`` is the masked
      sequence the model saw, ``y`` the original one, and the loss is the mean over the masked
      positions (where ``x`` and ``y`` differ) alone; zero, with a gradient, when none is masked;
    - else (classes): on the labels ``y``.
    """
    if y is None:
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    if logits.dim() == 3:
        labels = y.masked_fill(x == y, -100)
        if not bool((labels != -100).any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    return F.cross_entropy(logits, y)


# regulariser(module, x_batch, logits) -> extra loss term (EWC, distillation toward a teacher...)
Regulariser = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def train(
    network: Network,
    state: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor | None,
    *,
    steps: int,
    lr: float,
    seed: int,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    regulariser: Regulariser | None = None,
    task_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Fine-tune ``state`` on (x, y) with Adam; return the new state.

    The loss is ``task_weight`` × cross-entropy (``task_loss``) plus ``regulariser`` when given;
    ``task_weight=0`` trains on the regulariser alone (distillation from scratch).

    A masked LM (``objective``) learns the original sequences: ``y`` when given (``task_data``'s
    labels), else ``x``. Every batch is re-masked by ``mask_tokens`` with the run's generator
    (dynamic masking, deterministic given ``seed``); the regulariser gets the masked batch.
    """
    torch.manual_seed(seed)
    module = copy.deepcopy(network.module).cpu()
    module.load_state_dict(state)
    module.train()
    optimiser = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    masked = objective(network) == MASKED_LM
    for _ in range(steps):
        index = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=generator)
        if masked:
            yb = (x if y is None else y)[index]
            xb = mask_tokens(yb, mask_token_id(network.config), generator)
        else:
            xb, yb = x[index], None if y is None else y[index]
        logits = task_logits(network, module, xb)
        loss = task_weight * task_loss(logits, xb, yb)
        if regulariser is not None:
            loss = loss + regulariser(module, xb, logits)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    module.eval()
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _loaded(network: Network, state: dict[str, torch.Tensor]) -> nn.Module:
    module = copy.deepcopy(network.module).cpu()
    module.load_state_dict(state)
    return module.eval()


def accuracy(network: Network, state: dict[str, torch.Tensor], x, y) -> float:
    """Top-1 accuracy of ``state`` on (x, y) (classes: digits for an MLP, a CNN or a ViT)."""
    with torch.no_grad():
        if is_vision(network):
            logits = task_logits(network, _loaded(network, state), x)
        else:
            logits = network.output(state, x, use_head=True)
    return float((logits.argmax(1) == y).float().mean())


def evaluate(
    network: Network,
    state: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor | None,
    *,
    seed: int = 0,
) -> float:
    """Mean task loss (``task_loss``) of ``state`` on all of (x, y), in one batch. A masked LM is
    scored on the original sequences (``y``, else ``x``) masked by ``mask_tokens`` with ``seed``."""
    module = _loaded(network, state)
    if objective(network) == MASKED_LM:
        y = x if y is None else y
        x = mask_tokens(y, mask_token_id(network.config), torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return float(task_loss(task_logits(network, module, x), x, y))


def permute_hidden_units(
    network: Network, state: dict[str, torch.Tensor], seed: int
) -> dict[str, torch.Tensor]:
    """The same function with scrambled weights: permute every hidden layer's units.

    ``lineage-mlp``: rows of layer i and columns of layer i+1. ``lineage-cnn``: the inner channels
    of every residual block (conv1 outputs, bn1, conv2 inputs); the residual stream is kept.
    """
    generator = torch.Generator().manual_seed(seed)
    out = {k: v.clone() for k, v in state.items()}
    if network.family == "lineage-mlp":
        n_layers = len(network.config["sizes"]) - 1
        for i in range(n_layers - 1):
            w = out[f"layers.{i}.weight"]
            perm = torch.randperm(w.shape[0], generator=generator)
            out[f"layers.{i}.weight"] = w[perm]
            out[f"layers.{i}.bias"] = out[f"layers.{i}.bias"][perm]
            out[f"layers.{i + 1}.weight"] = out[f"layers.{i + 1}.weight"][:, perm]
        return out
    if network.family == "lineage-cnn":
        blocks = sorted({k.rsplit(".conv1.", 1)[0] for k in out if ".conv1." in k})
        for block in blocks:
            conv1 = out[f"{block}.conv1.weight"]
            perm = torch.randperm(conv1.shape[0], generator=generator)
            out[f"{block}.conv1.weight"] = conv1[perm]
            for stat in ("weight", "bias", "running_mean", "running_var"):
                out[f"{block}.bn1.{stat}"] = out[f"{block}.bn1.{stat}"][perm]
            out[f"{block}.conv2.weight"] = out[f"{block}.conv2.weight"][:, perm]
        return out
    raise NotImplementedError(f"hidden-unit permutation is not implemented for {network.family}")
