"""From a zoo's raw scores to answers: each method's ranking, top-1, margin and "none" decision.

Shared by ``calibrate`` (which chooses constants on calibration zoos) and ``report`` (which
applies them to the reported zoos), so both judge a query the same way. What is judged is read
from the stored query; how is the engine's: ``auto`` is recombined from its stored component
scores with the engine's own ``combine_auto``, and the margin and the "no parent" answer come from
the engine's decision rule (``decision.evidence_margin``, ``names_none``, ``no_parent_wins``).
Taylor scores are rebuilt from their stored terms for any α.
"""

from __future__ import annotations

from app.engine.calibration import taylor_alpha
from app.engine.decision import (
    auto_verdict,
    combine_auto,
    evidence_margin,
    names_none,
)
from app.engine.detector import no_parent_wins
from app.engine.methods import MethodKind, get_method
from app.engine.separation import separations


def scores(query: dict, method: str, calibration: dict, alpha: float | None = None) -> list[float]:
    """Per-candidate scores of ``method`` (higher = more likely the parent) for one query."""
    kind = get_method(method).kind
    if kind is MethodKind.COMBINED and deferred(query, calibration):
        return query["scores"]["detector"]
    if kind is MethodKind.COMBINED:
        components = calibration["auto"]["noise"]
        per_candidate = [
            {m: query["scores"][m][i] for m in components if m in query["scores"]}
            for i in range(len(query["candidates"]))
        ]
        nearest = min(query["relative_l2"])
        return combine_auto(per_candidate, nearest, calibration, query.get("outward"))
    if kind is MethodKind.TAYLOR:
        similarity = method.removeprefix("taylor-")
        if alpha is None:
            alpha = taylor_alpha(similarity, calibration)
        return [base + alpha * corr for base, corr in query["taylor"][similarity]]
    # Stored as scored; the detectors' are probabilities, beside "none"'s in none_score.
    return query["scores"][method]


def deferred(query: dict, calibration: dict) -> bool:
    """Whether ``auto`` answers this query with the detector, as the engine would (see
    ``decision.rank_candidates``): its architecture is listed and the detector was scored."""
    listed = calibration["auto"].get("defer_to_detector", {})
    return query.get("model_type") in listed and "detector" in query.get("scores", {})


def judged(query: dict, method: str, calibration: dict, alpha: float | None = None) -> dict:
    """The method's answer to a query: top-1 (argmax, the paper's metric), margin, whether the
    top-1 is right (for a query whose answer is "none", it never is), whether it answers
    "none", and the candidate it names (``auto``'s separation test may name another than its
    top-1; None for "none")."""
    values = scores(query, method, calibration, alpha)
    best, margin = evidence_margin(method, values)
    top1 = query["candidates"][best]
    kind = get_method(method).kind
    if kind is MethodKind.TRAINED or (kind is MethodKind.COMBINED and deferred(query, calibration)):
        # The detector's own no-parent token answers "none".
        detector = method if kind is MethodKind.TRAINED else "detector"
        none = no_parent_wins(values[best], query["none_score"][detector])
        named = None if none else top1
    elif kind is MethodKind.COMBINED and (verdict := query_verdict(query, values, calibration)):
        # The separation test names its own candidate (ties broken by auto's ranking).
        none = not verdict.named
        named = None if none else query["candidates"][verdict.index]
    else:
        none = names_none(method, margin, calibration)
        named = None if none else top1
    correct = top1 == query["truth"]
    return {"top1": top1, "margin": margin, "correct": correct, "none": none, "named": named}


def query_separations(query: dict) -> dict | None:
    """The views' separations of a stored query (computed once and kept on the query: every
    calibration trial reads them again)."""
    if "_separations" not in query:
        query["_separations"] = separations(query.get("squared"))
    return query["_separations"]


def query_verdict(query: dict, values: list[float], calibration: dict):
    """``auto``'s separation verdict on a stored query from its ``values`` (auto's scores), as
    the engine's ``auto_verdict`` gives it (None where the margin decides)."""
    return auto_verdict(values, query_separations(query), calibration)


def decision_right(truth: str | None, answer: dict) -> bool:
    """Whether an answer (``judged``'s) is the right decision: "none" where the query has no
    parent among its candidates, else the true parent named."""
    return answer["none"] if truth is None else answer["named"] == truth
