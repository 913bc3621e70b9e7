"""Small model factories shared by the test modules."""

from __future__ import annotations

import torch

TINY_MLP_CONFIG = {"model_type": "lineage-mlp", "sizes": [4, 8, 3], "activation": "relu"}
# A small ResNet whose tensors share no name and shape with the tiny MLP's.
TINY_CNN_CONFIG = {
    "model_type": "lineage-cnn",
    "in_channels": 1,
    "image_size": 8,
    "channels": [4, 8],
    "num_classes": 3,
}
TINY_MLP_SHAPES = {
    "layers.0.weight": (8, 4),
    "layers.0.bias": (8,),
    "layers.1.weight": (3, 8),
    "layers.1.bias": (3,),
}


def tiny_mlp_state(seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Valid weights for ``TINY_MLP_CONFIG``, seeded."""
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=gen).to(dtype) for n, s in TINY_MLP_SHAPES.items()}
