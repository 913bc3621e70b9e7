"""LoRA adapter children: merged onto each candidate base with ``peft``, attributed by alignment.

A PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``) holds no base weights, so
no weight distance can name its base: merged onto any base it fits, it sits exactly ΔW away from
that base. What does depend on the real base is *where* ΔW points. Training moves LoRA's A
towards the inputs the base feeds the adapted layer (∂L/∂A = Bᵀ g xᵀ), so ΔW responds strongly
to the real base's activations, and to an unrelated model's only as much as to the same
activations with their units shuffled. Per adapted layer, on the probe inputs X the candidate
feeds it, the response r = ‖ΔW applied to X‖² is compared with r under random permutations P of
the input units (which keep what all models share, such as the positive mean after a ReLU, and
lose which unit is which):

    z_layer = (log r − mean_P log r_P) / std_P log r_P,   alignment = Σ z_layer / √layers.

Unrelated models of the same shape score near 0, the real base several units above (measured in
docs/benchmarks.md, "LoRA adapters"); a full fine-tune of the base sits just below the base, and
nothing in an adapter can tell those two apart with certainty. A layer fed by the raw input (the
same X for every candidate) shifts every candidate alike.

peft does the merge, so every LoRA variant it knows (rsLoRA scaling, DoRA, fan-in-fan-out Conv1D
layers) is merged as peft would; ΔW is then the merged weights minus the base's. Adapter tensors
are read by the engine from safetensors and handed to peft, which therefore never opens a file.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from app.engine.architectures import Network, model_state
from app.engine.errors import IncompatibleModels, InvalidArgument, LineageError
from app.engine.model_files import LoadedModel, parse_json

ADAPTER_CONFIG = "adapter_config.json"
METHOD = "adapter-alignment"
# The best candidate is named only when its alignment (a z-score) clears this: p ≈ 0.001 that an
# unrelated model responds so strongly.
THRESHOLD = 3.0
# Confidence is sigmoid((best − runner-up) / SCALE): a runner-up as aligned as the best (a
# fine-tune of the base, say) leaves the answer near a coin toss, as it should.
SCALE = 1.0
NULL_SAMPLES = 64
PEFT_PREFIX = "base_model.model."


class InvalidAdapter(LineageError):
    """An adapter folder that cannot be read or is not a LoRA adapter."""

    code = "invalid_adapter"


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter child: its peft config and its LoRA tensors (names without peft's prefix)."""

    model: LoadedModel
    config: dict
    tensors: dict[str, torch.Tensor]

    @property
    def base_name(self) -> str | None:
        value = self.config.get("base_model_name_or_path")
        return value if isinstance(value, str) and value else None


def _has_lora_tensors(model: LoadedModel) -> bool:
    return any(".lora_" in name for name in model.weights)


def is_adapter(model: LoadedModel) -> bool:
    """Whether ``model`` is an adapter rather than a full model."""
    return (model.path.is_dir() and (model.path / ADAPTER_CONFIG).is_file()) or _has_lora_tensors(
        model
    )


def read_adapter(model: LoadedModel) -> Adapter:
    """Read an adapter's config and tensors; ``InvalidAdapter`` says what is wrong."""
    where = model.path / ADAPTER_CONFIG if model.path.is_dir() else None
    if where is None or not where.is_file():
        raise InvalidAdapter(
            f"{model.name}: LoRA weights without {ADAPTER_CONFIG}; upload the adapter folder "
            f"({ADAPTER_CONFIG} and adapter_model.safetensors)"
        )
    try:
        config = parse_json(where.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidAdapter(f"{model.name}: {ADAPTER_CONFIG} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{model.name}: {ADAPTER_CONFIG} must be a JSON object")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise InvalidAdapter(
            f"{model.name}: adapter type {config.get('peft_type')!r} is not supported "
            "(only LoRA adapters can be merged onto a base)"
        )
    tensors = {}
    for name in model.weights:
        if ".lora_" not in name:
            continue  # modules_to_save (a task head): replaced wholesale, says nothing of the base
        key = name[len(PEFT_PREFIX) :] if name.startswith(PEFT_PREFIX) else name
        tensors[key] = model.weights[name].to(torch.float32)
    if not tensors:
        raise InvalidAdapter(f"{model.name}: the adapter's weights hold no LoRA tensors")
    return Adapter(model, config, tensors)


def _lora_config(adapter: Adapter):
    from peft import LoraConfig

    known = LoraConfig.__dataclass_fields__
    fields = {k: v for k, v in adapter.config.items() if k in known and k != "peft_type"}
    fields["inference_mode"] = True
    try:
        return LoraConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise InvalidAdapter(f"{adapter.model.name}: {ADAPTER_CONFIG}: {exc}") from None


def merged_delta(
    network: Network, base: LoadedModel, adapter: Adapter, device: torch.device | str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(base state, ΔW per changed tensor) of ``adapter`` merged onto ``base`` by peft.

    Raises ``IncompatibleModels`` when the adapter does not fit ``base`` (a target module it
    lacks, LoRA tensors of the wrong shape, or tensors with no module to go to).
    """
    from peft import get_peft_model, set_peft_model_state_dict

    base_state, _ = model_state(network, base, device)
    module = copy.deepcopy(network.module)
    module.load_state_dict(base_state)
    prefix = network.file_prefix
    # An adapter trained on a task model (BertForX) names its modules under the base prefix.
    tensors = {
        PEFT_PREFIX + (k[len(prefix) :] if prefix and k.startswith(prefix) else k): v.to(device)
        for k, v in adapter.tensors.items()
    }
    try:
        with warnings.catch_warnings():  # peft's notes on names and deprecations: not the user's
            warnings.simplefilter("ignore")
            wrapped = get_peft_model(module, _lora_config(adapter))
            result = set_peft_model_state_dict(wrapped, tensors)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise IncompatibleModels(
            f"adapter {adapter.model.name} does not fit {base.name}: {str(exc).splitlines()[0]}"
        ) from None
    unexpected = [k for k in result.unexpected_keys if ".lora_" in k]
    if unexpected:
        raise IncompatibleModels(
            f"adapter {adapter.model.name} does not fit {base.name}: no module for "
            f"{', '.join(sorted(unexpected)[:3])}"
        )
    merged = wrapped.merge_and_unload().state_dict()
    delta = {
        name: merged[name] - base_state[name]
        for name in base_state
        if name in merged
        and base_state[name].is_floating_point()
        and not torch.equal(merged[name], base_state[name])
    }
    if not delta:
        raise IncompatibleModels(
            f"adapter {adapter.model.name} changes nothing when merged onto {base.name}"
        )
    return base_state, delta


def _rows(module: nn.Module, x: torch.Tensor, weight: torch.Tensor):
    """(inputs as rows, ΔW as (out, d_in)) for the layer types whose response is linear in W."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, nn.Linear):
        return x.reshape(-1, weight.shape[1]), weight
    if isinstance(module, Conv1D):  # y = x W, W of shape (in, out)
        return x.reshape(-1, weight.shape[0]), weight.T
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        patches = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1]), weight.flatten(1)
    return None  # embeddings and the like: the input is an index, not a direction


def shuffled_responses(
    x: torch.Tensor, w: torch.Tensor, samples: int = NULL_SAMPLES, seed: int = 0
) -> torch.Tensor:
    """‖x P Wᵀ‖² for ``samples`` seeded random permutations P of the input units.

    A permutation keeps what any model's activations share (a positive mean after ReLU, the scale
    of each layer) and loses which unit is which, which only the real base knows.
    """
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty(samples, dtype=x.dtype)
    for k in range(samples):
        order = torch.randperm(x.shape[1], generator=generator).to(x.device)
        out[k] = (x[:, order] @ w.T).pow(2).sum()
    return out


def alignment(
    network: Network,
    base_state: dict[str, torch.Tensor],
    delta: dict[str, torch.Tensor],
    probes: torch.Tensor,
) -> float:
    """Σ z / √layers over adapted layers, z = how far log ‖ΔW x‖² on the inputs the base feeds
    the layer lies above the same with the input units shuffled, in units of the shuffles' std."""
    modules = dict(network.module.named_modules())
    layers = {}
    for name, weight in delta.items():
        owner, _, leaf = name.rpartition(".")
        if leaf == "weight" and owner in modules and weight.dim() >= 2:
            layers[owner] = weight
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        modules[owner].register_forward_hook(
            lambda _m, args, _out, owner=owner: inputs.__setitem__(owner, args[0].detach())
        )
        for owner in layers
    ]
    try:
        with torch.no_grad():
            network.output(base_state, probes, use_head=False)
    finally:
        for hook in hooks:
            hook.remove()
    values = []
    for owner, weight in layers.items():
        if owner not in inputs:
            continue
        rows = _rows(modules[owner], inputs[owner], weight)
        if rows is None:
            continue
        x, w = rows
        x, w = x.double(), w.double()
        response = float((x @ w.T).pow(2).sum())
        null = shuffled_responses(x, w).clamp_min(1e-300).log()
        if response > 0:
            spread = max(float(null.std()), 1e-6)
            values.append((math.log(response) - float(null.mean())) / spread)
    if not values:
        raise IncompatibleModels("the adapter changes no layer whose response can be measured")
    return sum(values) / math.sqrt(len(values))


def check_adapter_method(method: str, auto: str) -> None:
    """``InvalidArgument`` unless ``method`` scores an adapter child: ``auto`` or ``METHOD``."""
    if method not in (auto, METHOD):
        raise InvalidArgument(
            f"the child is a LoRA adapter: it is scored by {METHOD!r} (or 'auto'), not {method!r}"
        )
