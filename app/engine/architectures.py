"""Forward functions from ``config.json``: the project's own families and ``transformers`` models.

Which output is f(x), the K-dimensional vector the function-space methods compare:
- ``lineage-mlp`` and ``lineage-cnn``: the logits when parent and child heads have the same shape;
  the penultimate features (the input of the head) when the child's head was replaced.
- any ``transformers`` architecture: the base model's last hidden state (N, L, H), flattened to
  (N, L·H); L counts tokens, or a vision transformer's patches plus its class token (a model
  whose forward takes ``pixel_values`` has input_kind "image" and gets images, no mask). Task
  heads (classifier, LM head, pooler) are outside the base model and never enter f, so a
  re-initialised head is handled by construction.

Weights enter the network through ``torch.func.functional_call``, so one module serves every model
of the same architecture and the linearisation can differentiate with respect to a dict of tensors.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_parameter_registration_hook,
)

from app.engine import weightspace
from app.engine.errors import (
    IncompatibleModels,
    InvalidConfig,
    LineageError,
    RemoteCodeRefused,
    ShapeMismatch,
)
from app.engine.model_files import LoadedModel, load_model

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
}


class LineageMLP(nn.Module):
    """Fully connected network: ``sizes = [in, hidden..., out]``; layers named ``layers.{i}``."""

    def __init__(self, sizes: list[int], activation: str = "relu"):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor:
        h = x.flatten(1)
        for layer in self.layers[:-1]:
            h = self.activation(layer(h))
        return h if features else self.layers[-1](h)


class BasicBlock(nn.Module):
    """ResNet basic block: conv-BN-ReLU-conv-BN plus a (projected) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class LineageCNN(nn.Module):
    """A small ResNet: stem, one stage per entry of ``channels`` (stride 2 after the first),
    global average pooling, linear head ``fc``."""

    def __init__(self, in_channels: int, channels: list[int], num_classes: int, blocks: int = 1):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(channels[0])
        stages, c_prev = [], channels[0]
        for i, c in enumerate(channels):
            for j in range(blocks):
                stages.append(BasicBlock(c_prev, c, stride=2 if (i > 0 and j == 0) else 1))
                c_prev = c
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor:
        h = F.relu(self.stem_bn(self.stem(x)))
        h = self.stages(h).mean(dim=(2, 3))  # (N, C)
        return h if features else self.fc(h)


@dataclass
class Network:
    """A module of one architecture, plus what the engine needs to know about it.

    ``head``: state names of the task head that a fine-tune may replace. ``input_kind``: which
    probes it takes ("vector", "image" or "tokens"). ``file_names`` maps state names to the names
    the weights carry in files (``transformers`` task models prefix the base model's names).
    """

    family: str
    module: nn.Module
    config: dict
    input_kind: str
    head: frozenset[str] = frozenset()
    file_prefix: str = ""
    optional: frozenset[str] = frozenset()
    _init_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def param_names(self) -> list[str]:
        return [n for n, _ in self.module.named_parameters()]

    def file_name(self, state_name: str, available: set[str]) -> str | None:
        """Where a state tensor lives in a model file (prefixed or not), or None."""
        for candidate in (state_name, self.file_prefix + state_name):
            if candidate in available:
                return candidate
        return None

    def output(
        self, state: dict[str, torch.Tensor], x: torch.Tensor, use_head: bool = True
    ) -> torch.Tensor:
        """f(x) for the weights in ``state``: (N, K)."""
        if self.family == "transformers":
            if self.input_kind == "image":  # a vision transformer: images, no attention mask
                out = functional_call(self.module, state, (), {"pixel_values": x})
            else:
                attention = torch.ones_like(x)
                out = functional_call(self.module, state, (x,), {"attention_mask": attention})
            return out.last_hidden_state.flatten(1)
        return functional_call(self.module, state, (x,), {"features": not use_head})


def _int_list(config: dict, key: str) -> list[int]:
    value = config.get(key)
    if not (isinstance(value, list) and value and all(isinstance(v, int) and v > 0 for v in value)):
        raise InvalidConfig(f"config {key!r} must be a non-empty list of positive integers")
    return value


def _positive_int(config: dict, key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if not (isinstance(value, int) and value > 0):
        raise InvalidConfig(f"config {key!r} must be a positive integer, got {value!r}")
    return value


def _build_mlp(config: dict) -> Network:
    sizes = _int_list(config, "sizes")
    if len(sizes) < 2:
        raise InvalidConfig("config 'sizes' needs at least an input and an output size")
    activation = config.get("activation", "relu")
    if activation not in ACTIVATIONS:
        raise InvalidConfig(f"activation {activation!r} is not one of {sorted(ACTIVATIONS)}")
    module = LineageMLP(sizes, activation)
    last = len(sizes) - 2
    head = frozenset({f"layers.{last}.weight", f"layers.{last}.bias"})
    return Network("lineage-mlp", module, config, "vector", head=head)


def _build_cnn(config: dict) -> Network:
    channels = _int_list(config, "channels")
    module = LineageCNN(
        _positive_int(config, "in_channels", 1),
        channels,
        _positive_int(config, "num_classes"),
        _positive_int(config, "blocks", 1),
    )
    _positive_int(config, "image_size", 8)
    return Network("lineage-cnn", module, config, "image", head=frozenset({"fc.weight", "fc.bias"}))


def _transformers_input_kind(module: nn.Module) -> str:
    """ "image" for a model whose forward takes ``pixel_values`` (ViT and kin), else "tokens"."""
    return "image" if getattr(module, "main_input_name", None) == "pixel_values" else "tokens"


def _build_transformers(config: dict) -> Network:
    import transformers

    model_type = config.get("model_type")
    try:
        config_class = transformers.CONFIG_MAPPING[model_type]
    except KeyError:
        raise InvalidConfig(f"unknown model_type {model_type!r}") from None
    try:
        hf_config = config_class.from_dict({k: v for k, v in config.items() if k != "model_type"})
        # Forward-mode AD (the exact linearisation) has no rule for the fused SDPA kernels.
        module = transformers.AutoModel.from_config(hf_config, attn_implementation="eager")
    except LineageError:  # the tensor budget of ``validate_architecture``
        raise
    except Exception as exc:  # transformers raises many types for bad configs
        raise InvalidConfig(f"cannot build a {model_type!r} model from its config: {exc}") from None
    prefix = getattr(module, "base_model_prefix", "") or ""
    # Pooler layers sit after the last hidden state: missing from many checkpoints, never in f.
    optional = frozenset(n for n in module.state_dict() if n.startswith("pooler."))
    return Network(
        "transformers",
        module,
        config,
        _transformers_input_kind(module),
        file_prefix=f"{prefix}." if prefix else "",
        optional=optional,
    )


FAMILIES: dict[str, Callable[[dict], Network]] = {
    "lineage-mlp": _build_mlp,
    "lineage-cnn": _build_cnn,
}

# Config keys that make ``transformers`` import code from the hub (``auto_map`` names classes in
# the model's own repository; ``trust_remote_code`` asks for them), refused wherever they appear.
REMOTE_CODE_KEYS = ("auto_map", "trust_remote_code", "custom_pipelines")
# Keys naming an implementation that ``transformers`` may fetch from the hub as a "kernel"
# (``org/repo``), and the built-in names a config may give them. Networks are built with eager
# attention whatever the config says.
IMPLEMENTATION_KEYS = (
    "attn_implementation",
    "_attn_implementation",
    "experts_implementation",
    "_experts_implementation",
)
BUILT_IN_IMPLEMENTATIONS = {
    "eager",
    "sdpa",
    "flash_attention_2",
    "flash_attention_3",
    "flex_attention",
    "grouped_mm",
    "batched_mm",
}


def refuse_remote_code(config: dict) -> None:
    """Raise ``RemoteCodeRefused`` when a config (or any config nested in it) asks
    ``transformers`` for code from the hub: ``REMOTE_CODE_KEYS``, or an ``IMPLEMENTATION_KEYS``
    value that is not a built-in name (``BUILT_IN_IMPLEMENTATIONS``; a dict of them per
    sub-config is allowed). Configs are data; the engine never runs code a model ships."""
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            if key in REMOTE_CODE_KEYS:
                raise RemoteCodeRefused(
                    f"config names {key!r}: models whose code comes from the hub are refused "
                    "(only built-in transformers architectures are built)"
                )
            if key in IMPLEMENTATION_KEYS:
                names = value.values() if isinstance(value, dict) else [value]
                unknown = [n for n in names if n is not None and n not in BUILT_IN_IMPLEMENTATIONS]
                if unknown:
                    raise RemoteCodeRefused(
                        f"config {key!r} is {unknown[0]!r}, not a built-in implementation "
                        f"({', '.join(sorted(BUILT_IN_IMPLEMENTATIONS))}): code from the hub is "
                        "refused"
                    )
            stack.append(value)


def build_network(config: dict | None, device: torch.device | str = "cpu") -> Network:
    """Build the module a config describes, in eval mode on ``device``, with seeded init.

    Raises ``InvalidConfig`` for a missing or unknown architecture, ``RemoteCodeRefused`` for a
    config that asks for code from the hub.
    """
    if not config:
        raise InvalidConfig("no config.json: the architecture is unknown")
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise InvalidConfig("config has no 'model_type'")
    refuse_remote_code(config)
    torch.manual_seed(0)  # optional tensors (poolers) get the same values every time
    builder = FAMILIES.get(model_type, _build_transformers)
    network = builder(config)
    network.module.to(device).eval()
    network._init_state = {k: v.detach() for k, v in network.module.state_dict().items()}
    return network


@lru_cache(maxsize=8)
def _network(config_json: str, device: str) -> Network:
    return build_network(json.loads(config_json), device)


def network_for(config: dict | None, device: torch.device | str = "cpu") -> Network:
    """The (cached) module for a config; modules hold no weights of their own that matter."""
    if not config:
        raise InvalidConfig("no config.json: the architecture is unknown")
    return _network(json.dumps(config, sort_keys=True), str(device))


# Function-space methods on a ``transformers`` model of more parameters than this work on a
# sub-network (``function_subnetwork``): 400 M float32 parameters are 1.6 GB per state, and a pair
# holds two states, a tangent and the activations of the probes.
FUNCTION_SPACE_MAX_PARAMETERS = 400_000_000
# Where configs give their number of blocks.
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


@dataclass(frozen=True)
class Subnetwork:
    """The part of a model that function-space methods used: its embeddings, its first
    ``blocks`` of ``of`` blocks and what follows the last block (final norm), as a model whose
    config says ``blocks`` layers would hold them."""

    blocks: int
    of: int
    parameters: int

    def to_dict(self) -> dict:
        return {"blocks": self.blocks, "of": self.of, "parameters": self.parameters}


def _parameters_on_meta(config: dict) -> int:
    with torch.device("meta"):
        network = build_network(config, "meta")
    return sum(p.numel() for p in network.module.parameters())


def function_subnetwork(
    config: dict | None, num_parameters: int, max_parameters: int | None = None
) -> tuple[dict | None, Subnetwork | None]:
    """The config function-space methods build for a model of ``num_parameters``, and the
    ``Subnetwork`` it stands for (None: the whole model).

    A model within ``max_parameters`` (default ``FUNCTION_SPACE_MAX_PARAMETERS``), or one whose
    config has no number of blocks (``LAYER_KEYS``), is built whole. A larger one is built with
    its first N blocks, N as many as fit the budget (at least one): the per-block and the fixed
    parameters are counted on networks of one and two blocks built on the ``meta`` device
    (nothing allocated). Parent and child are compared on the same sub-network, so its output
    f(x), the last kept block's hidden state, serves as the whole model's would.
    """
    budget = FUNCTION_SPACE_MAX_PARAMETERS if max_parameters is None else max_parameters
    if not config or num_parameters <= budget:
        return config, None
    key = next(
        (k for k in LAYER_KEYS if type(config.get(k)) is int and config[k] > 1),  # noqa: E721
        None,
    )
    if key is None:
        return config, None
    layers = config[key]
    try:
        one = _parameters_on_meta({**config, key: 1})
        per_block = _parameters_on_meta({**config, key: 2}) - one
    except Exception:  # not buildable on meta: built whole, as before
        return config, None
    fixed = one - per_block
    blocks = max(1, min(layers, (budget - fixed) // max(per_block, 1)))
    if blocks >= layers:
        return config, None
    return {**config, key: blocks}, Subnetwork(blocks, layers, fixed + blocks * per_block)


def _state_plan(
    network: Network, model: LoadedModel, strict_head: bool
) -> tuple[dict[str, str | None], bool]:
    """Where each tensor of the network's state comes from, decided from the weights' headers
    alone (nothing is read): a file tensor's name, or None for the network's own tensor (an
    optional pooler, a batch counter, or a head the child replaced). Returns (plan, head_fits);
    any other missing or misshapen tensor raises ``ShapeMismatch`` naming it."""
    infos = model.weights.infos
    available = set(infos)
    plan: dict[str, str | None] = {}
    missing, misshapen, head_fits = [], [], True
    for name, init in network._init_state.items():
        file_name = network.file_name(name, available)
        if file_name is None:
            if name in network.optional or (name in network.head and not strict_head):
                plan[name] = None
                head_fits = head_fits and name not in network.head
                continue
            if name.endswith("num_batches_tracked"):
                plan[name] = None
                continue
            missing.append(name)
            continue
        info = infos[file_name]
        if tuple(info.shape) != tuple(init.shape) or (
            init.is_floating_point() and not info.is_float
        ):
            if name in network.head and not strict_head:
                plan[name] = None
                head_fits = False
                continue
            if tuple(info.shape) != tuple(init.shape):
                misshapen.append(f"{name} {tuple(info.shape)} (expected {tuple(init.shape)})")
            else:
                misshapen.append(f"{name} stored as {info.dtype} (expected floating point)")
            continue
        plan[name] = file_name
    if missing or misshapen:
        parts = []
        if missing:
            parts.append(f"missing tensors: {', '.join(missing[:5])}")
        if misshapen:
            parts.append(f"wrong shapes: {', '.join(misshapen[:5])}")
        raise ShapeMismatch(
            f"{model.name}: weights do not fit the architecture ({'; '.join(parts)})"
        )
    return plan, head_fits


def model_state(
    network: Network,
    model: LoadedModel,
    device: torch.device | str = "cpu",
    *,
    strict_head=True,
    keep: bool = True,
) -> tuple[dict[str, torch.Tensor], bool]:
    """The network's state (parameters and buffers, float32) filled from a model's weights.

    Returns (state, head_fits). Tensors of the head whose shape differs are replaced by the
    network's own and ``head_fits`` is False: f(x) must then be the features before the head.
    Any other missing or misshapen tensor raises ``ShapeMismatch`` naming it. With ``keep``
    the model keeps its float32 copy (``float_tensors``) for the next state; without, the state
    is read tensor by tensor and is the only copy, freed with it (a job's candidates, each
    needed once).
    """
    plan, head_fits = _state_plan(network, model, strict_head)
    floats = model.float_tensors() if keep else (model.cached_float_tensors() or {})
    state: dict[str, torch.Tensor] = {}
    for name, file_name in plan.items():
        if file_name is None:
            state[name] = network._init_state[name]
        elif file_name in floats:
            state[name] = floats[file_name].to(device)
        elif model.weights.infos[file_name].is_float:
            state[name] = model.weights[file_name].to(device, torch.float32)
        else:  # an integer buffer such as num_batches_tracked or position ids
            state[name] = model.weights[file_name].to(device)
    return state, head_fits


# Tensors a network may register while ``validate_architecture`` builds it, beyond twice those
# its weights hold: room for optional poolers, tied and re-registered parameters, buffers.
TENSOR_SLACK = 64
_building = threading.local()
_hooks_lock = threading.Lock()
_hooks_installed = False


def _registered(module: nn.Module, name: str, tensor: torch.Tensor | None) -> torch.Tensor | None:
    """Registration hook (every module's parameters and buffers) of ``_bounded_build``: counts
    this thread's registrations against its budget, and moves parameters to ``meta`` when asked."""
    budget = getattr(_building, "budget", None)
    if budget is None:  # another thread's build, or none under way
        return None
    if budget <= 0:
        raise ShapeMismatch(
            f"the config describes more tensors than the weights hold ({_building.held}); "
            "the weights do not fit the architecture"
        )
    _building.budget = budget - 1
    if _building.parameters_on_meta and isinstance(tensor, nn.Parameter):
        return nn.Parameter(tensor.to("meta"), requires_grad=tensor.requires_grad)
    return None


@contextmanager
def _bounded_build(held: int, parameters_on_meta: bool = False) -> Iterator[None]:
    """While a network is built in this thread, stop the build (``ShapeMismatch``) once it has
    registered more tensors than twice the ``held`` of its weights (plus ``TENSOR_SLACK``): a
    config that claims a million layers is refused after a few, before its modules fill memory
    even on ``meta``. With ``parameters_on_meta`` each parameter moves to ``meta`` as it is
    registered (its storage never touched, so never resident), for modules that cannot be built
    on ``meta`` altogether."""
    global _hooks_installed
    with _hooks_lock:  # once per process: torch's hooks are global, the budget per thread
        if not _hooks_installed:
            register_module_parameter_registration_hook(_registered)
            register_module_buffer_registration_hook(_registered)
            _hooks_installed = True
    _building.budget, _building.held = 2 * held + TENSOR_SLACK, held
    _building.parameters_on_meta = parameters_on_meta
    try:
        yield
    finally:
        _building.budget = None


def validate_architecture(model: LoadedModel) -> None:
    """Check that a model's weights fit its own config (when it has one), from the shapes alone.

    The network is built on PyTorch's ``meta`` device, which records shapes and allocates
    nothing, and compared with the weights' headers: every tensor the network has must be in the
    weights with its shape (floating-point where the network's is), so that building the network
    for real later costs no more than its weights do. The build itself is bounded by the number
    of tensors the weights hold (``_bounded_build``) and a config asking for code from the hub is
    refused before it (``refuse_remote_code``): the check costs neither a model's memory nor its
    initialisation, whatever sizes a config claims, and reads no weight.
    """
    if model.config is None:
        return
    held = len(model.weights.infos)
    try:
        with _bounded_build(held), torch.device("meta"):
            network = build_network(model.config, "meta")
    except LineageError:
        raise
    except Exception:
        # A module whose construction needs real numbers (a value read back with .item()) cannot
        # be built on meta: it is built on the CPU with its parameters moved to meta as they
        # are registered, so that they are never resident either.
        try:
            with _bounded_build(held, parameters_on_meta=True):
                network = build_network(model.config, "meta")
        except LineageError:
            raise
        except Exception as exc:
            raise InvalidConfig(
                f"cannot build the architecture its config describes: {exc}"
            ) from None
    _state_plan(network, model, strict_head=True)


def _misfit(parent: LoadedModel, child: LoadedModel, exc: ShapeMismatch) -> IncompatibleModels:
    return IncompatibleModels(
        f"{child.name} does not fit the architecture of {parent.name}: {exc.message}"
    )


def pair_head_fits(network: Network, parent: LoadedModel, child: LoadedModel) -> bool:
    """Whether f may include the head (``pair_states``' third value), from the weights' headers
    alone: no tensor is read. Raises as ``pair_states`` does when a model does not fit."""
    _, parent_head = _state_plan(network, parent, strict_head=True)
    try:
        _, child_head = _state_plan(network, child, strict_head=False)
    except ShapeMismatch as exc:
        raise _misfit(parent, child, exc) from None
    return parent_head and child_head


def child_state(
    network: Network, parent: LoadedModel, child: LoadedModel, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """The child's state in the parent's network (``pair_states``' second value, without
    building the parent's); the child keeps its float32 copy."""
    try:
        return model_state(network, child, device, strict_head=False)[0]
    except ShapeMismatch as exc:
        raise _misfit(parent, child, exc) from None


def pair_states(
    network: Network, parent: LoadedModel, child: LoadedModel, device: torch.device | str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], bool]:
    """Parent and child states in the parent's network, and whether f may include the head.
    The child keeps its float32 copy (it is compared with every candidate), the parent not."""
    parent_state, parent_head = model_state(network, parent, device, keep=False)
    try:
        child_state, child_head = model_state(network, child, device, strict_head=False)
    except ShapeMismatch as exc:
        raise _misfit(parent, child, exc) from None
    return parent_state, child_state, parent_head and child_head


def open_model(source, name: str | None = None, **load_options) -> LoadedModel:
    """Load a model (see ``load_model``) and check its weights fit its own config."""
    model = load_model(source, name, **load_options)
    validate_architecture(model)
    return model


def open_trusted(folder, name: str, sha256: str) -> LoadedModel:
    """Open a model that ``open_model`` already validated and that has not changed since: the
    service's content-addressed storage, whose folder is named by ``sha256`` and never rewritten.

    Headers are read again (they locate the tensors), but the weights are neither hashed, nor
    scanned for NaN, nor fitted to a freshly built network, and large tensors are memory-mapped
    rather than read (the files are never rewritten): each of those costs a pass over every
    byte, or a whole model's allocation, per model per job. Statistics stored beside the weights
    at registration (``weightspace.save_statistics``) are loaded into the model's cache.
    """
    model = load_model(folder, name, check_finite=False, sha256=sha256, mapped=True)
    weightspace.load_statistics(model, Path(folder))
    return model
