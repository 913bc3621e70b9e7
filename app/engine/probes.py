"""Probe inputs x_1..x_N on which parent and child functions are compared.

Seeded and reproducible: the same (network, N, seed) always gives the same batch.
- "vector" (``lineage-mlp``): rows of scikit-learn's bundled digits (64 features, scaled to [0, 1])
  when the input size is 64, else standard normal vectors.
- "image" (``lineage-cnn``, vision ``transformers`` such as ViT): digits images (8×8, scaled to
  [0, 1]), resized to the configured ``image_size`` and repeated over ``in_channels`` (ViT's
  ``num_channels``).
- "tokens" (other ``transformers``): uniform random token ids over the vocabulary, sequences of
  ``min(16, max positions)`` tokens.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from app.engine.architectures import Network

DEFAULT_NUM_PROBES = 64
DEFAULT_PROBE_SEED = 0
TOKEN_SEQUENCE_LENGTH = 16


@lru_cache(maxsize=1)
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8×8 digits: (images (1797, 8, 8) in [0, 1], labels (1797,))."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16.0).astype(np.float32), data.target.astype(np.int64)


def _digit_rows(n: int, generator: torch.Generator) -> torch.Tensor:
    images, _ = digits()
    index = torch.randint(0, len(images), (n,), generator=generator)
    return torch.from_numpy(images)[index]  # (N, 8, 8)


def _image_shape(network: Network) -> tuple[tuple[int, int], int]:
    """((height, width), channels) of a network's images: the config's ``image_size`` (an int or
    a pair) and ``in_channels`` or ``num_channels`` (ViT), else the built module's config (a
    ``transformers`` config fills in its defaults), else 8×8 and one channel."""
    config = network.config
    module_config = getattr(network.module, "config", None)

    def get(*keys, default):
        for key in keys:
            value = config.get(key)
            if value is None and module_config is not None and not isinstance(module_config, dict):
                value = getattr(module_config, key, None)
            if value is not None:
                return value
        return default

    size = get("image_size", default=8)
    pair = (int(size[0]), int(size[1])) if isinstance(size, list | tuple) else (int(size),) * 2
    return pair, int(get("in_channels", "num_channels", default=1))


def probe_inputs(
    network: Network,
    n: int = DEFAULT_NUM_PROBES,
    seed: int = DEFAULT_PROBE_SEED,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A batch of N probe inputs for ``network``, on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    config = network.config
    if network.input_kind == "vector":
        size = config["sizes"][0]
        x = _digit_rows(n, generator).flatten(1) if size == 64 else None
        if x is None:
            x = torch.randn(n, size, generator=generator)
    elif network.input_kind == "image":
        size, channels = _image_shape(network)
        x = _digit_rows(n, generator)[:, None]  # (N, 1, 8, 8)
        if size != (8, 8):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = x.repeat(1, channels, 1, 1)
    else:
        vocab = int(config.get("vocab_size", 2))
        positions = config.get("max_position_embeddings") or config.get("n_positions") or 512
        length = min(TOKEN_SEQUENCE_LENGTH, int(positions))
        x = torch.randint(0, vocab, (n, length), generator=generator)
    return x.to(device)
