"""``lineage bench speed``: what detection costs, per pair, per candidate set and per catalog.

Models are built from configs with seeded random weights (no data, nothing downloaded) in a
temporary folder, given their stored statistics as registration gives them, and opened trusted as
a detection job opens them. Each section is a markdown table; every figure is measured in the run
that prints it, on the machine it names:

- **per pair**: seconds and peak memory of each method on one (parent, child) pair of each size,
  from the benchmark's MLP to BERT-base and GPT-2-small-sized ``transformers`` models, and a
  1 B-parameter Llama-style model (bf16, two shards) for the weight-space methods; beside them
  the floor, reading both models' weights once, and the paper's reference approach to the Taylor
  shortcut (``reference_taylor_l2``) on the GPT-2-small pair;
- **batched against one by one**: ``rank_candidates`` over K candidates with ``batched`` on and
  off, the ratio of the two and whether the rankings are identical, beside the floor of reading
  the child's and the K candidates' weights once;
- **catalog**: one detection job, run by the worker's own steps (claim, score, record) on a
  SQLite catalog of 10 … 10,000 models, with the shortlist on and off, on a family of one size
  (``--catalog-size``: the tiny MLP by default). The family that matters (the child's parent and
  its siblings) is registered for real, once, in one database that grows through the catalog
  sizes; the rest of the catalog are copies of those rows whose sketches are moved by seeded
  noise (registering 10,000 models would measure registration, not detection), pointing at the
  real models' files.

Peak memory is the process's resident high-water mark above its resident size when the
measurement starts (Linux ``/proc/self/clear_refs`` resets the mark); weights are read with
positioned reads, so the page cache is not counted.
"""

from __future__ import annotations

import gc
import json
import math
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from app.bench import report
from app.engine.architectures import build_network, open_trusted
from app.engine.decision import rank_candidates
from app.engine.errors import InvalidArgument
from app.engine.model_files import (
    DTYPE_SIZES,
    INDEX_NAME,
    TORCH_DTYPES,
    LoadedModel,
    load_model,
    save_model,
)
from app.engine.stored_outputs import save_outputs
from app.engine.training import initial_state, noisy_copy
from app.engine.weightspace import save_statistics

Log = Callable[[str], None]

CONFIGS: dict[str, dict] = {
    "mlp": {"model_type": "lineage-mlp", "sizes": [64, 64, 64, 10], "activation": "relu"},
    # transformers' defaults for BERT-base: 12 layers, 768-d, vocabulary 30522 (109.5 M)
    "bert-base": {"model_type": "bert"},
    # GPT-2 small: 12 layers, 768-d, vocabulary 50257 (124 M)
    "gpt2-small": {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12},
    # Llama 3.2 1B's shape: 16 layers, 2048-d, SwiGLU 8192, GQA 32/8, vocabulary 128256 (1.24 B)
    "llama-1b": {
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
    },
}
SIZES = list(CONFIGS)
# Sizes scored by weight-space methods only (a CPU pass of every function-space method on a 1 B
# model would take the benchmark's whole budget; see the sub-network in the README).
WEIGHT_ONLY = {"llama-1b"}
# Sizes stored in bf16, as such checkpoints are published, and in two shards.
HALF = {"llama-1b"}
WEIGHT_METHODS = ["weight-l2", "weight-cos", "weight-spectrum"]
PAIR_METHODS = [*WEIGHT_METHODS, "l2", "lin-l2", "taylor-l2", "auto"]


# --- measuring ----------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def _release_free_memory() -> None:
    """Hand the allocator's free pages back to the system (glibc's ``malloc_trim``), so that the
    resident size at a measurement's start is what is in use, and the measurement's own
    allocations raise the high-water mark instead of reusing pages an earlier step left."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_mb: float | None  # resident high-water mark above the start, None where unmeasurable
    value: object = None


def measure(run: Callable[[], object], repeats: int = 1) -> Measured:
    """Median seconds of ``repeats`` calls of ``run`` (each after a garbage collection) and the
    largest peak of resident memory above the resident size at its start."""
    seconds, peaks, value = [], [], None
    for _ in range(repeats):
        gc.collect()
        _release_free_memory()
        resettable = _reset_peak()
        start_kb = _status_kb("VmRSS")
        started = time.perf_counter()
        value = run()
        seconds.append(time.perf_counter() - started)
        peak_kb = _status_kb("VmHWM")
        if resettable and start_kb is not None and peak_kb is not None:
            peaks.append((peak_kb - start_kb) / 1024)
    return Measured(statistics.median(seconds), max(peaks) if peaks else None, value)


def machine(device: str) -> str:
    """The machine, in words (``report.machine``), with torch's threads and the GPU's name."""
    text = f"{report.machine(device)} ({torch.get_num_threads()} threads)"
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(torch.device(device))}"
    return text


# --- models -------------------------------------------------------------------------------------


def _random_state(config: dict, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Seeded random weights in the shapes of ``config``'s network, built on the meta device
    (a 1 B model is never initialised twice): N(0, 0.02²) matrices, ones for norm weights."""
    with torch.device("meta"):
        network = build_network(config, "meta")
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in network.module.state_dict().items():
        if tensor.ndim >= 2:
            state[name] = (0.02 * torch.randn(tensor.shape, generator=generator)).to(dtype)
        else:
            state[name] = torch.ones(tensor.shape, dtype=dtype)
    return state


def _save_sharded(folder: Path, state: dict[str, torch.Tensor], config: dict) -> Path:
    """Two safetensors shards and their index, as large checkpoints are published."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    names = list(state)
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for i, part in enumerate(halves, 1):
        shard = f"model-{i:05d}-of-00002.safetensors"
        save_file({n: state[n].contiguous() for n in part}, str(folder / shard))
        weight_map.update(dict.fromkeys(part, shard))
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@dataclass(frozen=True)
class Stored:
    """A model written by the benchmark: where, and the SHA-256 to open it trusted."""

    folder: Path
    name: str
    sha256: str

    def open(self) -> LoadedModel:
        return open_trusted(self.folder, self.name, self.sha256)


def _store(folder: Path, name: str, state: dict, config: dict, sharded: bool) -> Stored:
    if sharded:
        _save_sharded(folder, state, config)
    else:
        save_model(folder, state, config)
    model = load_model(folder, name, check_finite=False)
    save_statistics(model, folder)  # as registration does
    save_outputs(model, folder)
    return Stored(folder, name, model.sha256)


def build_family(root: Path, size: str, candidates: int, log: Log) -> tuple[Stored, list[Stored]]:
    """A child and ``candidates`` candidates of ``size``: a seeded random root, candidates = the
    root plus 5 % noise each (siblings), the child = the first candidate plus 1 % noise."""
    config = CONFIGS[size]
    half = size in HALF
    log(f"building {candidates + 1} {size} models")
    base = _random_state(config, 0, torch.bfloat16) if half else initial_state(config, 0)
    stored = []

    def same_dtypes(state):  # noise is float32: back to the stored dtype (bf16 stays bf16)
        return {k: v.to(base[k].dtype) for k, v in state.items()}

    for i in range(candidates):
        state = same_dtypes(noisy_copy(base, 0.05, seed=100 + i))
        stored.append(_store(root / f"{size}-p{i}", f"p{i}", state, config, half))
        if i == 0:
            child_state = same_dtypes(noisy_copy(state, 0.01, seed=1))
        del state
    child = _store(root / f"{size}-child", "child", child_state, config, half)
    return child, stored


def read_once(models: Iterable[LoadedModel], block: int = 1 << 22) -> int:
    """Read every tensor's bytes once through the engine's reader, ``block`` elements at a time
    into one reused buffer (the floor of any method that looks at every weight); returns the
    bytes read."""
    total = 0
    buffer = torch.empty(block * max(DTYPE_SIZES.values()), dtype=torch.uint8)
    for model in models:
        for name, info in model.weights.infos.items():
            dtype = TORCH_DTYPES[info.dtype]
            count = block
            target = buffer.view(dtype)
            for start in range(0, info.numel, count):
                stop = min(start + count, info.numel)
                part = model.weights.read_into(name, start, stop, target[: stop - start])
                total += part.numel() * part.element_size()
    return total


# --- the paper's reference approach to the Taylor shortcut --------------------------------------


def reference_taylor_l2(parent, child, x: torch.Tensor, alpha: float) -> float:
    """The reference implementation's approach (``yu-rp/NeuralLineage``, ``approxL2``), written
    here: a parent forward pass that keeps its graph, a child forward pass, one
    ``torch.autograd.grad`` of the l2 similarity's Π w.r.t. the parent's parameters, and a dot
    product with θ_c − θ_p. ``parent``/``child``: ``transformers`` modules; f = last hidden state
    flattened, as the engine compares it."""
    from app.engine.metrics import SIMILARITY_GRADIENTS, l2_similarity

    def features(module):
        return module(x, attention_mask=torch.ones_like(x)).last_hidden_state.flatten(1)

    f_p = features(parent)
    with torch.no_grad():
        f_c = features(child)
    pi = SIMILARITY_GRADIENTS["l2"](f_p.detach() - f_c)
    parameters = list(parent.parameters())
    grads = torch.autograd.grad(f_p, parameters, grad_outputs=pi)
    with torch.no_grad():
        correction = sum(
            (g * (c - p)).sum()
            for g, p, c in zip(grads, parameters, child.parameters(), strict=True)
        )
        return float(l2_similarity(f_p.detach(), f_c)) + alpha * float(correction)


def _reference_run(
    child: Stored, parent: Stored, device: str, build_per_pair: bool = False
) -> Callable[[], float]:
    """A call of the reference's approach on the pair, from the files: both models' weights
    into modules built once beforehand (as the engine's networks are), then the passes. With
    ``build_per_pair``, the modules are built (and initialised) in each call, as the reference's
    own script does for every model it compares (``get_model``: build, then load)."""
    import transformers

    from app.engine.architectures import network_for
    from app.engine.calibration import taylor_alpha
    from app.engine.probes import probe_inputs

    config = json.loads((parent.folder / "config.json").read_text())
    hf = transformers.AutoConfig.for_model(**config)
    x = probe_inputs(network_for(config), device=device)

    def build():
        return transformers.AutoModel.from_config(hf, attn_implementation="eager").to(device).eval()

    modules = [] if build_per_pair else [build(), build()]

    def load(module, stored: Stored):
        weights = stored.open().weights
        module.load_state_dict({n: weights[n].to(device, torch.float32) for n in weights}, False)
        return module

    def run() -> float:
        parent_module, child_module = modules or [build(), build()]
        parent_module, child_module = load(parent_module, parent), load(child_module, child)
        return reference_taylor_l2(parent_module, child_module, x, taylor_alpha("l2"))

    return run


def _in_a_job(child: Stored, parent: Stored, device: str) -> Callable[[], object]:
    """``taylor-l2`` on the pair as one candidate of a job whose child is already open and whose
    f_c is computed (once per job, whatever the number of candidates)."""
    opened = child.open()
    rank_candidates(opened, [parent.open()], "taylor-l2", device=device)  # f_c now cached

    def run():
        return rank_candidates(opened, [parent.open()], "taylor-l2", device=device)

    return run


def taylor_against_reference(
    child: Stored, parent: Stored, repeats: int, device: str
) -> list[tuple[str, Measured]]:
    """``taylor-l2`` as ``lineage detect`` runs it, the same as a job's k-th candidate, and the
    reference's approach, on the same pair, run in turn ``repeats`` times after a warm-up each
    (so that drift in the machine's speed falls on all three alike); medians, largest peaks."""
    runs = {
        "`taylor-l2` (one VJP), a job of this one candidate": _timed_ranking(
            child, [parent], "taylor-l2", device
        ),
        "`taylor-l2`, one more candidate of a job (f_c computed once per job)": _in_a_job(
            child, parent, device
        ),
        "reference approach to `taylor-l2` (autograd, one backward), modules built once": (
            _reference_run(child, parent, device)
        ),
        "reference approach, modules built and initialised per pair as its script does": (
            _reference_run(child, parent, device, build_per_pair=True)
        ),
    }
    for run in runs.values():
        run()  # warm-up
    taken: dict[str, list[Measured]] = {label: [] for label in runs}
    for _ in range(repeats):
        for label, run in runs.items():
            taken[label].append(measure(run))
    return [
        (
            label,
            Measured(
                statistics.median(m.seconds for m in results),
                max((m.peak_mb for m in results if m.peak_mb is not None), default=None),
                results[-1].value,
            ),
        )
        for label, results in taken.items()
    ]


# --- sections -----------------------------------------------------------------------------------


def _mb(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _timed_ranking(child: Stored, parents: list[Stored], method: str, device: str, **options):
    """A call that opens the models afresh (nothing cached from an earlier call) and ranks."""

    def run():
        opened = [p.open() for p in parents]
        return rank_candidates(child.open(), opened, method, device=device, **options)

    return run


def _floor(models: list[Stored]) -> Callable[[], int]:
    return lambda: read_once([m.open() for m in models])


def per_pair(root: Path, sizes: list[str], repeats: int, device: str, log: Log) -> list[str]:
    lines = [
        "| size | parameters | largest tensor | method | s per pair | peak MB |",
        "|---|---|---|---|---|---|",
    ]
    for size in sizes:
        child, (parent,) = build_family(root, size, 1, log)
        lines += _pair_rows(size, child, parent, repeats, device, log)
        for stored in (child, parent):
            _remove(stored.folder)
    return lines


def _pair_rows(
    size: str, child: Stored, parent: Stored, repeats: int, device: str, log: Log
) -> list[str]:
    opened = child.open()
    parameters = opened.num_parameters
    largest = max(i.numel * DTYPE_SIZES[i.dtype] for i in opened.weights.infos.values())
    label = (
        f"{parameters / 1e3:,.1f} k"
        if parameters < 1e6
        else f"{parameters / 1e6:,.1f} M"
        if parameters < 1e9
        else f"{parameters / 1e9:.2f} B"
    )
    stored = {i.dtype for i in opened.weights.infos.values() if i.is_float}
    dtype = f" ({', '.join(sorted(stored)).lower()})"
    methods = WEIGHT_METHODS if size in WEIGHT_ONLY else PAIR_METHODS
    rows = [("floor: read both models' weights once", measure(_floor([child, parent]), repeats))]
    compared = size == "gpt2-small"  # taylor-l2 is timed in turn with the reference's approach
    for method in methods:
        if compared and method == "taylor-l2":
            continue
        log(f"{size}: {method}")
        run = _timed_ranking(child, [parent], method, device)
        run()  # warm-up (lazy imports, the network's cache)
        rows.append((f"`{method}`", measure(run, repeats)))
    if compared:
        log(f"{size}: taylor-l2 and the reference's approach, in turn")
        rows += taylor_against_reference(child, parent, max(repeats, 5), device)
    return [
        f"| {size}{dtype} | {label} | {largest / 2**20:,.1f} MB | {method} | "
        f"{result.seconds:.3f} | {_mb(result.peak_mb)} |"
        for method, result in rows
    ]


def batched(
    root: Path, sizes: list[str], candidates: int, repeats: int, device: str, log: Log
) -> list[str]:
    lines = [
        f"| size | method | one by one, s | batched, s | speed-up | same ranking | "
        f"floor: read child + {candidates} once, s | batched ÷ floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        child, parents = build_family(root, size, candidates, log)
        floor = measure(_floor([child, *parents]), repeats)
        methods = ["weight-l2", "weight-spectrum"] if size in WEIGHT_ONLY else ["weight-l2", "auto"]
        for method in methods:
            results = {}
            for mode in (False, True):
                log(f"{size}: {method}, {'batched' if mode else 'one by one'}")
                run = _timed_ranking(child, parents, method, device, batched=mode)
                run()
                results[mode] = measure(run, repeats)
            one, many = results[False], results[True]
            same = [c.parent for c in one.value.candidates] == [
                c.parent for c in many.value.candidates
            ]
            lines.append(
                f"| {size} | `{method}` | {one.seconds:.3f} | {many.seconds:.3f} | "
                f"{one.seconds / many.seconds:.1f}× | {'yes' if same else 'NO'} | "
                f"{floor.seconds:.3f} | {many.seconds / floor.seconds:.1f}× |"
            )
        for stored in (child, *parents):
            _remove(stored.folder)
    return lines


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def upload(folder: Path, stack: ExitStack):
    """A model folder's files as ``POST /parents`` receives them (``registry.Upload``), each
    opened in ``stack``; hidden folders (the stored statistics) are not files and stay out."""
    from app.registry.service import Upload

    files = sorted(p for p in folder.iterdir() if p.is_file())
    return Upload([(p.name, stack.enter_context(open(p, "rb"))) for p in files])


class HeldJobs:
    """A dispatcher that keeps the jobs handed to it for this process to run step by step."""

    def __init__(self) -> None:
        self.jobs: list[str] = []

    def enqueue(self, job_id: str) -> None:
        self.jobs.append(job_id)

    def close(self) -> None:
        pass


# What the catalog section's heading calls each family.
FAMILY_LABELS = {"mlp": "tiny MLP family"}


def family_label(size: str) -> str:
    return FAMILY_LABELS.get(size, f"{size} family")


def catalog(
    root: Path,
    catalogs: list[int],
    shortlist_size: int,
    off_up_to: int,
    method: str,
    device: str,
    log: Log,
    family_size: str = "mlp",
) -> list[str]:
    """One job's time against catalogs of each size, shortlist on and off (off only up to
    ``off_up_to`` models: scoring grows with the catalog there), on a family of
    ``family_size`` models.

    One database grows through the sizes (taken in increasing order): each size registers the
    real models it holds that the previous ones did not, then adds synthetic rows up to its
    size, so every real model is registered (statistics, sketch, stored files) once. A catalog
    of N holds the first min(N, family) real models and N − family synthetic rows, as if built
    afresh."""
    from app.core.config import Settings
    from app.core.db import make_engine, migrate, session_factory, transaction
    from app.detection import service as detection
    from app.registry import service as registry
    from app.registry import shortlist as shortlists
    from app.registry.models import Model

    catalogs = sorted(catalogs)
    family = min(shortlist_size + 1, max(catalogs))
    child, parents = build_family(root, family_size, family, log)
    lines = [
        f"| catalog | shortlist | candidates scored | first job (index cold), s | "
        f"choose candidates, s | job, s | job ÷ job at {catalogs[0]} |",
        "|---|---|---|---|---|---|---|",
    ]
    folder = root / "catalog"
    url = f"sqlite:///{folder / 'lineage.db'}"
    folder.mkdir(parents=True)
    migrate(url)
    settings = Settings(database_url=url, storage_dir=folder / "storage")
    factory = session_factory(make_engine(url))
    dispatcher = HeldJobs()

    def submit() -> str:
        # the same child every time: its record is reused, each call queues a new job
        with ExitStack() as stack, transaction(factory) as session:
            files = upload(child.folder, stack)
            detection.submit(session, settings, dispatcher, files, name="child", method=method)
        return dispatcher.jobs[-1]

    registered = 0  # real models in the database (the first ones of ``parents``)
    synthetic = 0  # synthetic rows in the database
    first: dict[str, float] = {}
    for size in catalogs:
        real_count = min(size, family)
        if registered < real_count:
            log(f"catalog of {size}: registering {real_count - registered} models")
            with ExitStack() as stack, transaction(factory) as session:
                for stored in parents[registered:real_count]:
                    files = upload(stored.folder, stack)
                    registry.ingest(session, settings, files, name=stored.name, candidate=True)
            registered = real_count
        more = size - real_count - synthetic
        if more > 0:
            log(f"catalog of {size}: adding {more} synthetic rows")
            names = [stored.name for stored in parents[:registered]]
            with transaction(factory) as session:
                real = list(
                    session.query(Model).filter(Model.name.in_(names)).order_by(Model.id).all()
                )
                _fill(session, real, more, start=synthetic)
            synthetic += more

        for label, shortlist in (("on", shortlist_size), ("off", 0)):
            if shortlist == 0 and size > off_up_to:
                lines.append(f"| {size:,} | off | {size:,} | not run (above {off_up_to:,}) | | | |")
                continue
            log(f"catalog of {size}: shortlist {label}")
            submit()  # a warm-up job

            def run(shortlist=shortlist):
                job_id = submit()
                started = time.perf_counter()
                claimed = detection.claim(factory, job_id, shortlist)
                chosen = time.perf_counter() - started
                result = detection.score(claimed, device, lambda _: None)
                detection.record(factory, claimed, result)
                return chosen, len(claimed.catalog), time.perf_counter() - started

            # a worker's first job reads every sketch into its index; later ones only new rows
            shortlists.forget_indexes()
            cold = run()[2]
            chosen, scored, seconds = measure(run).value
            first.setdefault(label, seconds)
            mode = f"on (K = {shortlist_size})" if shortlist else "off"
            lines.append(
                f"| {size:,} | {mode} | {scored:,} | {cold:.3f} | {chosen:.3f} | {seconds:.3f} | "
                f"{seconds / first[label]:.2f}× |"
            )
    _remove(folder)
    for stored in (child, *parents):
        _remove(stored.folder)
    return lines


def _fill(session, real: list, count: int, start: int = 0) -> None:
    """``count`` more catalog rows, ``synthetic-{start}`` on: copies of the real models' rows
    (their files, their architecture) whose sketches are moved by seeded noise the size of the
    real sketches' spread, so the shortlist has to choose among them. Row i's source and noise
    depend on i alone (its own seed), so a catalog grown in steps holds the same rows as one
    filled at once."""
    from app.registry.models import Model

    if count <= 0:
        return
    sketches = np.stack([np.frombuffer(m.sketch, dtype="<f4") for m in real])
    spread = sketches.std(axis=0) + 1e-6
    columns = [
        c.key
        for c in Model.__table__.columns
        if c.key not in {"id", "name", "sha256", "sketch", "created_at"}
    ]
    for i in range(start, start + count):
        source = real[i % len(real)]
        values = {c: getattr(source, c) for c in columns}
        rng = np.random.default_rng((0, i))
        noisy = sketches[i % len(real)] + spread * rng.standard_normal(sketches.shape[1])
        session.add(
            Model(
                **values,
                name=f"synthetic-{i}",
                sha256=f"{i:064x}",
                sketch=noisy.astype("<f4").tobytes(),
            )
        )


def run_speed(
    *,
    sizes: list[str],
    batch_sizes: list[str],
    candidates: int,
    catalogs: list[int],
    shortlist_size: int,
    off_up_to: int,
    repeats: int,
    device: str,
    log: Log,
    command: str = "lineage bench speed",
    catalog_size: str = "mlp",
) -> str:
    """Run the sections asked for and return the report (markdown). ``catalog_size``: the
    family of the catalog section (one of ``SIZES``)."""
    unknown = [s for s in [*sizes, *batch_sizes, catalog_size] if s not in CONFIGS]
    if unknown:
        raise InvalidArgument(f"unknown size {unknown[0]!r}; choose from {', '.join(SIZES)}")
    if candidates < 1 or repeats < 1 or shortlist_size < 1:
        raise InvalidArgument("--candidates, --repeats and --shortlist must be at least 1")
    if any(c < 1 for c in catalogs):
        raise InvalidArgument("catalog sizes must be at least 1")
    started = time.perf_counter()
    parts = [
        f"`{command}` on {machine(device)}; medians of {repeats} after a warm-up.",
    ]
    with tempfile.TemporaryDirectory(prefix="lineage-speed-") as tmp:
        root = Path(tmp)
        if sizes:
            parts += ["", "**Per pair**", "", *per_pair(root, sizes, repeats, device, log)]
        if batch_sizes:
            parts += [
                "",
                f"**Batched against one by one, {candidates} candidates**",
                "",
                *batched(root, batch_sizes, candidates, repeats, device, log),
            ]
        if catalogs:
            parts += [
                "",
                f"**One job against a catalog (`auto`, {family_label(catalog_size)})**",
                "",
                *catalog(
                    root,
                    sorted(catalogs),
                    shortlist_size,
                    off_up_to,
                    "auto",
                    device,
                    log,
                    family_size=catalog_size,
                ),
            ]
    parts += ["", f"(whole run: {math.ceil(time.perf_counter() - started)} s)"]
    return "\n".join(parts) + "\n"
