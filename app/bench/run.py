"""``lineage bench``: build what is missing, score, calibrate held out, write the report.

Layout of a benchmark folder ``ROOT``: one zoo per family and seed, ``ROOT/{family}-seed{s}``,
each with its ``manifest.json`` and, once scored, its ``results.json``; the held-out fits in
``FITS`` (``protocol``), the MiniLM-sized timing in ``scale-timing.json``.

Progress is counted in the units where the time goes: each model trained for a zoo that is
missing, and each query scored (a query reused from ``results.json`` counts as scored).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from app.bench.calibrate import AUTO_POOL
from app.bench.evaluate import evaluate_zoo, time_at_scale
from app.bench.protocol import calibration_for, decision_summary, fit_held_out
from app.bench.report import NOTES_MARKER, plot, render, summarize
from app.bench.zoo import CONFIGS, MANIFEST, build_zoo, read_manifest, zoo_counts
from app.engine.calibration import load_calibration
from app.engine.decision import DIRECTION, Progress
from app.engine.detector_inputs import CHECKPOINT_DIR
from app.engine.errors import InvalidArgument
from app.engine.methods import AUTO, METHODS, PAIRWISE_KINDS, MethodKind, method_names

RESULTS = "results.json"
FITS = "fits.json"  # the held-out protocols' constants (``protocol.fit_held_out``)
# What a zoo is scored with: the trained detectors and every pairwise method. ``auto`` is
# recombined from their stored scores; ``adapter-alignment`` needs LoRA adapter children, which
# the zoos do not hold (scripts/adapter_bench.py measures it).
BENCH_KINDS = (MethodKind.TRAINED, *PAIRWISE_KINDS)


def default_calibration_path() -> Path:
    """The engine's ``calibration.json`` (inside the installed package)."""
    return Path(str(resources.files("app.engine").joinpath("calibration.json")))


def resolve_methods(requested: list[str] | None, calibration: dict, calibrating: bool) -> list[str]:
    """The methods to score: those asked for (default every pairwise method; a trained one only
    when asked for, since the universal detector is evaluated by its own protocol), plus what
    ``auto`` needs; detectors last."""
    benchmarked = method_names(*BENCH_KINDS)
    combined = method_names(MethodKind.COMBINED)
    default = method_names(*PAIRWISE_KINDS)
    names = [m for m in (requested or default) if m not in combined]
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


def _zoo_in_worker(args: tuple) -> tuple[Path, int]:
    """One zoo built (when missing) and scored in a worker process of one thread; the result
    is left in its ``results.json`` (the parent reads it back). Returns (zoo, units done)."""
    import torch

    torch.set_num_threads(1)
    zoo, family, seed, size, methods, calibration, options, reuse = args
    units = _Units(10**12, None)
    _zoo_results(zoo, family, seed, size, methods, calibration, options, reuse, print, units)
    return zoo, units.done


def _zoos_in_parallel(plan, size, methods, calibration, options, reuse, jobs, log, units):
    """Build and score the zoos of ``plan`` in ``jobs`` processes of one thread each (tiny
    models use two cores better as two processes than as two threads of one); results in plan
    order."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    args = [(z, f, s, size, methods, calibration, options, reuse) for z, f, s in plan]
    with ProcessPoolExecutor(jobs) as pool:
        futures = [pool.submit(_zoo_in_worker, a) for a in args]
        for future in as_completed(futures):
            zoo, done = future.result()
            log(f"{zoo.name}: built and scored")
            units.reach(units.done + done)
    return [json.loads((zoo / RESULTS).read_text()) for zoo, _, _ in plan]


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
    jobs: int = 1,
    command: str = "lineage bench",
    log: Callable[[str], None] = lambda _: None,
    progress: Progress | None = None,
) -> tuple[str, dict]:
    """Run the benchmark under ``root`` and return (report markdown, calibration used).

    ``root`` holding a ``manifest.json`` is one zoo, benchmarked alone; otherwise zoos for
    ``families`` × seeds 0..seeds−1 are built there when missing. With ``calibrate_into``, the
    constants are fitted from the zoos' scores under the held-out protocols of
    ``app.bench.protocol`` (``FITS`` in ``root``), the shipped ones (fitted on every zoo) written
    there, and the universal detector trained into ``detectors_into`` (with its leave-one-family-
    out evaluation); without, the fits of an earlier ``--calibrate`` run in ``root`` are reused
    when present. Every reported figure is judged with constants fitted without its zoo: its
    seed (in-family) or its family (leave one family out).
    ``progress(done, total)``, when given, counts the models trained for missing zoos and the
    queries scored: first with 0, last with ``total`` once every zoo is scored. ``jobs`` > 1
    builds and scores that many zoos at once, each in a process of its own.
    """
    started = time.perf_counter()
    unknown = [f for f in families if f not in CONFIGS]
    if unknown:
        raise InvalidArgument(f"unknown family {unknown[0]!r}; choose from {', '.join(CONFIGS)}")
    if seeds < 1:
        raise InvalidArgument("--seeds must be at least 1")
    calibration = load_calibration()
    scored = resolve_methods(methods, calibration, calibrate_into is not None)
    options = {"device": device, "probes": probes, "detector_dir": detectors_into}
    if (root / MANIFEST).is_file():
        manifest = read_manifest(root)
        plan = [(root, manifest["family"], manifest["seed"])]
        size = manifest["size"]
        if calibrate_into is not None:
            raise InvalidArgument("--calibrate needs a benchmark folder, not a single zoo")
    else:
        plan = [(zoo_path(root, f, s), f, s) for f in families for s in range(seeds)]
    building: set[Path] = set()
    units = _Units(sum(_zoo_units(zoo, f, size, building) for zoo, f, _ in plan), progress)
    if jobs > 1 and len(plan) > 1:
        results = _zoos_in_parallel(
            plan, size, scored, calibration, options, reuse, jobs, log, units
        )
    else:
        results = [
            _zoo_results(zoo, f, s, size, scored, calibration, options, reuse, log, units)
            for zoo, f, s in plan
        ]
    units.reach(units.total)
    fits_path = root / FITS if root.is_dir() and not (root / MANIFEST).is_file() else None
    fits = None
    detector_report = None
    if calibrate_into is not None:
        fits = fit_held_out(results, calibration, log)
        calibration = fits["shipped"]
        calibrate_into.write_text(json.dumps(calibration, indent=2) + "\n")
        log(f"calibration written to {calibrate_into}")
        if detectors_into is not None:
            detector_report = train_universal_detector(
                [zoo for zoo, _, _ in plan], detectors_into, options, detector_epochs, log
            )
            fits["detector"] = detector_report
        fits_path.write_text(json.dumps(fits, indent=2) + "\n")
    elif fits_path is not None and fits_path.is_file():
        fits = json.loads(fits_path.read_text())
        detector_report = fits.get("detector")
    scale = None
    scale_path = root / "scale-timing.json"
    if scale_timing:
        log("timing the methods on a MiniLM-sized pair")
        folder = root / "scale-pair"
        scale = time_at_scale(folder, scored, calibration, device, probes)
        scale_path.write_text(json.dumps(scale, indent=2) + "\n")
    elif reuse and scale_path.is_file():  # an earlier run's timing, kept with its scores
        scale = json.loads(scale_path.read_text())
    notes = ""
    plot_name = "benchmarks.png"
    if out is not None:
        if out.is_file() and NOTES_MARKER in out.read_text():
            notes = out.read_text().split(NOTES_MARKER, 1)[1]
        plot_name = out.with_suffix(".png").name
    summary = summarize(results, calibration_for(fits, calibration))
    decisions = decision_summary(results, fits, calibration)
    report = render(
        summary,
        results,
        calibration,
        command=command,
        plot_name=plot_name,
        wall_seconds=time.perf_counter() - started,
        notes=notes,
        scale=scale,
        decisions=decisions,
        fits=fits,
        detector_report=detector_report,
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        plot(summary, out.with_suffix(".png"))
        out.write_text(report)
    return report, calibration


def train_universal_detector(
    zoos: list[Path], into: Path, options: dict, epochs: int | None, log
) -> dict:
    """Train the one detector of every architecture on all ``zoos`` into ``into`` (shipped),
    and evaluate it leave one family out: per family, a detector trained on the other families'
    zoos only, judged on that family's zoos. Returns the evaluation and the training record."""
    from app.bench.universal_detector import leave_one_family_out, train_universal
    from app.engine.universal_detector import CHECKPOINT_NAME

    by_family: dict[str, list[Path]] = {}
    for zoo in zoos:
        by_family.setdefault(read_manifest(zoo)["family"], []).append(zoo)
    # Each zoo's queries are read once, for the shipped fit and the held-out ones alike, on the
    # benchmark's device and with its probes.
    kwargs = {
        "log": log,
        "cache": {},
        "device": options["device"],
        "num_probes": options["probes"],
    } | ({} if epochs is None else {"epochs": epochs})
    log("training the universal detector on every family (shipped checkpoint)")
    record = train_universal(zoos, into / CHECKPOINT_NAME, **kwargs)
    evaluation = {}
    if len(by_family) > 1:
        log("evaluating the universal detector leave one family out")
        evaluation = leave_one_family_out(by_family, by_family, **kwargs)
    return {"record": record, "leave_one_family_out": evaluation}
