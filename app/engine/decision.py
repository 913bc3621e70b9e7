"""Rank candidate parents for one child, combine evidence (``auto``) and decide.

``auto`` works on distances D_m ≥ 0 of several methods m (weight space, permutation-invariant
weight statistics, direct and linearised function space), chosen by the benchmark. For
candidate c,

    auto(c) = −Σ_m [ log D_m(c) − median_c' log D_m(c') ] / σ_m  −  direction(c),

so every method votes in units of its own noise σ_m on "how many times closer than the typical
candidate", and a method that cannot tell the candidates apart (all distances alike) adds almost
nothing. direction(c) demotes a candidate that lies farther than the child from the candidates'
centre (a likely descendant; see ``combine_auto``); the ranking is by auto(c).

With four candidates or more, whether a candidate is the parent is decided from the candidate
set's own evidence (``separation.judge``, through ``auto_verdict``): the best-ranked candidate
that lies on the child's path to every other is named, else "none", said as "not separated" or
"unrelated". With fewer, the decision's margin is auto(best) − auto(runner-up); the best
candidate is declared the parent only when the margin clears a threshold calibrated by the
benchmark (``calibration.json``), else the answer is "no parent in the candidate set".
Confidence = sigmoid((margin − threshold) / scale), the calibrated probability that the best
candidate is the parent. With a single candidate there is no runner-up: the margin is then
log(ρ₀ / ρ) for the relative weight distance ρ = ‖θ_c − θ_p‖/‖θ_p‖. (Not the spectral analogue:
networks of the same shape trained independently have alike spectra, so it cannot tell a stranger
from a relative on its own; a permuted child therefore needs other candidates to be recognised.)

The rule (``evidence_margin``: a margin from a method's scores; ``names_none``: when a margin
means "no parent") is also how the benchmark judges every method: a single method's margin is
then in −log D units and its threshold the open-set one fitted by the benchmark, while
the engine's own answer with a single method always names its best candidate, uncalibrated.
A trained detector answers "no parent" when its no-parent token wins (``no_parent_wins``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from app.engine import adapters, separation, universal_detector, weightspace
from app.engine.calibration import load_calibration
from app.engine.detector import DetectorError, detector_ranking
from app.engine.detector_inputs import VARIANT_OF, detector_logits, load_detector, pair_inputs
from app.engine.errors import IncompatibleModels, InvalidArgument, InvalidConfig, ShapeMismatch
from app.engine.methods import (
    AUTO,
    MethodKind,
    PairContext,
    as_distance,
    batch_parent_outputs,
    get_method,
    neg_log_distance,
    network_for,
)
from app.engine.model_files import LoadedModel
from app.engine.probes import DEFAULT_NUM_PROBES, DEFAULT_PROBE_SEED, probe_inputs
from app.engine.results import CandidateScore, Decision, Ranking, Skipped

# progress(done, total): called as each candidate has been scored (or skipped).
Progress = Callable[[int, int], None]


def _no_progress(_done: int, _total: int) -> None:
    pass


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(x, 50.0), -50.0)))


def log_distances(distances: list[float]) -> torch.Tensor:
    """log D, with zeros floored just below the smallest positive scale."""
    values = torch.tensor(distances, dtype=torch.float64).clamp_min(0.0)
    floor = 1e-12 * float(values.max()) + 1e-30
    return values.clamp_min(floor).log()


def auto_scores(component_scores: dict[str, list[float]], noise: dict[str, float]) -> list[float]:
    """auto(c) = −Σ_m [log D_m(c) − median_c' log D_m(c')] / σ_m over the components given.

    σ_m is the spread of component m's log-distance ratios on children whose parent is absent
    (calibrated), so each component votes in units of its own noise.
    """
    centred = []
    for method, scores in component_scores.items():
        logs = log_distances([as_distance(method, s) for s in scores])
        centred.append((logs - logs.median()) / noise[method])
    return (-torch.stack(centred).sum(0)).tolist()


DIRECTION = "weight-direction"


def combine_auto(
    candidate_scores: list[dict[str, float]],
    nearest_relative: float,
    calibration: dict,
    outward: list[float] | None = None,
) -> list[float]:
    """``auto``'s score of each candidate from its component scores.

    ``nearest_relative``: the smallest relative weight distance ‖θ_c − θ_p‖/‖θ_p‖ over the
    candidates. ``outward``: ``weightspace.outward_log_ratios`` of the candidates, used when the
    calibration includes the ``weight-direction`` term: a candidate farther than the child from
    the candidates' centre is demoted by max(0, log ratio)/σ, as a likely descendant. Shared by
    ``rank_candidates`` and the benchmark, so both decide alike.
    """
    noise = calibration["auto"]["noise"]
    components = [m for m in noise if m != DIRECTION]
    # Only components that every candidate has: one cannot vote for some and not others.
    usable = [m for m in components if all(m in s for s in candidate_scores)]
    # A linearisation is a first-order model around θ_p, and the direction term a statement
    # about weights near each other: both mean nothing when the child is far from every
    # candidate in weight space (permuted units, trained from scratch).
    near = nearest_relative <= calibration["auto"]["linearization_max_relative"]
    if not near:
        usable = [m for m in usable if get_method(m).kind is not MethodKind.LINEARIZED]
    combined = [0.0] * len(candidate_scores)
    if usable:
        combined = auto_scores({m: [s[m] for s in candidate_scores] for m in usable}, noise)
    if DIRECTION in noise and outward is not None and near and len(outward) > 2:
        penalty = torch.tensor(outward, dtype=torch.float64).clamp_min(0.0)
        penalty = (penalty - penalty.median()) / noise[DIRECTION]
        combined = [c - float(p) for c, p in zip(combined, penalty, strict=True)]
    return combined


# --- the decision rule: margins, and when a margin means "no parent" ----------------------------

# Kinds whose scores are a distance or a similarity in their own units: compared as −log D.
_LOG_DISTANCE_KINDS = frozenset({MethodKind.DIRECT, MethodKind.LINEARIZED, MethodKind.WEIGHT})


def evidence(method: str, scores: list[float]) -> list[float]:
    """Scores on a scale where differences compare across queries: −log D for direct,
    linearised and weight-space methods (D = ``as_distance``), the scores themselves for
    ``auto`` (already in noise units), Taylor scores, the detectors' probabilities and adapter
    alignments."""
    if get_method(method).kind in _LOG_DISTANCE_KINDS:
        return [neg_log_distance(method, s) for s in scores]
    return list(scores)


def evidence_margin(method: str, scores: list[float]) -> tuple[int, float]:
    """(index of the best candidate, margin e(best) − e(runner-up)) in ``evidence`` units e;
    the margin is infinite with a single candidate."""
    e = evidence(method, scores)
    order = sorted(range(len(e)), key=lambda i: -e[i])
    margin = e[order[0]] - e[order[1]] if len(e) > 1 else math.inf
    return order[0], margin


def none_threshold(method: str, calibration: dict) -> float | None:
    """The calibrated margin below which ``method`` answers "no parent": ``auto``'s decision
    threshold, or a single method's open-set threshold (None: never calibrated, always names)."""
    if get_method(method).kind is MethodKind.COMBINED:
        return calibration["auto"]["threshold"]
    return calibration.get("open_set", {}).get(method)


def names_none(method: str, margin: float, calibration: dict) -> bool:
    """Whether ``method``'s evidence margin means "no parent": below its ``none_threshold``."""
    threshold = none_threshold(method, calibration)
    return threshold is not None and margin < threshold


def auto_verdict(
    scores: list[float], views: dict[str, separation.Separation] | None, calibration: dict
) -> separation.Verdict | None:
    """``auto``'s verdict from the candidate set's own null (``separation.judge``, ties broken
    by ``auto``'s ``scores``), or None where it does not apply: fewer than
    ``separation.MIN_CANDIDATES`` candidates, or a calibration without separation constants
    (then the calibrated margin decides)."""
    constants = calibration["auto"].get("separation")
    if views is None or not constants:
        return None
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return separation.judge(order, views, constants)


def decide(
    names: list[str],
    scores: list[float],
    method: str,
    calibration: dict,
    single_candidate_relative: float | None = None,
    verdict: separation.Verdict | None = None,
) -> Decision:
    """Best candidate, margin, calibrated confidence, or no parent (see module docstring).

    ``auto`` with a ``verdict`` (``auto_verdict``: four candidates or more) answers by it: the
    candidate it names, which may not be ``auto``'s best, or "none"; its confidence is then
    sigmoid(strength / scale), the scale fitted by ``lineage bench --calibrate``."""
    if get_method(method).kind is not MethodKind.COMBINED:
        # A single method always names its best candidate; its confidence is the softmax share of
        # the best after standardising scores across candidates: informative, not calibrated.
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        best = order[0]
        values = torch.tensor(scores, dtype=torch.float64)
        spread = float(values.std()) if len(scores) > 1 else 0.0
        z = (values - values.mean()) / spread if spread > 0 else torch.zeros_like(values)
        share = float(torch.softmax(z, 0)[best])
        margin = float(z[order[0]] - z[order[1]]) if len(scores) > 1 else 0.0
        return Decision(names[best], share, method, names[best], margin, False)
    auto = calibration["auto"]
    best, margin = evidence_margin(method, scores)
    if verdict is not None:
        scale = max(auto["separation"].get("scale", 0.05), 1e-6)
        p_parent = _sigmoid(verdict.strength / scale)
        if verdict.named:
            parent = names[verdict.index]
            return Decision(parent, p_parent, method, names[best], margin, True)
        return Decision(None, 1.0 - p_parent, method, names[best], margin, True)
    if len(scores) > 1:
        threshold, scale = none_threshold(method, calibration), auto["scale"]
        named = not names_none(method, margin, calibration)
    else:
        margin = math.log(auto["single_relative_distance"] / max(single_candidate_relative, 1e-30))
        threshold, scale = 0.0, auto["single_scale"]
        named = margin >= threshold
    p_parent = _sigmoid((margin - threshold) / scale)
    if named:
        return Decision(names[best], p_parent, method, names[best], margin, True)
    return Decision(None, 1.0 - p_parent, method, names[best], margin, True)


# --- ranking: dispatched on the method's kind ---------------------------------------------------


def rank_candidates(
    child: LoadedModel,
    parents: list[LoadedModel],
    method: str = AUTO,
    *,
    device: torch.device | str = "cpu",
    num_probes: int = DEFAULT_NUM_PROBES,
    probe_seed: int = DEFAULT_PROBE_SEED,
    taylor_alpha: float | None = None,
    calibration: dict | None = None,
    detector_dir: Path | None = None,
    progress: Progress | None = None,
    batched: bool = True,
) -> Ranking:
    """Score every candidate parent of ``child`` and decide; candidates best first.

    The method's kind says how: a LoRA adapter child is ranked by ``rank_adapter`` (``auto`` or
    ``adapter-alignment``; the latter on any other child is an ``InvalidArgument``), a trained
    method by ``rank_with_detector``, ``auto`` by combining its components (or by the detector,
    where the calibration defers to it), a pairwise method by its own score.
    Candidates that share no comparable tensor with the child, or (for a function-space method)
    whose architecture the child does not fit, are listed in ``skipped`` with the reason.
    Raises ``IncompatibleModels`` when no candidate remains. ``progress(done, total)`` is called
    as each candidate is scored (or skipped). ``batched``: weight-space evidence of all the
    candidates in one pass over the child's tensors (``weightspace.weight_evidence``) and their
    outputs on the probes in vectorised forward passes (``methods.batch_parent_outputs``);
    without, one pass per candidate (the same scores; kept to measure and test the batched path
    against).
    """
    if not parents:
        raise InvalidArgument("no candidate parents given")
    if adapters.is_adapter(child):
        adapters.check_adapter_method(method, AUTO)
        return rank_adapter(
            child,
            parents,
            device=device,
            num_probes=num_probes,
            probe_seed=probe_seed,
            progress=progress,
        )
    kind = get_method(method).kind
    if kind is MethodKind.ADAPTER:
        raise InvalidArgument(f"{method} scores LoRA adapter children; {child.name} is not one")
    calibration = calibration or load_calibration()
    detector = method if kind is MethodKind.TRAINED else None
    combined = kind is MethodKind.COMBINED
    if combined and child.model_type in calibration["auto"].get("defer_to_detector", {}):
        # The benchmark found the trained detector the better evidence for this architecture
        # (``lineage bench --calibrate``); without a usable checkpoint auto answers as usual.
        detector = "detector"
    if detector == universal_detector.METHOD:
        try:
            return universal_detector.rank_universal(
                child,
                parents,
                device=device,
                num_probes=num_probes,
                probe_seed=probe_seed,
                path=None
                if detector_dir is None
                else detector_dir / universal_detector.CHECKPOINT_NAME,
                progress=progress,
            )
        except (DetectorError, IncompatibleModels):
            if not combined:
                raise
    elif detector is not None:
        try:
            return rank_with_detector(
                child,
                parents,
                detector,
                device=device,
                num_probes=num_probes,
                probe_seed=probe_seed,
                directory=detector_dir,
                progress=progress,
            )
        except (DetectorError, IncompatibleModels):
            if not combined:
                raise
    if combined:
        components = [m for m in calibration["auto"]["noise"] if m != DIRECTION]
    else:
        components = [method]
    kept: list[tuple[LoadedModel, dict[str, float]]] = []
    skipped: list[Skipped] = []
    comparable: list[LoadedModel] = []
    for parent in parents:
        try:
            weightspace.matched_tensors(parent, child)
            comparable.append(parent)
        except IncompatibleModels as exc:
            skipped.append(Skipped(parent.name, exc.message))
    outward = None
    wants_outward = combined and DIRECTION in calibration["auto"]["noise"] and len(comparable) > 2
    # auto uses every candidate's relative distance (and outward ratios) whatever its components
    streams = combined or any(get_method(m).streams_weights for m in components)
    if batched and streams and comparable:
        # One pass over the child's tensors against every candidate's (see weight_evidence).
        # auto's separation test reads the same pass's pairwise distances (four candidates on)
        pairwise = combined and len(comparable) >= separation.MIN_CANDIDATES
        outward = weightspace.cache_weight_evidence(
            comparable, child, device, outward=wants_outward or pairwise
        )
        outward = outward if wants_outward else None
    subnetwork = None  # the sub-network function-space components ran on, if not the whole
    contexts = [
        PairContext(parent, child, device, num_probes, probe_seed, taylor_alpha=taylor_alpha)
        for parent in comparable
    ]
    if batched and any(get_method(m).kind is MethodKind.DIRECT for m in components):
        batch_parent_outputs(contexts)  # f_p of every candidate in vectorised passes
    report = progress or _no_progress
    if skipped:
        report(len(skipped), len(parents))
    for done, ctx in enumerate(contexts, len(skipped) + 1):
        parent = ctx.parent
        scores: dict[str, float] = {}
        for name in components:
            try:
                scores[name] = get_method(name).score(ctx)
            except IncompatibleModels as exc:
                if not combined:
                    skipped.append(Skipped(parent.name, exc.message))
                    break
        else:
            kept.append((parent, scores))
        subnetwork = subnetwork or ctx.subnetwork
        report(done, len(parents))
    if not kept:
        reasons = "; ".join(f"{s.parent}: {s.reason}" for s in skipped)
        raise IncompatibleModels(f"no candidate can be compared with {child.name} ({reasons})")
    relative = None  # with one candidate, auto's margin is its relative weight distance
    if combined:
        nearest = min(weightspace.pair_weights(p, child, device).relative for p, _ in kept)
        relative = nearest if len(kept) == 1 else None
        # (auto keeps every comparable candidate: a component it cannot compute is left out)
        if outward is None and wants_outward:  # one by one: its own pass
            outward = weightspace.outward_log_ratios(comparable, child)
        combined = combine_auto([s for _, s in kept], nearest, calibration, outward)
    else:
        combined = [s[components[0]] for _, s in kept]
    names = [p.name for p, _ in kept]
    views = verdict = None
    if get_method(method).kind is MethodKind.COMBINED and len(kept) >= separation.MIN_CANDIDATES:
        views = separation.candidate_separations([p for p, _ in kept], child, device)
        verdict = auto_verdict(combined, views, calibration)
    decision = decide(names, combined, method, calibration, relative, verdict)
    candidates = [
        CandidateScore(p.name, score, scores)
        for (p, scores), score in sorted(zip(kept, combined, strict=True), key=lambda t: -t[1])
    ]
    used = subnetwork.to_dict() if subnetwork is not None else None
    direction = (
        {p.name: float(ratio) for p, ratio in zip(comparable, outward, strict=True)}
        if outward is not None
        else None
    )
    evidence = None if views is None else separation_json(names, views, verdict)
    return Ranking(child.name, decision, candidates, skipped, used, direction, evidence)


def separation_json(
    names: list[str],
    views: dict[str, separation.Separation],
    verdict: separation.Verdict | None,
) -> dict:
    """The ``separation`` field of a result: which evidence decided and why, and each view's
    figures (``Separation.to_dict``)."""
    out = {
        "basis": verdict.basis if verdict else separation.MARGIN,
        "explanation": (verdict.explanation if verdict else separation.EXPLANATIONS["margin"]),
        "value": round(verdict.value, 4) if verdict else None,
        "threshold": round(verdict.threshold, 4) if verdict else None,
        "views": {},
    }
    for view, sep in views.items():
        out["views"][view] = sep.to_dict(names)
    return out


def rank_with_detector(
    child: LoadedModel,
    parents: list[LoadedModel],
    method: str,
    *,
    device: torch.device | str = "cpu",
    num_probes: int = DEFAULT_NUM_PROBES,
    probe_seed: int = DEFAULT_PROBE_SEED,
    directory: Path | None = None,
    progress: Progress | None = None,
) -> Ranking:
    """Rank candidates with the shipped detector (or ``directory``'s): softmax over candidates
    and "no parent"; the best is named unless ``no_parent_wins``. ``progress(done, total)`` as
    each candidate's inputs are made."""
    kept: list[PairContext] = []
    skipped: list[Skipped] = []
    report = progress or _no_progress
    for done, parent in enumerate(parents, 1):
        ctx = PairContext(parent, child, device, num_probes, probe_seed)
        try:
            weightspace.matched_tensors(parent, child)
            pair_inputs(ctx)
            kept.append(ctx)
        except IncompatibleModels as exc:
            skipped.append(Skipped(parent.name, exc.message))
        report(done, len(parents))
    if not kept:
        reasons = "; ".join(f"{s.parent}: {s.reason}" for s in skipped)
        raise IncompatibleModels(f"no candidate can be compared with {child.name} ({reasons})")
    model_type = kept[0].network.config.get("model_type")
    model, _ = load_detector(model_type, VARIANT_OF[method], device, directory)
    logits = detector_logits(model, kept, device)
    names = [ctx.parent.name for ctx in kept]
    return detector_ranking(child.name, names, logits, method, skipped)


def rank_adapter(
    child: LoadedModel,
    parents: list[LoadedModel],
    *,
    device: torch.device | str = "cpu",
    num_probes: int = DEFAULT_NUM_PROBES,
    probe_seed: int = DEFAULT_PROBE_SEED,
    progress: Progress | None = None,
) -> Ranking:
    """Rank candidate bases of a LoRA adapter by alignment (see ``app.engine.adapters``).

    The adapter is merged onto every candidate it fits; the others are skipped with the reason.
    The best is named when its alignment clears ``adapters.THRESHOLD``; confidence is
    sigmoid((best − runner-up) / SCALE), or sigmoid of the shortfall for "no parent".
    ``progress(done, total)`` as each candidate is tried.
    """
    adapter = adapters.read_adapter(child)
    kept: list[tuple[LoadedModel, float]] = []
    skipped: list[Skipped] = []
    report = progress or _no_progress
    for done, parent in enumerate(parents, 1):
        try:
            network = network_for(parent.config, device)
            base_state, delta = adapters.merged_delta(network, parent, adapter, device)
            probes = probe_inputs(network, num_probes, probe_seed, device)
            kept.append((parent, adapters.alignment(network, base_state, delta, probes)))
        except (IncompatibleModels, InvalidConfig, ShapeMismatch) as exc:
            skipped.append(Skipped(parent.name, exc.message))
        report(done, len(parents))
    if not kept:
        reasons = "; ".join(f"{s.parent}: {s.reason}" for s in skipped)
        raise IncompatibleModels(f"the adapter {child.name} fits no candidate ({reasons})")
    kept.sort(key=lambda t: -t[1])
    best_model, best = kept[0]
    runner_up = kept[1][1] if len(kept) > 1 else 0.0
    margin = best - max(runner_up, 0.0)
    if best >= adapters.THRESHOLD:
        decision = Decision(
            best_model.name,
            _sigmoid(margin / adapters.SCALE),
            adapters.METHOD,
            best_model.name,
            margin,
            False,
        )
    else:
        confidence = _sigmoid((adapters.THRESHOLD - best) / adapters.SCALE)
        decision = Decision(None, confidence, adapters.METHOD, best_model.name, margin, False)
    candidates = [CandidateScore(p.name, score, {adapters.METHOD: score}) for p, score in kept]
    return Ranking(child.name, decision, candidates, skipped)
