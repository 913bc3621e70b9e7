"""Tables, plot and ``docs/benchmarks.md`` from the raw results of the reported zoos.

Every number is computed here from ``results.json`` files and the calibration constants; the
document's hand-written reading lives below ``NOTES_MARKER`` and is kept when it is regenerated.
"""

from __future__ import annotations

import math
import platform
import statistics
from collections import defaultdict
from datetime import date
from pathlib import Path

from app.bench.calibrate import ALPHA_GRID
from app.bench.evaluate import TIMING_PAIRS
from app.bench.protocol import GOAL_SPLITS, HELD_OUT, IN_FAMILY, held_out
from app.bench.scoring import judged
from app.bench.zoo import NONE_SPLITS, SPLITS
from app.engine.calibration import taylor_alpha
from app.engine.methods import AUTO, METHODS, MethodKind, method_names

NOTES_MARKER = "<!-- reading: hand-written below this line, kept when the file is regenerated -->"
FAMILY_TITLES = {
    "mlp": "FC network (lineage-mlp, 64-64-64-10, digits)",
    "cnn": "small ResNet (lineage-cnn, channels 8/16, digits)",
    "gpt2": "tiny GPT-2 (2 layers, 32-d, synthetic languages)",
    "bert": "tiny BERT (2 layers, 32-d, masked LM on synthetic languages)",
    "llama": "tiny Llama (2 layers, 32-d, RMSNorm, SwiGLU, rotary; synthetic languages)",
    "vit": "tiny ViT (2 layers, 32-d, 2×2 patches, digits)",
}
POSITIVE_SPLITS = [s for s in SPLITS if s not in NONE_SPLITS]

# The paper's Table 1 averaged over its four standard data sets (FMNIST, EMNIST, CIFAR10, SVHN),
# its 5-shot and imbalanced CIFAR10 columns; ResNet-18 children, FC network in brackets.
PAPER = {
    "l1": {"standard": (92.45, 53.55), "few-shot": (98.85, 80.31), "imbalanced": (87.50, 75.42)},
    "cka": {"standard": (63.35, 23.35), "few-shot": (71.11, 18.18), "imbalanced": (62.51, 50.76)},
    "taylor-l1": {
        "standard": (97.80, 54.66),
        "few-shot": (99.89, 85.61),
        "imbalanced": (95.84, 75.76),
    },
    "taylor-l2": {
        "standard": (91.30, 55.95),
        "few-shot": (98.89, 88.64),
        "imbalanced": (88.09, 78.79),
    },
    # The paper's Lineage Detector, beside both of ours (the paper's variant, and ours).
    **dict.fromkeys(
        ("detector-paper", "detector"),
        {"standard": (99.51, 97.47), "few-shot": (99.91, 99.94), "imbalanced": (97.01, 99.35)},
    ),
}
# Table 2 (generations, ResNet-18) and Table 3 (EWC, KD), "l1 with approx" = our taylor-l1.
PAPER_OTHER = {
    ("taylor-l1", "generations"): "95.2–98.9",
    ("l1", "generations"): "83.9–94.1",
    ("cka", "generations"): "38–78",
    ("taylor-l1", "ewc"): "99.3",
    ("taylor-l1", "kd"): "93.6",
    **{
        (detector, split): paper
        for detector in ("detector-paper", "detector")
        for split, paper in (("generations", "97.8–99.6"), ("ewc", "99.2"), ("kd", "99.1"))
    },
}


def method_rows(methods: list[str]) -> list[str]:
    """``auto`` (always: it is recombined from the others), then ``methods`` in the registry's
    order (the detectors, then the pairwise methods)."""
    return [m for m in method_names() if METHODS[m].kind is MethodKind.COMBINED or m in methods]


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{mean:.0f} ± {std:.0f}"


def summarize(results: list[dict], calibration) -> dict:
    """accuracy[family][method][split] = per-seed top-1; open_set[family][method] = per-seed
    (precision, recall) of "none"; gaps[family][method][gap] = per-seed top-1 on generations;
    alphas[family][method][α] = per-seed macro top-1; timings[family][method] = per-seed cost.
    ``calibration``: the constants, or a function from a zoo's result to those it is judged
    with (``protocol.calibration_for``)."""
    pick = calibration if callable(calibration) else (lambda _result: calibration)
    methods = method_rows(results[0]["methods"])
    accuracy = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    open_set = defaultdict(lambda: defaultdict(list))
    gaps = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    alphas = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    timings = defaultdict(lambda: defaultdict(list))
    for result in results:
        family = result["family"]
        calibration = pick(result)
        for method in methods:
            if method not in result["methods"] and method != AUTO:
                continue
            tp = fp = fn = 0
            for split, queries in result["splits"].items():
                if not queries:
                    continue
                answers = [judged(q, method, calibration) for q in queries]
                none = [a["none"] for a in answers]
                if split in NONE_SPLITS:
                    accuracy[family][method][split].append(statistics.fmean(none))
                    tp += sum(none)
                    fn += len(none) - sum(none)
                else:
                    accuracy[family][method][split].append(
                        statistics.fmean(a["correct"] for a in answers)
                    )
                    fp += sum(none)
                if split == "generations":
                    by_gap = defaultdict(list)
                    for q, a in zip(queries, answers, strict=True):
                        by_gap[q["gap"]].append(a["correct"])
                    for gap, hits in by_gap.items():
                        gaps[family][method][gap].append(statistics.fmean(hits))
            precision = tp / (tp + fp) if tp + fp else math.nan
            recall = tp / (tp + fn) if tp + fn else math.nan
            open_set[family][method].append((precision, recall))
            if method in result["timings"]:
                timings[family][method].append(result["timings"][method])
        for method in methods:
            if METHODS[method].kind is MethodKind.TAYLOR:
                for alpha in ALPHA_GRID:
                    cells = [
                        statistics.fmean(
                            judged(q, method, calibration, alpha)["correct"] for q in qs
                        )
                        for split, qs in result["splits"].items()
                        if split not in NONE_SPLITS and qs
                    ]
                    alphas[family][method][alpha].append(statistics.fmean(cells))
    return {
        "methods": methods,
        "families": list(dict.fromkeys(r["family"] for r in results)),
        "seeds": sorted({r["seed"] for r in results}),
        "accuracy": accuracy,
        "open_set": open_set,
        "gaps": gaps,
        "alphas": alphas,
        "timings": timings,
    }


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def accuracy_table(summary: dict, family: str) -> list[str]:
    """Methods × splits, top-1 % mean ± std over seeds (orphans: % answered "none")."""
    acc = summary["accuracy"][family]
    rows = []
    for method in summary["methods"]:
        cells = [_mean_std(acc[method][s]) for s in SPLITS]
        macro = [
            statistics.fmean(acc[method][s][k] for s in POSITIVE_SPLITS)
            for k in range(min(len(acc[method][s]) for s in POSITIVE_SPLITS))
        ]
        rows.append([f"`{method}`", *cells, _mean_std(macro)])
    return _table(["method", *SPLITS, "mean (splits with a parent)"], rows)


def open_set_table(summary: dict) -> list[str]:
    rows = []
    for method in summary["methods"]:
        row = [f"`{method}`"]
        for family in summary["families"]:
            pairs = summary["open_set"][family][method]
            precision = [p for p, _ in pairs if not math.isnan(p)]
            recall = [r for _, r in pairs if not math.isnan(r)]
            p = f"{100 * statistics.fmean(precision):.0f}" if precision else "–"
            r = f"{100 * statistics.fmean(recall):.0f}" if recall else "–"
            row.append(f"{p} / {r}")
        rows.append(row)
    return _table(["method", *[f"{f}: precision / recall" for f in summary["families"]]], rows)


def gap_table(summary: dict, methods: list[str]) -> list[str]:
    rows = []
    for family in summary["families"]:
        gaps = summary["gaps"][family]
        for method in methods:
            cells = [_mean_std(gaps[method][g]) for g in (1, 2, 3)]
            rows.append([family, f"`{method}`", *cells])
    return _table(["family", "method", "gap 1 (parent)", "gap 2", "gap 3"], rows)


def alpha_table(summary: dict, calibration: dict) -> list[str]:
    rows = []
    for family in summary["families"]:
        for method, by_alpha in summary["alphas"][family].items():
            chosen = taylor_alpha(method.removeprefix("taylor-"), calibration)
            cells = [
                _mean_std(by_alpha[a]) + (" (chosen)" if a == chosen else "") for a in ALPHA_GRID
            ]
            rows.append([family, f"`{method}`", *cells])
    return _table(["family", "method", *[f"α = {a}" for a in ALPHA_GRID]], rows)


def paper_table(summary: dict) -> list[str]:
    rows = []
    mean = summary["accuracy"]
    for method, columns in PAPER.items():
        for split, (resnet, fc) in columns.items():
            ours = {f: _mean_std(mean[f][method][split]) for f in ("cnn", "mlp", "gpt2")}
            rows.append(
                [
                    f"`{method}`",
                    split,
                    f"{resnet:.1f}",
                    ours["cnn"],
                    f"{fc:.1f}",
                    ours["mlp"],
                    ours["gpt2"],
                ]
            )
    for (method, split), paper in PAPER_OTHER.items():
        ours = {f: _mean_std(mean[f][method][split]) for f in ("cnn", "mlp", "gpt2")}
        rows.append([f"`{method}`", split, paper, ours["cnn"], "–", ours["mlp"], ours["gpt2"]])
    return _table(
        ["method", "setting", "paper ResNet-18", "ours CNN", "paper FC", "ours MLP", "ours GPT-2"],
        rows,
    )


def timing_table(summary: dict) -> list[str]:
    rows = []
    for method in summary["methods"]:
        row = [f"`{method}`"]
        for family in summary["families"]:
            runs = summary["timings"][family][method]
            if not runs:
                row.append("–")
                continue
            ms = 1000 * statistics.fmean(r["seconds"] for r in runs)
            mb = max(r["peak_mb"] for r in runs)
            row.append(f"{ms:.1f} ms / {mb:.1f} MB")
        rows.append(row)
    return _table(["method", *[f"{f}: time / peak memory" for f in summary["families"]]], rows)


def scale_table(scale: dict | None) -> list[str]:
    """Cost on one real-size pair (``evaluate.time_at_scale``), when it was measured."""
    if not scale:
        return []
    rows = [
        [f"`{m}`", f"{t['seconds']:.2f} s", f"{t['peak_mb']:.0f} MB"]
        for m, t in scale["timings"].items()
    ]
    rows.sort(key=lambda r: r[0] != "`auto`")
    return [
        f"At real size: one pair of the {scale['model']} ({scale['parameters'] / 1e6:.1f} M "
        "parameters, 16-token probes), child = parent + 1 % noise, cold caches:",
        "",
        *_table(["method", "time", "peak extra memory"], rows),
        "",
    ]


def findings(summary: dict) -> list[str]:
    """Claims computed from the numbers: linearised vs direct, weight vs function, auto vs best."""
    lines = []
    acc = summary["accuracy"]

    def mean(family, method, split):
        values = acc[family][method][split]
        return statistics.fmean(values) if values else math.nan

    for lin, direct in (("lin-l1", "l1"), ("taylor-l1", "l1"), ("lin-l2", "l2")):
        if lin not in summary["methods"] or direct not in summary["methods"]:
            continue
        cells = [(f, s) for f in summary["families"] for s in POSITIVE_SPLITS]
        wins = sum(mean(f, lin, s) > mean(f, direct, s) + 1e-9 for f, s in cells)
        losses = sum(mean(f, lin, s) < mean(f, direct, s) - 1e-9 for f, s in cells)
        lines.append(
            f"- `{lin}` against `{direct}`: better in {wins}, worse in {losses}, tied in "
            f"{len(cells) - wins - losses} of {len(cells)} (family, split) cells."
        )
    for family in summary["families"]:
        gaps = []
        for split in POSITIVE_SPLITS:
            best = max(
                (m for m in summary["methods"] if m != AUTO),
                key=lambda m, s=split: mean(family, m, s),
            )
            delta = mean(family, AUTO, split) - mean(family, best, split)
            if delta < -1e-9:
                gaps.append(
                    f"{split} ({100 * mean(family, AUTO, split):.0f} % vs `{best}` "
                    f"{100 * mean(family, best, split):.0f} %)"
                )
        if gaps:
            lines.append(
                f"- {family}: `auto`'s top-1 trails the best single method on " + "; ".join(gaps)
            )
        else:
            lines.append(
                f"- {family}: `auto`'s top-1 is at least as high as every single method's on "
                "every split."
            )
        f1 = {m: _none_f1(summary, family, m) for m in summary["methods"]}
        rival = max((m for m in f1 if m != AUTO), key=lambda m: f1[m])
        lines.append(
            f'- {family}, open set: F1 of "none" {100 * f1[AUTO]:.0f} % for `auto`, '
            f"{100 * f1[rival]:.0f} % for the best single method (`{rival}`)."
        )
    return lines


def _none_f1(summary: dict, family: str, method: str) -> float:
    """F1 of the "none" answer from the per-seed mean precision and recall (0 when undefined)."""
    pairs = summary["open_set"][family][method]
    precision = [p for p, _ in pairs if not math.isnan(p)]
    recall = [r for _, r in pairs if not math.isnan(r)]
    if not precision or not recall:
        return 0.0
    p, r = statistics.fmean(precision), statistics.fmean(recall)
    return 2 * p * r / (p + r) if p + r else 0.0


def plot(summary: dict, path: Path) -> None:
    """Heatmaps of mean top-1 (orphans: "none" rate), one panel per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    families = summary["families"]
    methods = summary["methods"]
    fig, axes = plt.subplots(
        1,
        len(families),
        figsize=(4.6 * len(families) + 1.5, 0.32 * len(methods) + 2.2),
        squeeze=False,
        sharey=True,
    )
    for ax, family in zip(axes[0], families, strict=True):
        acc = summary["accuracy"][family]
        grid = np.array(
            [
                [100 * statistics.fmean(acc[m][s]) if acc[m][s] else np.nan for s in SPLITS]
                for m in methods
            ]
        )
        image = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(SPLITS)), SPLITS, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(methods)), methods, fontsize=8)
        ax.tick_params(axis="y", labelleft=ax is axes[0][0])
        ax.set_title(family, fontsize=10)
        for i in range(len(methods)):
            for j in range(len(SPLITS)):
                if not np.isnan(grid[i, j]):
                    colour = "black" if grid[i, j] > 60 else "white"
                    ax.text(
                        j,
                        i,
                        f"{grid[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color=colour,
                    )
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="top-1 % (orphans: % 'none')")
    fig.suptitle(f"Top-1 accuracy by method and split, mean over seeds {summary['seeds']}")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def machine(device: str) -> str:
    """The machine, in words: CPU model, cores available, device, Python and torch."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cpu}, {cores} cores available, device `{device}`, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def _mean_std_of(rows: list[dict], get) -> str:
    values = [get(r) for r in rows]
    values = [v for v in values if v is not None and not math.isnan(v)]
    return _mean_std(values)


def decision_table(decisions: dict, families: list[str]) -> list[str]:
    """``auto``'s decisions per family, in-family beside leave-one-family-out: decision accuracy
    on the goal splits and over all splits, top-1, and "none" precision / recall."""
    rows = []
    for family in families:
        for protocol in (IN_FAMILY, HELD_OUT):
            zoos = decisions[protocol].get(family, [])
            cells = [_mean_std_of(zoos, lambda z, s=s: z["splits"].get(s)) for s in GOAL_SPLITS]
            every = _mean_std_of(zoos, lambda z: statistics.fmean(z["splits"].values()))
            none = (
                f"{_mean_std_of(zoos, lambda z: z['none_precision'])} / "
                f"{_mean_std_of(zoos, lambda z: z['none_recall'])}"
            )
            goal = (
                f"{_mean_std_of(zoos, lambda z: z['goal_none_precision'])} / "
                f"{_mean_std_of(zoos, lambda z: z['goal_none_recall'])}"
            )
            top1 = _mean_std_of(zoos, lambda z: z["top1"])
            rows.append([family, protocol, *cells, every, top1, goal, none])
    header = [
        "family",
        "fitted",
        *GOAL_SPLITS,
        "all splits",
        "top-1",
        "none P / R (goal)",
        "none P / R (all)",
    ]
    return _table(header, rows)


def goal_lines(decisions: dict, families: list[str]) -> list[str]:
    """Each family's leave-one-family-out figures against the goals: decision accuracy ≥ 95 %
    on the goal splits, "none" precision ≥ 95 % at recall ≥ 90 %."""
    lines = []
    for family in families:
        zoos = decisions[HELD_OUT].get(family, [])
        if not zoos:
            continue
        misses = []
        for split in GOAL_SPLITS:
            values = [z["splits"][split] for z in zoos if split in z["splits"]]
            if values and statistics.fmean(values) < 0.95:
                misses.append(f"{split} {100 * statistics.fmean(values):.0f} %")
        precision = [
            z["goal_none_precision"] for z in zoos if not math.isnan(z["goal_none_precision"])
        ]
        recall = [z["goal_none_recall"] for z in zoos if not math.isnan(z["goal_none_recall"])]
        if precision and statistics.fmean(precision) < 0.95:
            misses.append(f'"none" precision {100 * statistics.fmean(precision):.0f} %')
        if recall and statistics.fmean(recall) < 0.90:
            misses.append(f'"none" recall {100 * statistics.fmean(recall):.0f} %')
        verdict = "every goal met" if not misses else "not met: " + ", ".join(misses)
        lines.append(f"- {family}: {verdict}.")
    return lines


def separation_constants_table(fits: dict | None) -> list[str]:
    """The separation constants each protocol fitted: how much they move between fits."""
    if not fits:
        return []
    rows = []
    keys = (
        "weights_between",
        "weights_far",
        "hub_max",
        "spectra_floor",
        "spectra_margin",
        "spectra_near",
    )
    fitted = [("every zoo (shipped)", fits["shipped"])]
    fitted += [(f"without {f}", c) for f, c in fits["by_family"].items()]
    fitted += [(f"without seed {s}", c) for s, c in fits["by_seed"].items()]
    for name, calibration in fitted:
        constants = calibration["auto"].get("separation") or {}
        rows.append(
            [name, *[str(constants.get(k, "–")) for k in keys], str(constants.get("scale", "–"))]
        )
    return _table(["fitted on", *keys, "confidence scale"], rows)


def detector_lofo_section(report: dict | None) -> list[str]:
    """The universal detector's leave-one-family-out figures (``run.train_universal_detector``)."""
    if not report or not report.get("leave_one_family_out"):
        return []
    rows = []
    for family, metrics in report["leave_one_family_out"].items():
        overall = metrics.get("overall", metrics)
        splits = metrics.get("splits", {})

        def pct(value) -> str:
            return "–" if value is None or value != value else f"{100 * value:.0f}"

        cells = [pct((splits.get(s) or {}).get("accuracy")) for s in GOAL_SPLITS]
        per_split = [v["accuracy"] for v in splits.values() if v.get("queries")]
        every = statistics.fmean(per_split) if per_split else None
        rows.append(
            [
                family,
                *cells,
                pct(every),
                pct(overall.get("top1")),
                f"{pct(overall.get('none_precision'))} / {pct(overall.get('none_recall'))}",
            ]
        )
    record = report.get("record") or {}
    return [
        "### The universal detector, leave one family out",
        "",
        "One checkpoint for every architecture (`app/engine/detectors/universal.safetensors`, "
        "trained on every family's zoos). Each row below is a detector trained on the other "
        "families' zoos only and judged on that family's zoos, all seeds pooled (\"all "
        'splits": the mean over split cells, as above; "none" P / R over all queries). '
        f"Shipped checkpoint: {record.get('queries', '?')} training queries, "
        f"{record.get('epochs', '?')} epochs, {record.get('seconds', '?')} s.",
        "",
        *_table(["held-out family", *GOAL_SPLITS, "all splits", "top-1", "none P / R"], rows),
        "",
    ]


def held_out_section(
    decisions: dict | None, fits: dict | None, detector_report: dict | None, families: list[str]
) -> list[str]:
    """The figures a user with a new architecture gets: ``auto`` fitted without the family."""
    if decisions is None:
        return []
    lines = [
        "## Decisions held out: a family never seen (leave one family out)",
        "",
        '`auto`\'s answer, "the parent is X" or "none", judged as an auditor would: decision '
        'accuracy is the share of queries answered right (the true parent named, or "none" '
        "where no candidate is an ancestor: `orphans`, children of an unrelated root; `cousins`, "
        "a child among its parent's siblings; `siblings`, a child among its own siblings). "
        'Top-1 is over the queries with a parent. "none" P / R (goal) is the goal\'s: '
        "`orphans` and `cousins` against the four goal splits; (all) counts every split, "
        '`siblings` among the right "none"s and every parent-bearing split (`distilled` and '
        '`kinship` included) among the wrong ones. Mean ± std over seeds; "all splits" is '
        "the mean over split cells.",
        "",
        "- in-family: every constant fitted on the other seeds' zoos of every family (this "
        "family's architecture seen, its reported models never);",
        "- leave-one-family-out: every constant (components, noises, margin threshold, "
        "separation constants, Taylor α) fitted on the other families' zoos only.",
        "",
    ]
    if not held_out(fits, HELD_OUT):
        lines += [
            "_No fit held a family out in this run (one family, or no `--calibrate`): both rows "
            "use the shipped constants._",
            "",
        ]
    lines += decision_table(decisions, families) + [
        "",
        "Against the goals (leave one family out):",
        "",
    ]
    lines += goal_lines(decisions, families) + [""]
    constants = separation_constants_table(fits)
    if constants:
        lines += [
            "Separation constants per fit (dimensionless; `app/engine/separation.py`):",
            "",
            *constants,
            "",
        ]
    lines += detector_lofo_section(detector_report)
    return lines


def render(
    summary: dict,
    results: list[dict],
    calibration: dict,
    *,
    command: str,
    plot_name: str,
    wall_seconds: float,
    notes: str = "",
    scale: dict | None = None,
    decisions: dict | None = None,
    fits: dict | None = None,
    detector_report: dict | None = None,
) -> str:
    """The whole ``docs/benchmarks.md`` (``summary`` is ``summarize(results, calibration)``)."""
    first = results[0]
    build = sum(r.get("build_seconds") or 0 for r in results)
    scoring = sum(r["score_seconds"] for r in results)
    queries = {s: len(q) for s, q in first["splits"].items()}
    lines = [
        "# Benchmarks",
        "",
        "Regenerate from scratch (zoos, calibration, scores, this page and its plot) with "
        f"`make bench`, which removes the old zoos and runs `{command}`.",
        f"Measured on {date.today().isoformat()}: {machine(first['device'])}. "
        + (
            f"This run took {wall_seconds / 60:.1f} min in all ({build / 60:.1f} min training "
            f"zoos, {scoring / 60:.1f} min scoring, for the reported zoos)."
            if wall_seconds >= scoring
            else f"This page was rendered from stored scores in {wall_seconds:.0f} s; training "
            f"the reported zoos took {build / 60:.1f} min and scoring them {scoring / 60:.1f} min "
            "(process time of each zoo, summed)."
        ),
        "",
        "## Protocol",
        "",
        f"- Families: {', '.join(f'`{f}` {FAMILY_TITLES.get(f, f)}' for f in summary['families'])}"
        f"; zoo size `{first['size']}`; reported seeds {summary['seeds']}; "
        f"{first['num_probes']} probe inputs.",
        "- Zoo protocol and split definitions: `app/bench/zoo.py` (each zoo's `manifest.json` "
        "records every model's parent, generation, data, learning rate, steps, seed and "
        "regulariser). Queries per zoo: " + ", ".join(f"{s} {n}" for s, n in queries.items()) + ".",
        "- Top-1 is the paper's metric: the highest-scoring candidate, right or wrong. On the "
        "`orphans` and `cousins` splits (the true parent is not a candidate) the cell is "
        'instead the share of queries the method answers "no parent" with its calibrated '
        "threshold.",
        "- Held out: every constant (`auto`'s components, noise, threshold and separation "
        'constants, the Taylor α, each method\'s "none" threshold) is fitted on other zoos '
        "than the one it is reported on: in the per-family tables, on the other seeds' zoos "
        "of every family (leave one seed out); in the held-out section, on the other families' "
        "zoos only (leave one family out). The shipped `calibration.json` is fitted on every "
        "zoo and never reported.",
        "",
        *held_out_section(decisions, fits, detector_report, summary["families"]),
        f"![Top-1 by method and split]({plot_name})",
        "",
    ]
    for family in summary["families"]:
        lines += [f"## Top-1 accuracy (%), {FAMILY_TITLES.get(family, family)}", ""]
        lines += accuracy_table(summary, family) + [""]
    lines += [
        '## Open set: precision / recall (%) of "no parent"',
        "",
        'Over all queries of a zoo: "none" is right for the orphans and cousins and wrong for '
        "every other query. Single methods use the margin threshold fitted without the zoo's "
        "seed; `auto` uses its decision (the engine's).",
        "",
        *open_set_table(summary),
        "",
        "## Generations: finding ancestor G_i of G_j, by gap j − i",
        "",
        *gap_table(summary, [AUTO, "l1", "cka", "lin-l1", "taylor-l1", "weight-l2"]),
        "",
        "## The Taylor scale α (mean top-1 over splits)",
        "",
        "The reference code uses α = 0.01; α = 1 is the plain first-order expansion.",
        "",
        *alpha_table(summary, calibration),
        "",
        "## Beside the paper",
        "",
        "The paper's numbers (Table 1 averaged over FMNIST, EMNIST, CIFAR10 and SVHN; 5-shot and "
        "imbalanced CIFAR10; Tables 2 and 3) are on ResNet-18 and FC networks trained on real "
        'data sets; ours are on the small zoos above. Their "l1 with approx" is our '
        "`taylor-l1`.",
        "",
        *paper_table(summary),
        "",
        "## Cost per (parent, child) pair",
        "",
        f"Mean wall time over {TIMING_PAIRS} pairs with cold caches (the method computes "
        "everything it needs: weights into the network, forward, JVP or VJP), and the peak "
        "extra memory: resident set sampled every millisecond on a CPU (≈ 0 for models this "
        "small), allocator peak on a GPU. `auto` runs all its components on the pair.",
        "",
        *timing_table(summary),
        "",
        *scale_table(scale),
        "## Computed findings",
        "",
        *findings(summary),
        "",
        NOTES_MARKER,
        notes.strip(),
        "",
    ]
    return "\n".join(lines)
