"""Score every query of a zoo's splits with every method, and time the methods pair by pair.

The raw result of one zoo is plain JSON (``results.json`` beside the report's inputs): per query,
the candidates, the true answer and each method's score per candidate, plus the Taylor terms
(base similarity and first-order correction) so any scale α can be evaluated afterwards, and the
relative weight distance that ``auto`` needs. Accuracy, ``auto`` and open-set decisions are
computed from these numbers by ``report`` and ``calibrate``; nothing is scored twice.

Timing runs separately on a few (parent, child) pairs per method with cold caches, so a method is
charged for everything it computes (loading the weights into the network, forward passes, JVP or
VJP), not for what another method left in a shared cache.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from app.bench.zoo import read_manifest
from app.engine import universal_detector, weightspace
from app.engine.architectures import open_model
from app.engine.decision import Progress, rank_candidates
from app.engine.detector_inputs import VARIANT_OF, detector_logits, load_detector
from app.engine.methods import AUTO, METHODS, MethodKind, PairContext, network_for
from app.engine.metrics import SIMILARITY_GRADIENTS
from app.engine.model_files import LoadedModel
from app.engine.probes import DEFAULT_NUM_PROBES
from app.engine.separation import MIN_CANDIDATES, SPECTRA, WEIGHTS

TIMING_PAIRS = 4


class PeakMemory:
    """Peak extra memory of a block: CUDA allocator peak on a GPU, else the process's resident
    set sampled every millisecond (the CPU allocator keeps no peak of its own)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes = 0
        self._stop = threading.Event()

    @staticmethod
    def _resident() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self, start: int) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._resident() - start)
            time.sleep(0.001)

    @staticmethod
    def _release_freed_memory() -> None:
        # glibc keeps freed blocks mapped; without trimming, a method running after another
        # reuses them and its peak would not show in the resident set.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._release_freed_memory()
            self._thread = threading.Thread(target=self._sample, args=(self._resident(),))
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            self._stop.set()
            self._thread.join()
        return False


def model_opener(zoo: Path) -> Callable[[str], LoadedModel]:
    """A function from a zoo model's name to the model, each opened once."""
    opened: dict[str, LoadedModel] = {}

    def model(name: str) -> LoadedModel:
        if name not in opened:
            opened[name] = open_model(zoo / name, name)
        return opened[name]

    return model


def _score_query(
    query: dict,
    model: Callable[[str], LoadedModel],
    methods: list[str],
    device: torch.device,
    num_probes: int,
    detector_dir: Path | None = None,
) -> dict:
    child = model(query["child"])
    pairwise = [m for m in methods if METHODS[m].pairwise]
    scores: dict[str, list[float]] = {m: [] for m in methods}
    taylor: dict[str, list[list[float]]] = {s: [] for s in SIMILARITY_GRADIENTS}
    relative = []
    wants_taylor = any(METHODS[m].kind is MethodKind.TAYLOR for m in pairwise)
    contexts = []
    for name in query["candidates"]:
        ctx = PairContext(model(name), child, device, num_probes)
        contexts.append(ctx)
        if wants_taylor:
            # First, so that every taylor-* score below reads these terms (one JVP, shared with
            # lin-*) instead of running a VJP of its own.
            for sim, (base, correction) in ctx.taylor_terms.items():
                taylor[sim].append([base, correction])
        for method in pairwise:
            scores[method].append(METHODS[method].score(ctx))
        relative.append(weightspace.relative_l2_distance(ctx.parent, child))
    none_score = {}
    for method in methods:
        if method == universal_detector.METHOD:  # one checkpoint for every architecture
            path = (
                None if detector_dir is None else detector_dir / universal_detector.CHECKPOINT_NAME
            )
            detector, _ = universal_detector.load_universal(path, device)
            features = [universal_detector.pair_features(ctx) for ctx in contexts]
            logits = universal_detector.universal_logits(detector, features, device)
            probs = torch.softmax(logits.double(), 0).tolist()
            scores[method], none_score[method] = probs[:-1], probs[-1]
        elif METHODS[method].kind is MethodKind.TRAINED:
            model_type = contexts[0].network.config.get("model_type")
            detector, _ = load_detector(model_type, VARIANT_OF[method], device, detector_dir)
            probs = torch.softmax(detector_logits(detector, contexts, device), 0).tolist()
            scores[method], none_score[method] = probs[:-1], probs[-1]
    record = {k: query[k] for k in query}
    candidates = [model(name) for name in query["candidates"]]
    outward = squared = None
    if len(candidates) > 2:
        # One pass gives the outward ratios and the squared distances among [child,
        # candidates...] that auto's separation test reads.
        _, outward, weights = weightspace.weight_pass(candidates, child, outward=True)
        if len(candidates) >= MIN_CANDIDATES:
            squared = {
                WEIGHTS: weights.tolist(),
                SPECTRA: weightspace.spectrum_squared(candidates, child).tolist(),
            }
    record.update(scores=scores, relative_l2=relative, outward=outward, none_score=none_score)
    record["squared"] = squared
    record["model_type"] = (child.config or {}).get("model_type")
    if wants_taylor:
        record["taylor"] = taylor
    return record


def time_methods(
    zoo: Path,
    pairs: list[tuple[str, str]],
    methods: list[str],
    calibration: dict | None,
    device: torch.device,
    num_probes: int,
    detector_dir: Path | None = None,
) -> dict[str, dict[str, float]]:
    """Seconds and peak extra memory (MB) per pair for each method, cold caches, mean over
    ``pairs``. ``auto`` is timed as the engine runs it on one candidate (all its components;
    the direction term, which needs three candidates, adds one pass over their weights per
    query)."""
    timings = {}
    # Networks are built once per architecture and kept (as the service does): not per pair.
    for parent_name, _ in pairs:
        network_for(open_model(zoo / parent_name, parent_name).config, device)
    # One untimed run of everything first: the first call of a library routine (LAPACK, autograd
    # kernels) pays its own set-up, which no pair after it does.
    warm_parent, warm_child = (open_model(zoo / n, n) for n in pairs[0])
    rank_candidates(
        warm_child,
        [warm_parent],
        AUTO,
        device=device,
        num_probes=num_probes,
        calibration=calibration,
    )
    warm = PairContext(warm_parent, warm_child, device, num_probes)
    for method in methods:
        if not METHODS[method].pairwise:
            rank_candidates(
                warm_child,
                [warm_parent],
                method,
                device=device,
                num_probes=num_probes,
                detector_dir=detector_dir,
            )
        else:
            METHODS[method].score(warm)
    del warm, warm_parent, warm_child
    for method in [AUTO, *methods]:
        seconds, peaks = [], []
        for parent_name, child_name in pairs:
            # Fresh models: nothing cached from an earlier method or pair.
            parent = open_model(zoo / parent_name, parent_name)
            child = open_model(zoo / child_name, child_name)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            with PeakMemory(device) as memory:
                started = time.perf_counter()
                if not METHODS[method].pairwise:  # auto and the detectors rank the set
                    rank_candidates(
                        child,
                        [parent],
                        method,
                        device=device,
                        num_probes=num_probes,
                        calibration=calibration,
                        detector_dir=detector_dir,
                    )
                else:
                    METHODS[method].score(PairContext(parent, child, device, num_probes))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds.append(time.perf_counter() - started)
            peaks.append(memory.peak_bytes / 2**20)
            # Free this pair before the next is measured, or its memory would be reused unseen.
            del parent, child
        gc.collect()
        timings[method] = {
            "seconds": sum(seconds) / len(seconds),
            "peak_mb": max(peaks),
            "pairs": len(pairs),
        }
    return timings


def evaluate_zoo(
    zoo: Path,
    methods: list[str],
    calibration: dict | None = None,
    device: torch.device | str = "cpu",
    num_probes: int = DEFAULT_NUM_PROBES,
    log: Callable[[str], None] = lambda _: None,
    detector_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict:
    """Score every split of the zoo with ``methods`` and time them (and ``auto``); return the
    raw results. ``calibration``: the constants ``auto`` is timed with (default: the engine's).
    ``progress(done, total)``, when given, is called with the queries scored so far out of the
    zoo's, after each one."""
    device = torch.device(device)
    manifest = read_manifest(zoo)
    model = model_opener(zoo)
    started = time.perf_counter()
    total = sum(len(queries) for queries in manifest["splits"].values())
    done = 0
    splits = {}
    for split, queries in manifest["splits"].items():
        split_started = time.perf_counter()
        splits[split] = []
        for query in queries:
            splits[split].append(
                _score_query(query, model, methods, device, num_probes, detector_dir)
            )
            done += 1
            if progress is not None:
                progress(done, total)
        log(
            f"{manifest['family']} seed {manifest['seed']}: {split} "
            f"({len(queries)} queries, {time.perf_counter() - split_started:.1f} s)"
        )
    standard = manifest["splits"]["standard"][:TIMING_PAIRS]
    pairs = [(q["candidates"][0], q["child"]) for q in standard]
    timings = time_methods(zoo, pairs, methods, calibration, device, num_probes, detector_dir)
    return {
        "family": manifest["family"],
        "seed": manifest["seed"],
        "size": manifest["size"],
        "zoo": str(zoo),
        "device": str(device),
        "num_probes": num_probes,
        "methods": methods,
        "build_seconds": manifest.get("build_seconds"),
        "score_seconds": round(time.perf_counter() - started, 1),
        "splits": splits,
        "timings": timings,
    }


# The architecture of sentence-transformers/all-MiniLM-L6-v2 (22.7M parameters): a real-size pair
# for the cost table, since the zoos' models are too small for memory to register.
SCALE_CONFIG = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


def time_at_scale(
    folder: Path,
    methods: list[str],
    calibration: dict | None = None,
    device: torch.device | str = "cpu",
    num_probes: int = DEFAULT_NUM_PROBES,
) -> dict:
    """Cost of each method on one MiniLM-sized pair: a seeded random parent and a child that is
    the parent plus small noise (1 % of each tensor's spread), written to ``folder``."""
    from app.engine.model_files import save_model
    from app.engine.training import initial_state, noisy_copy

    parent = initial_state(SCALE_CONFIG, 0)
    child = noisy_copy(parent, 0.01, seed=1)
    save_model(folder / "parent", parent, SCALE_CONFIG)
    save_model(folder / "child", child, SCALE_CONFIG)
    pairs = [("parent", "child")]
    # The detectors are trained per family; the MiniLM-sized pair (BERT) has none.
    methods = [m for m in methods if METHODS[m].pairwise]
    timings = time_methods(folder, pairs, methods, calibration, torch.device(device), num_probes)
    parameters = sum(v.numel() for v in parent.values() if v.is_floating_point())
    return {"model": "MiniLM-L6-H384 architecture", "parameters": parameters, "timings": timings}
