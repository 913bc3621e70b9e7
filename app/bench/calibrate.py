"""Choose the engine's constants from zoos' raw scores.

Held-out discipline lives in ``protocol``: a zoo is only ever judged with constants fitted
without it (without its seed, or without its family); the shipped ``calibration.json`` is fitted
on every zoo and never reported. From the raw scores it is given, this module sets:

1. ``taylor_alpha``: for each Taylor similarity, the scale α of the grid with the best mean top-1
   (macro average over families × splits; ties go to the α nearest the reference code's 0.01);
2. ``auto.noise``: each candidate component's noise σ_m, the root-mean-square of its centred log
   distances log D − median log D over the candidates of orphan queries (no relative among them);
   for the direction term (a penalty on candidates that look like descendants) σ is a weight
   fitted on a grid instead;
3. ``auto``'s components: greedy forward selection from ``AUTO_POOL``, adding the component that
   most raises the decision accuracy (the true parent named, or "none" for an orphan; mean over
   families × splits, orphans included) until none does;
4. ``auto.threshold`` and ``auto.scale``: a logistic fit of P(best candidate is the parent) on
   ``auto``'s margin, so confidence = sigmoid((margin − threshold)/scale) is that probability on
   the zoos fitted, and the parent is named when it is at least 1/2 (three candidates or fewer);
5. ``auto.separation``: the constants of the separation test that decides with four candidates
   or more (``fit_separation``);
6. ``open_set``: for every other method, the margin threshold below which it answers "no parent"
   (best balanced accuracy), so the benchmark can report each method's open-set precision/recall.
"""

from __future__ import annotations

import copy
import itertools
import math
import statistics
from collections import defaultdict
from datetime import date

import numpy as np

from app.bench.scoring import decision_right, judged, query_separations, scores
from app.engine.calibration import REFERENCE_TAYLOR_ALPHA
from app.engine.decision import DIRECTION, auto_verdict, evidence_margin, log_distances
from app.engine.methods import AUTO, PAIRWISE_KINDS, as_distance, method_names
from app.engine.metrics import SIMILARITY_GRADIENTS
from app.engine.separation import SPECTRA, WEIGHTS

ALPHA_GRID = (0.001, 0.01, 0.1, 1.0)
AUTO_POOL = (
    "weight-l2",
    "weight-cos",
    "weight-spectrum",
    "l1",
    "l2",
    "lse",
    "cka",
    "dc",
    "lin-l1",
    "lin-l2",
    "lin-lse",
    "lin-cka",
    DIRECTION,
)
ORPHANS = "orphans"
DIRECTION_GRID_STEPS = 8  # σ of the direction term: its orphan spread × 1, 1/2, ..., 1/128


def positive_cells(results: list[dict]):
    """(family, split, queries) for every split whose queries have their answer among the
    candidates."""
    for result in results:
        for split, queries in result["splits"].items():
            if split != ORPHANS and queries:
                yield result["family"], split, queries


def macro_top1(results: list[dict], method: str, calibration: dict, alpha=None) -> float:
    """Mean over (family, split) cells of the top-1 accuracy."""
    cells = [
        statistics.fmean(judged(q, method, calibration, alpha)["correct"] for q in queries)
        for _, _, queries in positive_cells(results)
    ]
    return statistics.fmean(cells)


def decision_accuracy(results: list[dict], calibration: dict) -> float:
    """Mean over (family, split) cells, orphans included, of how often ``auto``'s decision is
    right (the true parent named, or "none" for an orphan), with its threshold fitted on the same
    results: the answer an auditor gets, not only its ranking."""
    threshold, _ = logistic_threshold(*_labelled_margins(results, AUTO, calibration))
    cells = []
    for result in results:
        for queries in result["splits"].values():
            if not queries:
                continue
            hits = []
            for query in queries:
                answer = judged(query, AUTO, calibration)
                none = answer["margin"] < threshold
                named = None if none else answer["top1"]
                hits.append(decision_right(query["truth"], {"none": none, "named": named}))
            cells.append(statistics.fmean(hits))
    return statistics.fmean(cells)


def component_noise(results: list[dict], method: str) -> float:
    """RMS of log D − median log D over orphan queries' candidates (for the direction term: of
    the outward log ratios themselves, whose sign carries the meaning)."""
    centred = []
    for result in results:
        for query in result["splits"].get(ORPHANS, []):
            if method == DIRECTION:
                centred.extend(query.get("outward") or [])
                continue
            if method not in query["scores"]:
                continue
            logs = log_distances([as_distance(method, s) for s in query["scores"][method]])
            centred.extend((logs - logs.median()).tolist())
    if not centred:
        return 1.0
    return max(math.sqrt(statistics.fmean(c * c for c in centred)), 1e-6)


def _labelled_margins(results: list[dict], method: str, calibration: dict):
    """(margin, 1 if the best candidate is the true parent else 0) over every query."""
    margins, labels = [], []
    for result in results:
        for queries in result["splits"].values():
            for query in queries:
                values = scores(query, method, calibration)
                best, margin = evidence_margin(method, values)
                margins.append(margin)
                labels.append(int(query["candidates"][best] == query["truth"]))
    return np.array(margins), np.array(labels)


def balanced_threshold(margins: np.ndarray, labels: np.ndarray) -> float:
    """The margin threshold with the best balanced accuracy of "named" (margin ≥ t) against
    "the best candidate is the parent"."""
    finite = np.isfinite(margins)
    margins, labels = margins[finite], labels[finite]
    if labels.all() or not labels.any():
        return float(margins.min()) if len(margins) else 0.0
    best_t, best_score = 0.0, -1.0
    candidates = np.unique(margins)
    for t in np.concatenate([candidates, [candidates.max() + 1.0]]):
        named = margins >= t
        score = 0.5 * (named[labels == 1].mean() + (~named[labels == 0]).mean())
        if score > best_score:
            best_t, best_score = float(t), score
    return best_t


def logistic_threshold(margins: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, scale) of the logistic fit P(parent) = sigmoid((margin − threshold)/scale)."""
    from sklearn.linear_model import LogisticRegression

    finite = np.isfinite(margins)
    x, y = margins[finite, None], labels[finite]
    if y.all() or not y.any():
        return balanced_threshold(margins, labels), 1.0
    fit = LogisticRegression(C=100.0).fit(x, y)
    w, b = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    if w <= 1e-9:
        return balanced_threshold(margins, labels), 1.0
    return -b / w, 1.0 / w


# The grid of ``separation.judge``'s dimensionless constants (see its docstring).
SEPARATION_GRID = {
    "weights_between": (0.3, 0.4, 0.5, 0.6),
    "spectra_floor": (0.1, 0.2, 0.3),
    "weights_far": (2.0, 3.0, 4.0, 6.0),
    "spectra_near": (2.0, 3.0, 4.0, 6.0),
    "hub_max": (None, 0.1, 0.2, 0.3, 0.4, 0.5),
    "spectra_margin": (0.0, 0.05, 0.1),
}


def _judge_all(evidence: dict, constants: dict) -> np.ndarray:
    """``separation.judge``'s named candidate for every query at once (−1: "none"), from
    ``_verdict_inputs``: the same rule, vectorised for the grid search (a test holds the two
    equal). Candidate columns are padded with −inf betweenness and relatedness, +inf hub ratio
    and rank."""
    # The spectra's bar (``separation.threshold``): the floor, raised to the null plus a margin.
    spectral_bar = np.maximum(
        constants["spectra_floor"], evidence["spectra_null"] + constants["spectra_margin"]
    )

    rank = evidence["rank"]
    rows = np.arange(len(rank))

    def first_passing(passing: np.ndarray) -> np.ndarray:
        ranked = np.where(passing, rank, np.inf)
        return np.where(passing.any(1), ranked.argmin(1), -1)

    named = first_passing(evidence["weights_between"] >= constants["weights_between"])
    inside = evidence["weights_far"] < constants["weights_far"]
    if constants["hub_max"] is not None:
        hub = first_passing(inside[:, None] & (evidence["hubs"] <= constants["hub_max"]))
        named = np.where(named >= 0, named, hub)
    spectral = ~inside & (evidence["spectra_far"] <= constants["spectra_near"])
    top = evidence["spectra_rho"].argmax(1)
    clears = evidence["spectra_rho"][rows, top] >= spectral_bar
    return np.where(named >= 0, named, np.where(spectral & clears, top, -1))


def _verdict_inputs(queries: list[tuple[dict, list[float]]]) -> dict:
    """Per query (with auto's scores): each candidate's weight betweenness and hub ratio, its
    spectral relatedness and its rank in auto's order, padded to the largest candidate set; the
    spectra's largest null value, and how far outside the family each view puts the child."""
    width = max(len(values) for _, values in queries)
    count = len(queries)
    out = {
        "spectra_rho": np.full((count, width), -np.inf),
        "hubs": np.full((count, width), np.inf),
        "weights_between": np.full((count, width), -np.inf),
        "rank": np.full((count, width), np.inf),
    }
    columns: dict[str, list] = defaultdict(list)
    for row, (query, values) in enumerate(queries):
        k = len(values)
        order = sorted(range(k), key=lambda i: -values[i])
        out["rank"][row, order] = np.arange(k)
        views = query_separations(query)
        weights, spectra = views[WEIGHTS], views[SPECTRA]
        out["hubs"][row, :k] = weights.hubs
        out["weights_between"][row, :k] = weights.betweenness
        out["spectra_rho"][row, :k] = spectra.relatedness
        columns["spectra_null"].append(max(spectra.null))
        columns["weights_far"].append(weights.unrelated)
        columns["spectra_far"].append(spectra.unrelated)
    return out | {k: np.array(v) for k, v in columns.items()}


def fit_separation(results: list[dict], calibration: dict) -> dict | None:
    """``auto``'s separation constants: the point of ``SEPARATION_GRID`` with the best mean
    decision accuracy over (family, split) cells (queries of four candidates or more; ties to
    the earlier point), and the scale of its confidence (a logistic fit of "the named candidate
    is the parent", or for "none" "no candidate is", on the verdict's strength, through 1/2 at
    its bar). None when no query has four candidates."""
    from sklearn.linear_model import LogisticRegression

    queries, truth, cell_of = [], [], []
    cells = 0
    for result in results:
        for split_queries in result["splits"].values():
            kept = 0
            for query in split_queries:
                if query_separations(query) is None:
                    continue
                queries.append((query, scores(query, AUTO, calibration)))
                truth.append(
                    -1 if query["truth"] is None else query["candidates"].index(query["truth"])
                )
                cell_of.append(cells)
                kept += 1
            cells += kept > 0
    if not queries:
        return None
    evidence = _verdict_inputs(queries)
    truth, cell_of = np.array(truth), np.array(cell_of)
    sizes = np.bincount(cell_of)
    keys = list(SEPARATION_GRID)
    best_point, best_score = None, -1.0
    for values in itertools.product(*SEPARATION_GRID.values()):
        constants = dict(zip(keys, values, strict=True))
        right = _judge_all(evidence, constants) == truth
        score = float((np.bincount(cell_of, weights=right) / sizes).mean())
        if score > best_score + 1e-12:
            best_point, best_score = constants, score
    strength, named_right = [], []
    for (query, values), answer in zip(queries, truth, strict=True):
        verdict = auto_verdict(
            values, query_separations(query), {"auto": {"separation": best_point}}
        )
        strength.append(verdict.strength)
        named_right.append(int(verdict.named and verdict.index == answer))
    scale = 0.05
    if 0 < sum(named_right) < len(named_right):
        fit = LogisticRegression(C=100.0, fit_intercept=False).fit(
            np.array(strength)[:, None], named_right
        )
        if fit.coef_[0, 0] > 1e-9:
            scale = 1.0 / float(fit.coef_[0, 0])
    return {**best_point, "scale": round(scale, 4), "fitted_accuracy": round(best_score, 4)}


def calibrate(results: list[dict], base: dict, log=lambda _: None) -> dict:
    """New calibration constants (a copy of ``base`` with the fitted values)."""
    calibration = copy.deepcopy(base)
    calibration["auto"].pop("separation", None)  # fitted anew below, after the components
    # The per-architecture deferral to a detector predates the universal detector (``detector``
    # now runs on every architecture); the benchmark does not fit it.
    calibration["auto"].pop("defer_to_detector", None)
    alphas = {}
    for similarity in SIMILARITY_GRADIENTS:
        method = f"taylor-{similarity}"
        accuracy = {a: macro_top1(results, method, calibration, a) for a in ALPHA_GRID}
        # Ties go to the α nearest the reference code's.
        alphas[similarity] = max(
            ALPHA_GRID,
            key=lambda a: (accuracy[a], -abs(math.log10(a / REFERENCE_TAYLOR_ALPHA))),
        )
        log(f"{method}: " + ", ".join(f"α={a}: {v:.3f}" for a, v in accuracy.items()))
    calibration["taylor_alpha"] = alphas
    pool = [m for m in AUTO_POOL if m == DIRECTION or all(m in r["methods"] for r in results)]
    noise = {m: component_noise(results, m) for m in pool}
    selected: list[str] = []
    best = -1.0

    def accuracy_with(components: list[str]) -> float:
        calibration["auto"]["noise"] = {m: noise[m] for m in components}
        return decision_accuracy(results, calibration)

    def tune_direction(components: list[str]) -> float:
        # The direction term is a penalty, not a ratio with a noise floor: its weight 1/σ is a
        # free scale, fitted on a grid below the spread of the outward ratios.
        spread = component_noise(results, DIRECTION)
        scores = {}
        for sigma in (spread * 2.0**-k for k in range(DIRECTION_GRID_STEPS)):
            noise[DIRECTION] = sigma
            scores[sigma] = accuracy_with(components)
        noise[DIRECTION] = max(scores, key=lambda sigma: (scores[sigma], sigma))
        return scores[noise[DIRECTION]]

    while True:
        trials = {}
        for method in pool:
            if method in selected:
                continue
            if method == DIRECTION:
                trials[method] = tune_direction([*selected, method])
            else:
                trials[method] = accuracy_with([*selected, method])
        if not trials:
            break
        method = max(trials, key=trials.get)
        if trials[method] <= best + 1e-9:
            break
        if method == DIRECTION:
            tune_direction([*selected, method])
        selected.append(method)
        best = trials[method]
        log(f"auto + {method}: decision accuracy {best:.3f}")
    if DIRECTION in selected:
        best = tune_direction(selected)
        log(f"auto, {DIRECTION} σ refitted to {noise[DIRECTION]:.4f}: decision accuracy {best:.3f}")
    calibration["auto"]["noise"] = {m: round(noise[m], 4) for m in selected}
    threshold, scale = logistic_threshold(*_labelled_margins(results, AUTO, calibration))
    calibration["auto"]["threshold"] = round(threshold, 4)
    calibration["auto"]["scale"] = round(scale, 4)
    separation_constants = fit_separation(results, calibration)
    if separation_constants is not None:
        calibration["auto"]["separation"] = separation_constants
        log(f"auto separation: {separation_constants}")
    calibration["open_set"] = {}
    for method in method_names(*PAIRWISE_KINDS):
        if all(method in r["methods"] for r in results):
            margins, labels = _labelled_margins(results, method, calibration)
            calibration["open_set"][method] = round(balanced_threshold(margins, labels), 4)
    families = sorted({r["family"] for r in results})
    seeds = sorted({r["seed"] for r in results})
    calibration["source"] = (
        f"`lineage bench --calibrate` on {date.today().isoformat()}: fitted on the zoos of "
        f"{', '.join(families)} (seed {', '.join(map(str, seeds))}, size "
        f"{results[0]['size']}); the benchmark reports each zoo with a fit that leaves it out"
    )
    return calibration
