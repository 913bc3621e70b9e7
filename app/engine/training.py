"""Small, seeded training loops that make model zoos on a CPU in seconds.

Used by ``lineage demo``, the zoo builder and the tests. Data comes from scikit-learn's bundled
digits; a "task" is the digits with its labels relabelled by a seeded permutation, so parents
fine-tuned on different tasks really move apart, as fine-tunes on different data sets do.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from app.engine.architectures import Network, build_network
from app.engine.probes import digits


def initial_state(config: dict, seed: int) -> dict[str, torch.Tensor]:
    """A freshly initialised state for ``config``, seeded."""
    torch.manual_seed(seed)
    network = build_network(config)
    torch.manual_seed(seed)
    for module in network.module.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return {k: v.detach().clone() for k, v in network.module.state_dict().items()}


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


def train(
    network: Network,
    state: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    seed: int,
    batch_size: int = 64,
    weight_decay: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Fine-tune ``state`` on (x, y) with Adam and cross-entropy; return the new state."""
    torch.manual_seed(seed)
    module = copy.deepcopy(network.module).cpu()
    module.load_state_dict(state)
    module.train()
    optimiser = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=generator)
        loss = F.cross_entropy(module(x[index]), y[index])
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
