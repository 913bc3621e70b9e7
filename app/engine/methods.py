"""The registry of scoring methods: one dict from name to method, shared by CLI, service and bench.

A method scores one (candidate parent, child) pair; higher means "more likely the parent".
Families:
- direct ("w/o approx" in the paper): s(f_p, f_c) for each similarity;
- ``lin-*``, exact linearisation: s(f̄_p, f_c) with f̄_p from one JVP;
- ``taylor-*``, the paper's shortcut: s(f_p, f_c) + α·Π·JΔθ from one VJP;
- ``weight-*``: weight space, no forward pass (``weight-spectrum`` is permutation-robust).
``auto`` combines several of these across the candidate set (see ``decision.py``).

``PairContext`` computes each intermediate (network, states, probes, outputs, JVP, VJP) once per
pair, so scoring a pair with every method costs one forward, one JVP and one VJP pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache

import torch

from app.engine import weightspace
from app.engine.architectures import Network, build_network, pair_states
from app.engine.calibration import taylor_alpha
from app.engine.errors import IncompatibleModels, InvalidConfig, UnknownMethod
from app.engine.linearize import linearized_outputs, parameter_delta, taylor_terms
from app.engine.metrics import SIMILARITIES, SIMILARITY_GRADIENTS
from app.engine.model_files import LoadedModel
from app.engine.probes import DEFAULT_NUM_PROBES, DEFAULT_PROBE_SEED, probe_inputs


@lru_cache(maxsize=8)
def _network(config_json: str, device: str) -> Network:
    return build_network(json.loads(config_json), device)


def network_for(config: dict | None, device: torch.device | str = "cpu") -> Network:
    """The (cached) module for a config; modules hold no weights of their own that matter."""
    if not config:
        raise InvalidConfig("no config.json: the architecture is unknown")
    return _network(json.dumps(config, sort_keys=True), str(device))


@dataclass
class PairContext:
    """One (parent, child) pair and everything the methods derive from it, computed lazily."""

    parent: LoadedModel
    child: LoadedModel
    device: torch.device | str = "cpu"
    num_probes: int = DEFAULT_NUM_PROBES
    probe_seed: int = DEFAULT_PROBE_SEED
    # Scale α of the Taylor correction; None: each similarity's calibrated α (docs/benchmarks.md).
    taylor_alpha: float | None = None

    @cached_property
    def network(self) -> Network:
        try:
            return network_for(self.parent.config, self.device)
        except InvalidConfig as exc:
            raise IncompatibleModels(
                f"{self.parent.name}: function-space methods need its architecture ({exc.message})"
            ) from None

    @cached_property
    def states(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], bool]:
        """(parent state, child state, whether f includes the head)."""
        return pair_states(self.network, self.parent, self.child, self.device)

    @cached_property
    def probes(self) -> torch.Tensor:
        return probe_inputs(self.network, self.num_probes, self.probe_seed, self.device)

    @cached_property
    def delta(self) -> dict[str, torch.Tensor]:
        parent_state, child_state, use_head = self.states
        return parameter_delta(self.network, parent_state, child_state, use_head)

    @cached_property
    def child_output(self) -> torch.Tensor:
        """f_c on the probes; the same for every candidate of one architecture, so it is kept on
        the child and computed once per (architecture, head use, probes, device)."""
        _, child_state, use_head = self.states
        key = (
            "output",
            json.dumps(self.parent.config, sort_keys=True),
            use_head,
            self.num_probes,
            self.probe_seed,
            str(self.device),
        )
        if key not in self.child.cache:
            with torch.no_grad():
                self.child.cache[key] = self.network.output(child_state, self.probes, use_head)
        return self.child.cache[key]  # (N, K)

    @cached_property
    def linearized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(f_p, f̄_p) on the probes."""
        parent_state, _, use_head = self.states
        return linearized_outputs(self.network, parent_state, self.delta, self.probes, use_head)

    @cached_property
    def parent_output(self) -> torch.Tensor:
        if "linearized" in self.__dict__:  # the JVP already gave f_p
            return self.linearized[0]
        parent_state, _, use_head = self.states
        with torch.no_grad():
            return self.network.output(parent_state, self.probes, use_head)  # (N, K)

    @cached_property
    def taylor_terms(self) -> dict[str, tuple[float, float]]:
        """(s(f_p, f_c), correction) per similarity, from one forward pass and VJPs."""
        parent_state, _, use_head = self.states
        return taylor_terms(
            self.network,
            parent_state,
            self.delta,
            self.probes,
            self.child_output,
            use_head,
            list(SIMILARITY_GRADIENTS),
        )

    def taylor(self, similarity: str) -> float:
        """Taylor-shortcut similarity s(f_p, f_c) + α·correction."""
        base, correction = self.taylor_terms[similarity]
        alpha = self.taylor_alpha if self.taylor_alpha is not None else taylor_alpha(similarity)
        return base + alpha * correction


@dataclass(frozen=True)
class Method:
    """A named scoring method. ``distance``: the score is −D for a distance D ≥ 0."""

    name: str
    kind: str
    score: Callable[[PairContext], float]
    description: str
    distance: bool


def _direct(similarity: str):
    fn = SIMILARITIES[similarity]
    return lambda ctx: float(fn(ctx.parent_output, ctx.child_output))


def _linearized(similarity: str):
    fn = SIMILARITIES[similarity]
    return lambda ctx: float(fn(ctx.linearized[1], ctx.child_output))


def _taylor(similarity: str):
    return lambda ctx: ctx.taylor(similarity)


_DISTANCE_SIMILARITIES = {"l1", "l2", "l4", "linf", "lse"}


def _build_registry() -> dict[str, Method]:
    methods: dict[str, Method] = {}
    for sim in SIMILARITIES:
        is_distance = sim in _DISTANCE_SIMILARITIES
        methods[sim] = Method(
            sim, "direct", _direct(sim), f"{sim} similarity of f_p and f_c", is_distance
        )
        methods[f"lin-{sim}"] = Method(
            f"lin-{sim}",
            "linearized",
            _linearized(sim),
            f"{sim} similarity of the exactly linearised parent (JVP) and f_c",
            is_distance,
        )
    for sim in SIMILARITY_GRADIENTS:
        methods[f"taylor-{sim}"] = Method(
            f"taylor-{sim}",
            "taylor",
            _taylor(sim),
            f"{sim} similarity, linearised by the paper's Taylor shortcut (one VJP, scale α)",
            False,  # the correction can push the score above 0
        )
    methods["weight-l2"] = Method(
        "weight-l2",
        "weight",
        lambda ctx: -weightspace.l2_distance(ctx.parent, ctx.child),
        "−‖θ_c − θ_p‖₂ over tensors of equal name and shape",
        True,
    )
    methods["weight-cos"] = Method(
        "weight-cos",
        "weight",
        lambda ctx: weightspace.mean_cosine(ctx.parent, ctx.child),
        "mean per-tensor cosine of θ_c and θ_p",
        False,
    )
    methods["weight-spectrum"] = Method(
        "weight-spectrum",
        "weight",
        lambda ctx: -weightspace.spectrum_distance(ctx.parent, ctx.child),
        "−distance of per-tensor singular values: robust to hidden-unit permutation",
        True,
    )
    return methods


METHODS: dict[str, Method] = _build_registry()
AUTO = "auto"
# The trained Lineage Detector (``app.engine.detector_inputs``): ours, and the paper's variant.
DETECTOR_METHODS = ("detector", "detector-paper")


def method_names() -> list[str]:
    """Every method name the engine accepts, ``auto`` first."""
    return [AUTO, *DETECTOR_METHODS, *METHODS]


def get_method(name: str) -> Method:
    """Look a method up by name; ``UnknownMethod`` lists the valid names."""
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethod(
            f"unknown method {name!r}; choose one of: {', '.join(method_names())}"
        ) from None
