"""LoRA adapters for the tests and the adapter benchmark, trained with peft on the zoo's data."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from app.engine.architectures import Network, build_network
from app.engine.training import task_logits, task_loss

# Layers a LoRA adapts, per architecture, as peft names them (suffixes of module names).
TARGETS = {"gpt2": ["c_attn", "c_fc"], "bert": ["query", "value"], "lineage-mlp": ["layers.1"]}


def train_lora(
    network: Network,
    state: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor | None,
    out: Path,
    *,
    steps: int,
    base_name: str,
    seed: int = 0,
    rank: int = 4,
    lr: float = 3e-3,
) -> Path:
    """A LoRA adapter of ``state`` trained with peft for ``steps`` on (x, y), saved to ``out``
    as peft saves it (``adapter_config.json`` declaring ``base_name``, and safetensors)."""
    import peft

    torch.manual_seed(seed)
    module = build_network(network.config).module
    module.load_state_dict(state)
    model_type = network.config["model_type"]
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=TARGETS[model_type],
        fan_in_fan_out=model_type == "gpt2",  # GPT-2's Conv1D stores W as (in, out)
    )
    model = peft.get_peft_model(module, config)
    model.train()
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(0, len(x), (32,), generator=generator)
        logits = task_logits(network, model.base_model.model, x[index])
        loss = task_loss(logits, x[index], None if y is None else y[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    # save_embedding_layers=False: peft would otherwise look the base up on the hub.
    model.save_pretrained(out, safe_serialization=True, save_embedding_layers=False)
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = base_name
    (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    return out
