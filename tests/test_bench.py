"""``lineage bench``: one tiny end-to-end run, ``auto`` judged as the engine judges it, the
calibration's choices on synthetic scores, and the command's refusals.

The end-to-end run (tiny MLP and CNN zoos, two seeds each, every pairwise method, the held-out
fits and the universal detector) is shared by the module. It never writes the package's own
``calibration.json`` or detector: ``--calibration-out`` and ``--detectors`` point into the
test's folder.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from app.bench import scoring
from app.bench.calibrate import (
    ALPHA_GRID,
    AUTO_POOL,
    balanced_threshold,
    calibrate,
    logistic_threshold,
)
from app.bench.report import NOTES_MARKER
from app.bench.run import FITS
from app.bench.zoo import SPLITS
from app.engine.architectures import open_model
from app.engine.calibration import load_calibration
from app.engine.decision import names_none, rank_candidates
from app.engine.methods import AUTO, PAIRWISE_KINDS, method_names
from app.engine.metrics import SIMILARITY_GRADIENTS
from app.engine.universal_detector import CHECKPOINT_NAME, read_universal
from tests.conftest import run_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PAIRWISE = method_names(*PAIRWISE_KINDS)


def _one_error_line(result) -> str:
    """The command failed on bad input: exit 2, a single ``error:`` line, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# --- end to end -----------------------------------------------------------------------------


def tiny_bench(root: Path, *options: str):
    """``lineage bench ROOT`` on tiny MLP and CNN zoos (seeds 0 and 1), two at a time, quietly,
    with extra options."""
    return run_cli(
        "bench",
        str(root),
        "--families",
        "mlp,cnn",
        "--seeds",
        "2",
        "--size",
        "tiny",
        "--jobs",
        "2",
        "--quiet",
        *options,
    )


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> dict[str, Path]:
    """``lineage bench --calibrate`` on tiny MLP and CNN zoos, run once for the module."""
    folder = tmp_path_factory.mktemp("bench")
    paths = {
        "root": folder / "root",
        "calibration": folder / "cal.json",
        "report": folder / "report.md",
        "detectors": folder / "detectors",
    }
    result = tiny_bench(
        paths["root"],
        "--calibrate",
        "--calibration-out",
        str(paths["calibration"]),
        "--detectors",
        str(paths["detectors"]),
        "--detector-epochs",
        "2",
        "--out",
        str(paths["report"]),
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return paths


def _table_rows(report: str) -> dict[str, list[str]]:
    """The first accuracy table of the report: method -> its cells (header under "method")."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## Top-1 accuracy"))
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip("|").split("|")])
        elif table:
            break
    header, _, *rows = table
    return {"method": header[1:], **{row[0].strip("`"): row[1:] for row in rows}}


def test_bench_writes_report_plot_calibration_and_results(bench_run):
    report = bench_run["report"].read_text()
    table = _table_rows(report)
    for split in SPLITS:
        assert split in table["method"], f"no column for {split}"
    for method in [AUTO, *PAIRWISE]:
        assert method in table, f"no row for {method}"
        assert len(table[method]) == len(table["method"]), method
    assert NOTES_MARKER in report

    plot = bench_run["report"].with_suffix(".png")
    assert plot.is_file()
    assert plot.read_bytes()[:8] == PNG_SIGNATURE

    calibration = json.loads(bench_run["calibration"].read_text())
    noise = calibration["auto"]["noise"]
    assert noise and set(noise) <= set(AUTO_POOL)
    assert all(sigma > 0 for sigma in noise.values())
    assert math.isfinite(calibration["auto"]["threshold"])
    assert calibration["auto"]["scale"] > 0
    for similarity in SIMILARITY_GRADIENTS:
        assert calibration["taylor_alpha"][similarity] in ALPHA_GRID, similarity
    assert set(calibration["taylor_alpha"]) >= {"l1", "l2", "l4", "lse"}
    assert isinstance(calibration["open_set"], dict) and calibration["open_set"]
    assert set(calibration["open_set"]) <= set(PAIRWISE)
    assert calibration["auto"]["separation"]["scale"] > 0

    for family in ("mlp", "cnn"):
        for seed in (0, 1):
            zoo = bench_run["root"] / f"{family}-seed{seed}"
            results = json.loads((zoo / "results.json").read_text())
            assert results["family"] == family and results["seed"] == seed
            assert set(results["splits"]) == set(SPLITS)
            assert set(PAIRWISE) <= set(results["methods"])
    # Held out: one fit without each seed, one without each family, and the shipped one.
    fits = json.loads((bench_run["root"] / FITS).read_text())
    assert fits["shipped"] == calibration
    assert set(fits["by_seed"]) == {"0", "1"} and set(fits["by_family"]) == {"mlp", "cnn"}
    assert fits["by_family"]["mlp"] != fits["by_family"]["cnn"]
    # The universal detector: one checkpoint trained on both families, and one per held-out
    # family evaluated on that family alone.
    _, record = read_universal(bench_run["detectors"] / CHECKPOINT_NAME, "cpu")
    assert record["families"] == ["cnn", "mlp"] and record["epochs"] == 2
    held_out = fits["detector"]["leave_one_family_out"]
    assert set(held_out) == {"mlp", "cnn"}
    for family, result in held_out.items():
        assert set(result["trained_on"]) == {"mlp", "cnn"} - {family}
        assert 0.0 <= result["overall"]["accuracy"] <= 1.0
    assert "## Decisions held out: a family never seen (leave one family out)" in report
    assert "### The universal detector, leave one family out" in report


def test_rerun_reuses_scores_and_keeps_the_hand_written_notes(bench_run):
    report = bench_run["report"]
    results = bench_run["root"] / "mlp-seed0" / "results.json"
    scored = results.read_bytes()
    note = "A hand-written reading that regeneration must keep."
    report.write_text(report.read_text() + note + "\n")
    result = tiny_bench(
        bench_run["root"],
        "--reuse-scores",
        "--out",
        str(report),
        "--detectors",
        str(bench_run["detectors"]),
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    regenerated = report.read_text()
    assert regenerated.count(NOTES_MARKER) == 1
    assert note in regenerated.split(NOTES_MARKER, 1)[1]
    assert results.read_bytes() == scored  # reused, not scored again


def _queries(results: dict) -> list[dict]:
    """A few queries of different kinds: ordinary, permuted, distilled, none, kinship, and
    four-candidate ones (hub, siblings) that the separation test decides."""
    return [results["splits"][split][0] for split in ("standard", "permuted", "distilled")] + [
        results["splits"]["orphans"][0],
        results["splits"]["kinship"][0],
        results["splits"]["generations"][-1],
        results["splits"]["hub"][0],
        results["splits"]["siblings"][0],
    ]


@pytest.mark.parametrize("which", ["fitted", "shipped"])
def test_bench_judges_auto_as_the_engine_does(bench_run, which):
    if which == "fitted":
        calibration = json.loads(bench_run["calibration"].read_text())
    else:
        calibration = load_calibration()
    zoo = bench_run["root"] / "mlp-seed0"
    results = json.loads((zoo / "results.json").read_text())
    models = {}

    def model(name):
        if name not in models:
            models[name] = open_model(zoo / name, name)
        return models[name]

    for query in _queries(results):
        bench_scores = scoring.scores(query, AUTO, calibration)
        ranking = rank_candidates(
            model(query["child"]),
            [model(c) for c in query["candidates"]],
            AUTO,
            num_probes=results["num_probes"],
            calibration=calibration,
            detector_dir=bench_run["detectors"] if which == "fitted" else None,
        )
        assert ranking.skipped == []
        engine = {c.parent: c.score for c in ranking.candidates}
        assert set(engine) == set(query["candidates"])
        # auto's scores are log-distance ratios in units of each component's noise (σ as small
        # as 0.04): float32 sums rounded in another order (the engine's batched pass, another
        # CPU's kernels) move them by about 1e-6, a real disagreement by far more
        for name, value in zip(query["candidates"], bench_scores, strict=True):
            assert value == pytest.approx(engine[name], rel=1e-5, abs=1e-4), (query["child"], name)
        judged = scoring.judged(query, AUTO, calibration)
        assert judged["top1"] == ranking.candidates[0].parent
        assert judged["margin"] == pytest.approx(ranking.decision.margin, rel=1e-5, abs=1e-4)
        assert judged["none"] == (ranking.decision.parent is None)
        assert judged["named"] == ranking.decision.parent
        # With four candidates or more the separation test decided, and says so.
        assert (ranking.separation is not None) == (len(query["candidates"]) >= 4)


# --- calibration on synthetic scores --------------------------------------------------------

GOOD, RANDOM = "weight-l2", "cka"  # a distance that finds the parent; a similarity that is noise


def _synthetic_results(seed: int = 0, per_split: int = 12, candidates: int = 4) -> dict:
    """A results.json by hand: ``GOOD`` puts the truth at a tenth of every other candidate's
    distance; ``RANDOM`` scores at random; orphans have no relative among their candidates."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split in ("standard", "few-shot", "orphans"):
        queries = []
        for q in range(per_split):
            names = [f"parent-{i}" for i in range(candidates)]
            truth_index = None if split == "orphans" else int(rng.integers(candidates))
            distances = rng.uniform(1.0, 1.2, candidates)
            if truth_index is not None:
                distances[truth_index] = 0.1
            taylor = {
                sim: [[float(-d), float(rng.normal())] for d in distances]
                for sim in SIMILARITY_GRADIENTS
            }
            queries.append(
                {
                    "child": f"{split}-child-{q}",
                    "candidates": names,
                    "truth": None if truth_index is None else names[truth_index],
                    "scores": {
                        GOOD: [float(-d) for d in distances],
                        RANDOM: [float(s) for s in rng.uniform(0.0, 0.9, candidates)],
                    },
                    "relative_l2": [float(d) / 10 for d in distances],
                    "taylor": taylor,
                }
            )
        splits[split] = queries
    return {
        "family": "mlp",
        "seed": 100 + seed,
        "size": "tiny",
        "methods": [GOOD, RANDOM],
        "splits": splits,
    }


def test_calibration_selects_the_informative_component_and_separates_orphans():
    results = [_synthetic_results(0), _synthetic_results(1)]
    base = load_calibration()
    calibration = calibrate(results, base)
    assert base == load_calibration(), "calibrate changed its base"

    noise = calibration["auto"]["noise"]
    assert list(noise)[0] == GOOD, noise
    assert all(sigma > 0 for sigma in noise.values())
    assert calibration["auto"]["scale"] > 0
    assert set(calibration["taylor_alpha"]) == set(SIMILARITY_GRADIENTS)
    assert set(calibration["open_set"]) == {GOOD, RANDOM}

    orphan_margins, positive_margins = [], []
    for result in results:
        for split, queries in result["splits"].items():
            for query in queries:
                judged = scoring.judged(query, AUTO, calibration)
                if split == "orphans":
                    orphan_margins.append(judged["margin"])
                else:
                    assert judged["correct"], query["child"]
                    positive_margins.append(judged["margin"])
    threshold = calibration["auto"]["threshold"]
    assert max(orphan_margins) < threshold < min(positive_margins)
    # With that threshold, auto names the parent of every positive and no orphan's.
    assert not any(names_none(AUTO, m, calibration) for m in positive_margins)
    assert all(names_none(AUTO, m, calibration) for m in orphan_margins)


def test_thresholds_fall_between_separable_margins():
    negatives = np.array([0.05, 0.2, 0.4, 0.3, 0.1])
    positives = np.array([2.0, 3.5, 2.5, 5.0])
    margins = np.concatenate([negatives, positives])
    labels = np.array([0] * len(negatives) + [1] * len(positives))

    threshold = balanced_threshold(margins, labels)
    assert negatives.max() < threshold <= positives.min()

    threshold, scale = logistic_threshold(margins, labels)
    assert negatives.max() < threshold < positives.min()
    assert scale > 0

    # A margin of inf (a query with one candidate) is ignored rather than breaking the fit.
    with_inf = np.append(margins, np.inf)
    assert balanced_threshold(with_inf, np.append(labels, 1)) == balanced_threshold(margins, labels)


# --- refusals -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def refusals(tmp_path_factory) -> dict[str, object]:
    """Every bad ``lineage bench`` command, run concurrently once for the module."""
    folder = tmp_path_factory.mktemp("bench-refusals")
    a_file = folder / "not-a-folder.txt"
    a_file.write_text("hello")
    broken = folder / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{this is not json")
    empty = folder / "empty"
    tiny = ["--size", "tiny", "--quiet"]
    commands = {
        "file": ["bench", str(a_file), *tiny],
        "broken-manifest": ["bench", str(broken), *tiny],
        "family": ["bench", str(empty), "--families", "nope", *tiny],
        "method": ["bench", str(empty), "--families", "mlp", "--methods", "nope", *tiny],
        "adapter-method": [
            "bench",
            str(empty),
            "--families",
            "mlp",
            "--methods",
            "adapter-alignment",
            *tiny,
        ],
        "seeds": ["bench", str(empty), "--families", "mlp", "--seeds", "0", *tiny],
    }
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        futures = {k: pool.submit(run_cli, *args) for k, args in commands.items()}
        outcomes = {k: f.result() for k, f in futures.items()}
    return {"outcomes": outcomes, "empty": empty}


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("file", "not a folder"),
        ("broken-manifest", "not valid JSON"),
        ("family", "nope"),
        ("method", "nope"),
        ("adapter-method", "'adapter-alignment' (adapter) is not scored on model zoos"),
        ("seeds", "--seeds"),
    ],
)
def test_bench_refuses_bad_input_with_one_error_line(refusals, case, named):
    line = _one_error_line(refusals["outcomes"][case])
    assert named in line


def test_refused_bench_builds_nothing(refusals):
    empty = refusals["empty"]
    assert not empty.exists() or not any(empty.iterdir())
