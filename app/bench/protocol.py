"""Held-out protocols: every constant of a reported answer is fitted without what it is reported on.

The benchmark's zoos are seeds 0..K−1 of every family. From their raw scores (``results.json``),
``calibrate`` is fitted three ways:

- **shipped**: on every zoo; written to ``app/engine/calibration.json``, never used to report;
- **in-family** (leave one seed out): for seed s, on every family's zoos of the other seeds, so
  the reported family is seen, but never its reported models, roots or tasks;
- **leave one family out**: for family F, on the zoos of every other family only. This is the
  figure a user with a new architecture gets: nothing of F (its architecture, its data, its
  scale) was seen by ``auto``'s components, noises, thresholds or separation constants.

``decision_summary`` then judges each zoo's queries with the constants fitted without it, and
reports per family and seed: decision accuracy (the right parent named, or "none" where none is
right) per split, top-1 over the queries with a parent, and the precision and recall of "none"
over the splits whose answer is "none" (``zoo.NONE_SPLITS``).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable

from app.bench.calibrate import calibrate
from app.bench.scoring import decision_right, judged
from app.bench.zoo import NONE_SPLITS
from app.engine.methods import AUTO

IN_FAMILY, HELD_OUT = "in-family", "leave-one-family-out"
# The splits the decision goals are stated on: ≥ 95 % decision accuracy on each, and "none"
# precision ≥ 95 % at recall ≥ 90 % with ``GOAL_NONE_SPLITS`` as the queries whose answer is
# "none" (the goal's precision counts the "none" answers on ``GOAL_SPLITS`` as the false ones).
GOAL_SPLITS = ("standard", "far", "permuted", "residual-permuted")
GOAL_NONE_SPLITS = ("orphans", "cousins")


def fit_held_out(results: list[dict], base: dict, log: Callable[[str], None]) -> dict:
    """``{"shipped": c, "by_seed": {seed: c}, "by_family": {family: c}}``: ``calibrate`` on all
    zoos, without each seed, and without each family (``by_seed`` needs two seeds or more,
    ``by_family`` two families or more; missing keys mean the protocol cannot hold out)."""
    seeds = sorted({r["seed"] for r in results})
    families = list(dict.fromkeys(r["family"] for r in results))
    log("calibrating on every zoo (shipped constants)")
    fits: dict = {"shipped": calibrate(results, base, log), "by_seed": {}, "by_family": {}}
    if len(seeds) > 1:
        for seed in seeds:
            log(f"calibrating without seed {seed} (in-family figures)")
            others = [r for r in results if r["seed"] != seed]
            fits["by_seed"][str(seed)] = calibrate(others, base, lambda _: None)
    if len(families) > 1:
        for family in families:
            log(f"calibrating without {family} (leave-one-family-out figures)")
            others = [r for r in results if r["family"] != family]
            fits["by_family"][family] = calibrate(others, base, lambda _: None)
    return fits


def calibration_for(fits: dict | None, fallback: dict, protocol: str = IN_FAMILY):
    """A function from a zoo's result to the constants its answers are judged with under
    ``protocol``; the shipped (or ``fallback``) constants where the protocol cannot hold out."""

    def pick(result: dict) -> dict:
        if fits is None:
            return fallback
        if protocol == HELD_OUT:
            return fits["by_family"].get(result["family"], fits["shipped"])
        return fits["by_seed"].get(str(result["seed"]), fits["shipped"])

    return pick


def held_out(fits: dict | None, protocol: str) -> bool:
    """Whether ``fits`` hold something out under ``protocol`` (else the report says so)."""
    if fits is None:
        return False
    return bool(fits["by_family"] if protocol == HELD_OUT else fits["by_seed"])


def zoo_decisions(result: dict, calibration: dict, method: str = AUTO) -> dict:
    """One zoo's decision figures for ``method``: per split the decision accuracy, and over the
    zoo top-1 (queries with a parent) and "none" precision and recall (``NONE_SPLITS`` against
    every other split), and the same on the goal's queries alone (``GOAL_NONE_SPLITS`` against
    ``GOAL_SPLITS``)."""
    splits, top1 = {}, []
    tp = fp = fn = 0
    goal = {"tp": 0, "fp": 0, "fn": 0}
    for split, queries in result["splits"].items():
        if not queries:
            continue
        hits = []
        for query in queries:
            answer = judged(query, method, calibration)
            hits.append(decision_right(query["truth"], answer))
            if split in NONE_SPLITS:
                tp += answer["none"]
                fn += not answer["none"]
            else:
                fp += answer["none"]
                top1.append(answer["correct"])
            if split in GOAL_NONE_SPLITS:
                goal["tp" if answer["none"] else "fn"] += 1
            elif split in GOAL_SPLITS:
                goal["fp"] += answer["none"]
        splits[split] = statistics.fmean(hits)
    return {
        "splits": splits,
        "top1": statistics.fmean(top1) if top1 else math.nan,
        "none_precision": tp / (tp + fp) if tp + fp else math.nan,
        "none_recall": tp / (tp + fn) if tp + fn else math.nan,
        "goal_none_precision": _ratio(goal["tp"], goal["tp"] + goal["fp"]),
        "goal_none_recall": _ratio(goal["tp"], goal["tp"] + goal["fn"]),
    }


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else math.nan


def decision_summary(results: list[dict], fits: dict | None, fallback: dict) -> dict:
    """``{protocol: {family: [zoo_decisions per seed]}}`` for ``auto`` under both protocols."""
    out: dict = {}
    for protocol in (IN_FAMILY, HELD_OUT):
        pick = calibration_for(fits, fallback, protocol)
        by_family = defaultdict(list)
        for result in sorted(results, key=lambda r: (r["family"], r["seed"])):
            by_family[result["family"]].append(zoo_decisions(result, pick(result)))
        out[protocol] = dict(by_family)
    return out
