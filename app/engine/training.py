"""Small, seeded training loops that make model zoos on a CPU in seconds.

Used by ``lineage demo``, the zoo builder and the tests. Image and vector data come from
scikit-learn's bundled digits; a "task" is the digits with its labels relabelled by a seeded
permutation, so parents fine-tuned on different tasks really move apart, as fine-tunes on
different data sets do. ``transformers`` networks train as causal language models with their
input embeddings as the (tied) output layer; their labels are the next tokens (``y`` is None).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from app.engine.architectures import Network, build_network
from app.engine.probes import digits


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
        x = x.repeat(1, network.config.get("in_channels", 1), 1, 1)
    return x, y


def task_logits(network: Network, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The task's logits: class scores (N, C), or next-token scores (N, L, V) for a language
    model, whose output layer is its input embedding matrix (GPT-2's tied head)."""
    if network.family == "transformers":
        hidden = module(x, attention_mask=torch.ones_like(x)).last_hidden_state  # (N, L, H)
        return hidden @ module.get_input_embeddings().weight.T
    return module(x)


def task_loss(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy on the labels, or on the next token when ``y`` is None."""
    if y is None:
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
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
    """
    torch.manual_seed(seed)
    module = copy.deepcopy(network.module).cpu()
    module.load_state_dict(state)
    module.train()
    optimiser = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=generator)
        xb = x[index]
        logits = task_logits(network, module, xb)
        loss = task_weight * task_loss(logits, xb, None if y is None else y[index])
        if regulariser is not None:
            loss = loss + regulariser(module, xb, logits)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    module.eval()
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def accuracy(network: Network, state: dict[str, torch.Tensor], x, y) -> float:
    """Top-1 accuracy of ``state`` on (x, y)."""
    with torch.no_grad():
        logits = network.output(state, x, use_head=True)
    return float((logits.argmax(1) == y).float().mean())


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
