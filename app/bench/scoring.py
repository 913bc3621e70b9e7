"""From a zoo's raw scores to answers: each method's ranking, top-1, margin and "none" decision.

Shared by ``calibrate`` (which chooses constants on calibration zoos) and ``report`` (which
applies them to the reported zoos), so both judge a query the same way. ``auto`` is recombined
from its stored component scores with the engine's own ``combine_auto``; Taylor scores are
rebuilt from their stored terms for any α.
"""

from __future__ import annotations

import math

from app.engine.calibration import taylor_alpha
from app.engine.decision import as_distance, combine_auto
from app.engine.methods import AUTO, DETECTOR_METHODS, METHODS


def scores(query: dict, method: str, calibration: dict, alpha: float | None = None) -> list[float]:
    """Per-candidate scores of ``method`` (higher = more likely the parent) for one query."""
    if method == AUTO and deferred(query, calibration):
        return query["scores"]["detector"]
    if method == AUTO:
        components = calibration["auto"]["noise"]
        per_candidate = [
            {m: query["scores"][m][i] for m in components if m in query["scores"]}
            for i in range(len(query["candidates"]))
        ]
        nearest = min(query["relative_l2"])
        return combine_auto(per_candidate, nearest, calibration, query.get("outward"))
    if method in DETECTOR_METHODS:
        return query["scores"][method]  # probabilities, beside "none"'s in none_score
    if METHODS[method].kind == "taylor":
        similarity = method.removeprefix("taylor-")
        if alpha is None:
            alpha = taylor_alpha(similarity, calibration)
        return [base + alpha * corr for base, corr in query["taylor"][similarity]]
    return query["scores"][method]


def deferred(query: dict, calibration: dict) -> bool:
    """Whether ``auto`` answers this query with the detector, as the engine would (see
    ``decision.rank_candidates``): its architecture is listed and the detector was scored."""
    listed = calibration["auto"].get("defer_to_detector", {})
    return query.get("model_type") in listed and "detector" in query.get("scores", {})


def evidence(method: str, values: list[float]) -> list[float]:
    """Scores on a scale where differences compare across queries: −log D for methods with a
    distance, the score itself for ``auto`` (already in noise units) and Taylor scores."""
    if method == AUTO or method in DETECTOR_METHODS or METHODS[method].kind == "taylor":
        return list(values)
    return [-math.log(max(as_distance(method, v), 1e-30)) for v in values]


def best_and_margin(method: str, values: list[float]) -> tuple[int, float]:
    """Index of the best candidate and its evidence margin over the runner-up."""
    e = evidence(method, values)
    order = sorted(range(len(e)), key=lambda i: -e[i])
    margin = e[order[0]] - e[order[1]] if len(e) > 1 else math.inf
    return order[0], margin


def judged(query: dict, method: str, calibration: dict, alpha: float | None = None) -> dict:
    """The method's answer to a query: top-1 (argmax, the paper's metric), margin, and whether
    the top-1 is right (for a query whose answer is "none", it never is)."""
    values = scores(query, method, calibration, alpha)
    best, margin = best_and_margin(method, values)
    top1 = query["candidates"][best]
    if method in DETECTOR_METHODS or (method == AUTO and deferred(query, calibration)):
        # The detector's own no-parent token answers "none".
        none = query["none_score"]["detector" if method == AUTO else method] > values[best]
    else:
        none = names_none(method, margin, calibration)
    return {"top1": top1, "margin": margin, "correct": top1 == query["truth"], "none": none}


def decision_right(truth: str | None, none: bool, correct: bool) -> bool:
    """Whether an answer is the right decision: "none" where the query has no parent among its
    candidates, else the true parent named."""
    return none if truth is None else not none and correct


def names_none(method: str, margin: float, calibration: dict) -> bool:
    """Whether the method, with its calibrated threshold, answers "no parent"."""
    if method == AUTO:
        return margin < calibration["auto"]["threshold"]
    threshold = calibration.get("open_set", {}).get(method)
    return threshold is not None and margin < threshold
