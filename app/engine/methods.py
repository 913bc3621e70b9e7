"""The registry of methods: one dict from name to method, shared by CLI, service and bench.

Every name that ``lineage detect --method`` and ``POST /detect`` accept is an entry of ``METHODS``,
with its kind (``MethodKind``). Pairwise kinds score one (candidate parent, child) pair; higher
means "more likely the parent":
- ``direct`` ("w/o approx" in the paper): s(f_p, f_c) for each similarity;
- ``linearized``, ``lin-*``: s(f̄_p, f_c) with f̄_p from one JVP (exact linearisation);
- ``taylor``, ``taylor-*``, the paper's shortcut: s(f_p, f_c) + α·Π·JΔθ from one VJP;
- ``weight``, ``weight-*``: weight space, no forward pass (``weight-spectrum`` is
  permutation-robust).
The other kinds rank the whole candidate set and have no pair score; ``decision.rank_candidates``
dispatches on the kind: ``combined`` (``auto``: several pairwise methods across the candidates,
see ``decision.py``), ``trained`` (the Lineage Detector, ``detector_inputs.py``) and ``adapter``
(LoRA adapter children, ``adapters.py``).

``PairContext`` computes each intermediate (network, states, probes, outputs, JVP, VJP) once per
pair. One JVP gives f_p and J·Δθ, hence every ``lin-*`` score and, as ⟨Π, J·Δθ⟩, every Taylor
correction (``taylor_terms``, which the benchmark stores); a ``taylor-*`` method asked for on its
own costs one VJP for its own similarity, the paper's shortcut.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

import torch

from app.engine import adapters, stored_outputs, weightspace
from app.engine.architectures import (
    Network,
    Subnetwork,
    child_state,
    function_subnetwork,
    network_for,
    pair_head_fits,
    pair_states,
)
from app.engine.calibration import taylor_alpha
from app.engine.errors import IncompatibleModels, InvalidConfig, UnknownMethod
from app.engine.linearize import (
    LazyDelta,
    jacobian_delta,
    parameter_delta,
    taylor_term,
    taylor_terms,
)
from app.engine.metrics import SIMILARITIES, SIMILARITY_GRADIENTS
from app.engine.model_files import LoadedModel
from app.engine.probes import DEFAULT_NUM_PROBES, DEFAULT_PROBE_SEED, probe_inputs


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
    # similarity -> (base, correction) of the Taylor methods scored by their own VJP
    _taylor_single: dict[str, tuple[float, float]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @cached_property
    def function_config(self) -> tuple[dict | None, Subnetwork | None]:
        """The config the function-space methods build, and the sub-network it stands for
        (None: the whole model; see ``architectures.function_subnetwork``)."""
        return function_subnetwork(self.parent.config, self.parent.num_parameters)

    @property
    def subnetwork(self) -> Subnetwork | None:
        """The sub-network function-space methods used, when they ran on one."""
        return self.function_config[1] if "network" in self.__dict__ else None

    @cached_property
    def network(self) -> Network:
        try:
            return network_for(self.function_config[0], self.device)
        except InvalidConfig as exc:
            raise IncompatibleModels(
                f"{self.parent.name}: function-space methods need its architecture ({exc.message})"
            ) from None

    @cached_property
    def weights(self) -> weightspace.PairWeights:
        """The pair's weight-space evidence (``weightspace.pair_weights``; a ranking of many
        candidates computes every candidate's in one batched pass and leaves it in the cache)."""
        return weightspace.pair_weights(self.parent, self.child, self.device)

    @cached_property
    def states(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], bool]:
        """(parent state, child state, whether f includes the head)."""
        return pair_states(self.network, self.parent, self.child, self.device)

    @cached_property
    def probes(self) -> torch.Tensor:
        """The probes of the pair's network; kept on the child, made once per architecture."""
        key = (
            "probes",
            json.dumps(self.network.config, sort_keys=True),
            self.num_probes,
            self.probe_seed,
            str(self.device),
        )
        if key not in self.child.cache:
            self.child.cache[key] = probe_inputs(
                self.network, self.num_probes, self.probe_seed, self.device
            )
        return self.child.cache[key]

    @cached_property
    def delta(self) -> dict[str, torch.Tensor]:
        parent_state, child_weights, use_head = self.states
        return parameter_delta(self.network, parent_state, child_weights, use_head)

    @cached_property
    def use_head(self) -> bool:
        """Whether f includes the head: ``states``' third value, from the headers when the
        states are not built."""
        if "states" in self.__dict__:
            return self.states[2]
        return pair_head_fits(self.network, self.parent, self.child)

    @cached_property
    def child_output(self) -> torch.Tensor:
        """f_c on the probes; the same for every candidate of one architecture, so it is kept on
        the child and computed once per (architecture, head use, probes, device). Needs the
        child's state only, not the parent's."""
        key = (
            "output",
            json.dumps(self.network.config, sort_keys=True),
            self.use_head,
            self.num_probes,
            self.probe_seed,
            str(self.device),
        )
        if key not in self.child.cache:
            if "states" in self.__dict__:
                state = self.states[1]
            else:
                state = child_state(self.network, self.parent, self.child, self.device)
            with torch.no_grad():
                self.child.cache[key] = self.network.output(state, self.probes, self.use_head)
        return self.child.cache[key]  # (N, K)

    @cached_property
    def jacobian_delta(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(f_p, J·Δθ) on the probes, from one JVP: the exact linearisation and every Taylor
        correction share it."""
        parent_state, _, use_head = self.states
        return jacobian_delta(self.network, parent_state, self.delta, self.probes, use_head)

    @cached_property
    def linearized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(f_p, f̄_p = f_p + J·Δθ) on the probes."""
        f_p, j_delta = self.jacobian_delta
        return f_p, f_p + j_delta

    def stored_parent_output(self) -> torch.Tensor | None:
        """f_p as registration stored it (``stored_outputs``) for this pair's network, head
        choice and probes, on the pair's device; None when it was not stored."""
        name = stored_outputs.output_name(self.network.config, self.use_head, self.probes)
        stored = stored_outputs.stored_output(self.parent, name)
        return None if stored is None else stored.to(self.device)

    @cached_property
    def parent_output(self) -> torch.Tensor:
        if "jacobian_delta" in self.__dict__:  # the JVP already gave f_p
            return self.jacobian_delta[0]
        stored = self.stored_parent_output()
        if stored is not None:  # computed once, at registration: no forward pass, no state
            return stored
        parent_state, _, use_head = self.states
        with torch.no_grad():
            return self.network.output(parent_state, self.probes, use_head)  # (N, K)

    @cached_property
    def taylor_terms(self) -> dict[str, tuple[float, float]]:
        """(s(f_p, f_c), Σ_i Π_i·(J·Δθ)_i) for every similarity of SIMILARITY_GRADIENTS, from
        the one JVP of ``jacobian_delta`` (the benchmark stores them all)."""
        f_p, j_delta = self.jacobian_delta
        names = list(SIMILARITY_GRADIENTS)
        return taylor_terms(f_p, j_delta, self.child_output, names)

    def taylor_term(self, similarity: str) -> tuple[float, float]:
        """(s(f_p, f_c), ⟨∇_θ[Σ_i sg(Π_i)·f_θ(x_i)]|θ_p, Δθ⟩) for one similarity: one VJP (the
        paper's shortcut), or none where this pair's JVP is already computed: the same
        correction is then ⟨Π, J·Δθ⟩."""
        if similarity in self._taylor_single:
            return self._taylor_single[similarity]
        if "jacobian_delta" in self.__dict__:
            return self.taylor_terms[similarity]
        parent_state, child_state, use_head = self.states
        # Δθ made tensor by tensor as the correction sums it, unless the pair already holds it
        if "delta" in self.__dict__:
            delta = self.delta
        else:
            delta = LazyDelta(self.network, parent_state, child_state, use_head)
        self._taylor_single[similarity] = taylor_term(
            self.network,
            parent_state,
            delta,
            self.probes,
            self.child_output,
            use_head,
            similarity,
        )
        return self._taylor_single[similarity]

    def taylor(self, similarity: str) -> float:
        """Taylor-shortcut similarity s(f_p, f_c) + α·⟨∇_θ[Σ_i sg(Π_i)·f_θ(x_i)]|θ_p, Δθ⟩."""
        base, correction = self.taylor_term(similarity)
        alpha = self.taylor_alpha if self.taylor_alpha is not None else taylor_alpha(similarity)
        return base + alpha * correction


# Float32 bytes of stacked parent states one vectorised forward pass may hold (see
# ``batch_parent_outputs``): 1 GB, two BERT-base models, or thousands of the small families'.
FUNCTION_BATCH_BYTES = 1 << 30


def batch_parent_outputs(contexts: list[PairContext], max_bytes: int = FUNCTION_BATCH_BYTES) -> int:
    """Batched scoring in function space: f_p on the probes for many candidates of one child in
    vectorised forward passes (``torch.func.vmap`` over their stacked states), left in each
    context's ``parent_output``, instead of one pass per candidate. A candidate whose f_p
    registration stored (``stored_outputs``) gets it from there and runs nothing.

    Contexts are grouped by network and head use; a group is split into chunks whose stacked
    states fit ``max_bytes``. A context whose states cannot be built is left alone (scoring it
    raises what it raises one by one); a module that cannot be vmapped is run one context at a
    time, with the same result. Returns the number of contexts filled by vectorised passes.
    """
    groups: dict[tuple[int, bool], list[PairContext]] = {}
    for ctx in contexts:
        try:
            key = (id(ctx.network), ctx.use_head)  # from the headers: nothing read yet
            stored = ctx.stored_parent_output()
        except (IncompatibleModels, InvalidConfig):
            continue
        if stored is not None:  # registration computed it: nothing to run
            ctx.__dict__["parent_output"] = stored
            continue
        groups.setdefault(key, []).append(ctx)
    filled = 0
    for (_, use_head), members in groups.items():
        network = members[0].network
        size = sum(t.numel() * 4 for t in network._init_state.values())
        step = max(1, max_bytes // max(size, 1))
        for begin in range(0, len(members), step):
            chunk = members[begin : begin + step]
            states = [ctx.states[0] for ctx in chunk]
            probes = chunk[0].probes
            outputs = None
            if len(chunk) > 1:
                stacked = {name: torch.stack([s[name] for s in states]) for name in states[0]}
                try:
                    with torch.no_grad():
                        outputs = torch.func.vmap(
                            lambda state, network=network, x=probes, head=use_head: network.output(
                                state, x, head
                            )
                        )(stacked)
                except Exception:  # an op without a batching rule: one by one
                    outputs = None
                del stacked
            for i, ctx in enumerate(chunk):
                if outputs is not None:
                    ctx.__dict__["parent_output"] = outputs[i]
                else:
                    ctx.parent_output  # noqa: B018
                del ctx.__dict__["states"]
                filled += outputs is not None
            del states
    return filled


class MethodKind(StrEnum):
    """How a method scores, and so how ``decision.rank_candidates`` runs it."""

    COMBINED = "combined"  # auto: pairwise methods combined across the candidate set
    TRAINED = "trained"  # a trained Lineage Detector over the candidate set
    ADAPTER = "adapter"  # a LoRA adapter child's alignment with each candidate base
    DIRECT = "direct"
    LINEARIZED = "linearized"
    TAYLOR = "taylor"
    WEIGHT = "weight"


# The kinds whose methods score one (parent, child) pair on its own, through ``PairContext``.
PAIRWISE_KINDS = frozenset(
    {MethodKind.DIRECT, MethodKind.LINEARIZED, MethodKind.TAYLOR, MethodKind.WEIGHT}
)
# The default method, the registry's combined one.
AUTO = "auto"


@dataclass(frozen=True)
class Method:
    """A named method of one kind.

    A pairwise method has ``score`` (higher = more likely the parent); ``distance``: that score
    is −D for a distance D ≥ 0; ``streams_weights``: the score reads ``PairContext.weights``
    (every weight of the pair), which a ranking of many candidates computes in one batched pass.
    A method of another kind ranks the whole candidate set and has no ``score``.
    """

    name: str
    kind: MethodKind
    description: str
    score: Callable[[PairContext], float] | None = None
    distance: bool = False
    streams_weights: bool = False

    def __post_init__(self) -> None:
        if (self.score is not None) != (self.kind in PAIRWISE_KINDS):
            raise ValueError(f"method {self.name}: a score function goes with a pairwise kind")

    @property
    def pairwise(self) -> bool:
        """Whether the method scores a (parent, child) pair on its own."""
        return self.score is not None


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

    def add(method: Method) -> None:
        methods[method.name] = method

    add(
        Method(
            AUTO,
            MethodKind.COMBINED,
            "weight-space + function-space evidence, calibrated (default)",
        )
    )
    add(
        Method(
            "detector",
            MethodKind.TRAINED,
            "the Lineage Detector (ours): one checkpoint for every architecture",
        )
    )
    add(
        Method(
            "detector-paper",
            MethodKind.TRAINED,
            "the paper's Lineage Detector, shipped per family",
        )
    )
    for sim in SIMILARITIES:
        is_distance = sim in _DISTANCE_SIMILARITIES
        add(
            Method(
                sim,
                MethodKind.DIRECT,
                f"{sim} similarity of f_p and f_c",
                _direct(sim),
                is_distance,
            )
        )
        add(
            Method(
                f"lin-{sim}",
                MethodKind.LINEARIZED,
                f"{sim} similarity of the exactly linearised parent (JVP) and f_c",
                _linearized(sim),
                is_distance,
            )
        )
    for sim in SIMILARITY_GRADIENTS:
        add(
            Method(
                f"taylor-{sim}",
                MethodKind.TAYLOR,
                f"{sim} similarity, linearised by the paper's Taylor shortcut (one VJP, scale α)",
                _taylor(sim),
                False,  # the correction can push the score above 0
            )
        )
    add(
        Method(
            "weight-l2",
            MethodKind.WEIGHT,
            "−‖θ_c − θ_p‖₂ over tensors of equal name and shape",
            lambda ctx: -ctx.weights.l2,
            True,
            streams_weights=True,
        )
    )
    add(
        Method(
            "weight-cos",
            MethodKind.WEIGHT,
            "mean per-tensor cosine of θ_c and θ_p",
            lambda ctx: ctx.weights.cosine,
            False,
            streams_weights=True,
        )
    )
    add(
        Method(
            "weight-spectrum",
            MethodKind.WEIGHT,
            "−distance of per-tensor singular values: robust to hidden-unit permutation",
            lambda ctx: -weightspace.spectrum_distance(ctx.parent, ctx.child, ctx.device),
            True,
        )
    )
    add(
        Method(
            adapters.METHOD,
            MethodKind.ADAPTER,
            "LoRA adapter children only: z of ‖ΔW·X‖² on a base's activations X vs X shuffled",
        )
    )
    return methods


METHODS: dict[str, Method] = _build_registry()


def method_names(*kinds: MethodKind) -> list[str]:
    """Every method name the engine accepts, ``auto`` first; with ``kinds``, those of the kinds
    given, in the registry's order."""
    return [name for name, method in METHODS.items() if not kinds or method.kind in kinds]


def get_method(name: str) -> Method:
    """Look a method up by name; ``UnknownMethod`` lists the valid names."""
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethod(
            f"unknown method {name!r}; choose one of: {', '.join(method_names())}"
        ) from None


def as_distance(method: str, score: float) -> float:
    """D ≥ 0 from a pairwise method's score s: D = −s for distance-type methods, 1 − s for
    bounded similarities."""
    return -score if get_method(method).distance else 1.0 - score


def neg_log_distance(method: str, score: float) -> float:
    """−log D for a pairwise method's score (D = ``as_distance``, floored at 1e-30): higher is
    closer, and a difference is the log ratio of two distances, comparable across queries."""
    return -math.log(max(as_distance(method, score), 1e-30))
