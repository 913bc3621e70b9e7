"""What ranking a child's candidates returns: the decision and the candidates' scores.

Plain data, shared by every ranker (``decision.rank_candidates`` and the rankers it dispatches
to); ``Ranking.to_dict`` is the JSON of ``lineage detect --json`` and of a detection job's result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class CandidateScore:
    """One candidate: its ``score`` under the method asked for, and each method's score."""

    parent: str
    score: float
    scores: dict[str, float]


@dataclass
class Skipped:
    """A candidate that could not be compared with the child, and why."""

    parent: str
    reason: str


@dataclass
class Decision:
    """The answer: ``parent`` (None for "no parent among the candidates"), its ``confidence``,
    the ``best`` candidate and its ``margin`` over the runner-up, and whether the confidence is
    ``calibrated`` on held-out zoos."""

    parent: str | None
    confidence: float
    method: str
    best: str | None
    margin: float
    calibrated: bool


@dataclass
class Ranking:
    """A child's decision and its candidates, best first, plus those skipped; ``subnetwork``:
    the part of the models that function-space methods used, when not the whole model
    (``{"blocks": N, "of": L, "parameters": P}``: the embeddings and first N of L blocks);
    ``direction``: each candidate's outward log ratio log(‖θ_k − θ̄‖ / ‖θ_c − θ̄‖), θ̄ the
    candidates' mean weights, when ``auto`` computed it (three comparable candidates or more):
    above 0, the candidate lies farther than the child from the family's centre, as a
    descendant of the child would (``weightspace.outward_log_ratios``); ``separation``: with
    ``auto`` and four candidates or more, which evidence decided and why (``basis``: ``weights``
    or ``spectra`` when a parent is named; ``not-separated`` or ``unrelated`` for "none"; see
    ``decision.separation_json``)."""

    child: str
    decision: Decision
    candidates: list[CandidateScore]
    skipped: list[Skipped] = field(default_factory=list)
    subnetwork: dict | None = None
    direction: dict[str, float] | None = None
    separation: dict | None = None

    def to_dict(self) -> dict:
        """The public JSON shape of ``lineage detect --json`` (see shared/design.md)."""
        return asdict(self)
