"""``lineage bench``: build what is missing, calibrate on held-out zoos, score, write the report.

Layout of a benchmark folder ``ROOT``: one zoo per family and seed, ``ROOT/{family}-seed{s}``,
each with its ``manifest.json`` and, once scored, its ``results.json``. Reported seeds are
0..K−1; calibration zoos use ``CALIBRATION_SEEDS`` and are never reported.

Progress is counted in the units where the time goes: each model trained for a zoo that is
missing, and each query scored (a query reused from ``results.json`` counts as scored).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from app.bench.calibrate import AUTO_POOL, CALIBRATION_SEEDS, calibrate
from app.bench.detector import train_on_zoos
from app.bench.evaluate import evaluate_zoo, time_at_scale
from app.bench.report import NOTES_MARKER, plot, render, summarize
from app.bench.scoring import decision_right, judged
from app.bench.zoo import CONFIGS, MANIFEST, build_zoo, read_manifest, zoo_counts
from app.engine.calibration import load_calibration
from app.engine.decision import DIRECTION, Progress
from app.engine.detector import VARIANTS
from app.engine.detector_inputs import CHECKPOINT_DIR, load_detector
from app.engine.errors import InvalidArgument
from app.engine.methods import AUTO, METHODS, PAIRWISE_KINDS, MethodKind, method_names

RESULTS = "results.json"
# What a zoo is scored with: the trained detectors and every pairwise method. ``auto`` is
# recombined from their stored scores; ``adapter-alignment`` needs LoRA adapter children, which
# the zoos do not hold (scripts/adapter_bench.py measures it).
BENCH_KINDS = (MethodKind.TRAINED, *PAIRWISE_KINDS)


def default_calibration_path() -> Path:
    """The engine's ``calibration.json`` (inside the installed package)."""
    return Path(str(resources.files("app.engine").joinpath("calibration.json")))


def resolve_methods(requested: list[str] | None, calibration: dict, calibrating: bool) -> list[str]:
    """The methods to score: those asked for (default every method of ``BENCH_KINDS``, the
    detectors included), plus what ``auto`` needs; detectors last."""
    benchmarked = method_names(*BENCH_KINDS)
    combined = method_names(MethodKind.COMBINED)
    names = [m for m in (requested or benchmarked) if m not in combined]
    for name in names:
        if name not in benchmarked:
            why = f"unknown method {name!r}"
            if name in METHODS:
                why = f"{name!r} ({METHODS[name].kind}) is not scored on model zoos"
            raise InvalidArgument(f"{why}; choose from: {', '.join(benchmarked)} (or {AUTO})")
    needed = list(AUTO_POOL) if calibrating else list(calibration["auto"]["noise"])
    needed = [m for m in needed if m != DIRECTION]
    wanted = set(names) | set(needed)
    pairwise = [m for m in method_names(*PAIRWISE_KINDS) if m in wanted]
    return pairwise + [m for m in method_names(MethodKind.TRAINED) if m in wanted]


def shipped_records(families: list[str], directory: Path | None) -> list[dict]:
    """The training records of the checkpoints of ``families`` (shipped, or ``directory``'s)."""
    records = []
    for family in families:
        for variant in VARIANTS:
            _, record = load_detector(CONFIGS[family]["model_type"], variant, "cpu", directory)
            records.append(record)
    return records


def detector_deferrals(cal_results: list[dict], records: list[dict], calibration: dict) -> dict:
    """Architectures where ``auto`` should answer with the detector: those whose ``ours``
    detector, trained on the first calibration zoo, answers the held-out last one (unseen
    parents; "none" for orphans) more often right than ``auto`` does on that zoo. ``auto``'s
    constants were fitted on that zoo too, so the comparison leans towards ``auto``."""
    held_out = CALIBRATION_SEEDS[-1]
    deferrals = {}
    for record in records:
        unseen = record["evaluation"].get("parent split (unseen parents)")
        if record["variant"] != "ours" or unseen is None:
            continue
        result = next(
            r for r in cal_results if r["family"] == record["family"] and r["seed"] == held_out
        )
        hits = []
        for queries in result["splits"].values():
            for query in queries:
                answer = judged(query, AUTO, calibration)
                hits.append(decision_right(query["truth"], answer["none"], answer["correct"]))
        auto_exact = sum(hits) / len(hits)
        if unseen["accuracy"] > auto_exact:
            deferrals[record["model_type"]] = {
                "detector_exact": round(unseen["accuracy"], 4),
                "auto_exact": round(auto_exact, 4),
            }
    return deferrals


def train_detectors(
    root: Path, families: list[str], size: str, into: Path, options: dict, log, epochs=None
) -> list[dict]:
    """Train both detector variants per family on the calibration zoos (never reported), the
    last one held out for the unseen-parent check, and write them to ``into``."""
    records = []
    for family in families:
        zoos = [zoo_path(root, family, seed) for seed in CALIBRATION_SEEDS]
        for zoo, seed in zip(zoos, CALIBRATION_SEEDS, strict=True):
            if not (zoo / MANIFEST).is_file():
                build_zoo(family, zoo, seed, size, log)
        for variant in VARIANTS:
            model_type = CONFIGS[family]["model_type"]
            out = into / f"{model_type}-{variant}.safetensors"
            log(f"training the {variant} detector of {family} into {out}")
            records.append(
                train_on_zoos(
                    zoos,
                    out,
                    variant=variant,
                    device=options["device"],
                    num_probes=options["probes"],
                    epochs=epochs,
                    log=log,
                )
            )
    return records


def zoo_path(root: Path, family: str, seed: int) -> Path:
    """The folder of the zoo of ``family`` and ``seed`` in the benchmark folder ``root``."""
    return root / f"{family}-seed{seed}"


class _Units:
    """Units of work done out of a total fixed up front (models to train, queries to score),
    reported as ``progress(done, total)``: first 0, never backwards, never past the total."""

    def __init__(self, total: int, progress: Progress | None):
        self.done, self.total, self.progress = 0, total, progress
        self._report()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total)

    def reach(self, done: int) -> None:
        done = min(done, self.total)
        if done > self.done:
            self.done = done
            self._report()

    def step(self) -> Progress:
        """``progress(done, total)`` for one step of the work (a zoo's build, or its scoring)
        that advances these units by the step's own done, from where they stand now."""
        start = self.done
        return lambda done, _total: self.reach(start + done)


def _zoo_units(zoo: Path, family: str, size: str, building: set[Path]) -> int:
    """The units of ``zoo``: its queries, and its models when it is still to be built (once,
    however often it is scored)."""
    if (zoo / MANIFEST).is_file():
        return sum(len(queries) for queries in read_manifest(zoo)["splits"].values())
    models, queries = zoo_counts(family, size)
    if zoo in building:
        return queries
    building.add(zoo)
    return models + queries


def _zoo_results(
    zoo: Path,
    family: str,
    seed: int,
    size: str,
    methods: list[str],
    calibration: dict | None,
    options: dict,
    reuse: bool,
    log: Callable[[str], None],
    units: _Units,
) -> dict:
    if not (zoo / MANIFEST).is_file():
        build_zoo(family, zoo, seed, size, log, units.step())
    elif read_manifest(zoo)["size"] != size:
        raise InvalidArgument(f"{zoo} holds a zoo of another size; remove it or pass its --size")
    cached = zoo / RESULTS
    if reuse and cached.is_file():
        result = json.loads(cached.read_text())
        if set(methods) <= set(result["methods"]) and result["num_probes"] == options["probes"]:
            log(f"{zoo.name}: reusing {RESULTS}")
            units.reach(units.done + sum(len(q) for q in result["splits"].values()))
            return result
    result = evaluate_zoo(
        zoo,
        methods,
        calibration,
        options["device"],
        options["probes"],
        log,
        options.get("detector_dir"),
        progress=units.step(),
    )
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(cached)
    return result


def run_bench(
    root: Path,
    *,
    families: list[str],
    seeds: int,
    size: str = "small",
    methods: list[str] | None = None,
    out: Path | None = None,
    calibrate_into: Path | None = None,
    detectors_into: Path | None = CHECKPOINT_DIR,
    detector_epochs: int | None = None,
    device: str = "cpu",
    probes: int = 64,
    reuse: bool = False,
    scale_timing: bool = False,
    command: str = "lineage bench",
    log: Callable[[str], None] = lambda _: None,
    progress: Progress | None = None,
) -> tuple[str, dict]:
    """Run the benchmark under ``root`` and return (report markdown, calibration used).

    ``root`` holding a ``manifest.json`` is one zoo, benchmarked alone; otherwise zoos for
    ``families`` × seeds 0..seeds−1 are built there when missing. With ``calibrate_into``,
    calibration zoos are built and scored too and the fitted constants written there first.
    ``progress(done, total)``, when given, counts the models trained for missing zoos and the
    queries scored, calibration zoos' included: first with 0, last with ``total`` once every
    zoo is scored (fitting the calibration and training detectors advance nothing).
    """
    started = time.perf_counter()
    unknown = [f for f in families if f not in CONFIGS]
    if unknown:
        raise InvalidArgument(f"unknown family {unknown[0]!r}; choose from {', '.join(CONFIGS)}")
    if seeds < 1:
        raise InvalidArgument("--seeds must be at least 1")
    calibration = load_calibration()
    scored = resolve_methods(methods, calibration, calibrate_into is not None)
    trains = any(METHODS[m].kind is MethodKind.TRAINED for m in scored)
    options = {"device": device, "probes": probes, "detector_dir": detectors_into}
    if (root / MANIFEST).is_file():
        manifest = read_manifest(root)
        plan = [(root, manifest["family"], manifest["seed"])]
        size = manifest["size"]
        if calibrate_into is not None:
            raise InvalidArgument("--calibrate needs a benchmark folder, not a single zoo")
    else:
        plan = [(zoo_path(root, f, s), f, s) for f in families for s in range(seeds)]
    pairwise = [m for m in scored if METHODS[m].pairwise]
    cal_plan = []
    if calibrate_into is not None:
        cal_plan = [(zoo_path(root, f, s), f, s) for f in families for s in CALIBRATION_SEEDS]
    building: set[Path] = set()
    units = _Units(
        sum(_zoo_units(zoo, f, size, building) for zoo, f, _ in cal_plan + plan), progress
    )
    detector_records = []
    if calibrate_into is not None:
        cal_results = [
            _zoo_results(zoo, f, s, size, pairwise, None, options, reuse, log, units)
            for zoo, f, s in cal_plan
        ]
        calibration = calibrate(cal_results, calibration, log)
        calibration["auto"].pop("defer_to_detector", None)  # decided anew below, if trained
        calibrate_into.write_text(json.dumps(calibration, indent=2) + "\n")
        log(f"calibration written to {calibrate_into}")
        if detectors_into is not None and trains:
            detector_records = train_detectors(
                root, families, size, detectors_into, options, log, detector_epochs
            )
            calibration["auto"]["defer_to_detector"] = detector_deferrals(
                cal_results, detector_records, calibration
            )
            calibrate_into.write_text(json.dumps(calibration, indent=2) + "\n")
            log(f"auto defers to the detector for: {calibration['auto']['defer_to_detector']}")
    results = [
        _zoo_results(zoo, f, s, size, scored, calibration, options, reuse, log, units)
        for zoo, f, s in plan
    ]
    units.reach(units.total)
    scale = None
    if scale_timing:
        log("timing the methods on a MiniLM-sized pair")
        folder = root / "scale-pair"
        scale = time_at_scale(folder, scored, calibration, device, probes)
        (root / "scale-timing.json").write_text(json.dumps(scale, indent=2) + "\n")
    notes = ""
    plot_name = "benchmarks.png"
    if out is not None:
        if out.is_file() and NOTES_MARKER in out.read_text():
            notes = out.read_text().split(NOTES_MARKER, 1)[1]
        plot_name = out.with_suffix(".png").name
    if not detector_records and trains:
        detector_records = shipped_records(families, detectors_into)
    summary = summarize(results, calibration)
    report = render(
        summary,
        results,
        calibration,
        command=command,
        plot_name=plot_name,
        wall_seconds=time.perf_counter() - started,
        notes=notes,
        scale=scale,
        detector_records=detector_records,
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        plot(summary, out.with_suffix(".png"))
        out.write_text(report)
    return report, calibration
