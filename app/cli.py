"""The ``lineage`` command line.

Every engine error (``LineageError``) becomes one line on stderr and exit code 2; nothing prints a
traceback for bad input.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from typer.core import TyperGroup

from app.engine.errors import InvalidArgument, LineageError

cli = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find which registered model a neural network was fine-tuned from, from its weights.",
)

EXIT_BAD_INPUT = 2


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidArgument(f"device {name!r} asked for but CUDA is not available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise InvalidArgument(f"unknown device {name!r}") from None


def _format_ranking(ranking) -> str:
    decision = ranking.decision
    verdict = decision.parent if decision.parent is not None else "none (no parent stands out)"
    lines = [
        f"child:    {ranking.child}",
        f"parent:   {verdict}",
        f"          confidence {decision.confidence:.3f}, method {decision.method}, "
        f"margin {decision.margin:.3f}{'' if decision.calibrated else ' (uncalibrated)'}",
        "",
    ]
    methods = list(ranking.candidates[0].scores) if ranking.candidates else []
    width = max([len(c.parent) for c in ranking.candidates] + [9])
    header = f"{'rank':>4}  {'candidate':<{width}}  {'score':>10}" + "".join(
        f"  {m:>15}" for m in methods
    )
    lines.append(header)
    for i, cand in enumerate(ranking.candidates, 1):
        row = f"{i:>4}  {cand.parent:<{width}}  {cand.score:>10.4g}"
        row += "".join(f"  {cand.scores[m]:>15.6g}" for m in methods)
        lines.append(row)
    for skipped in ranking.skipped:
        lines.append(f"   -  {skipped.parent:<{width}}  skipped: {skipped.reason}")
    return "\n".join(lines)


class _Bar:
    """What ``_progress_bar`` yields: ``bar(done, total)`` moves the bar; ``bar.log(message)``
    prints a progress line on stderr, through the bar's console while a bar is drawn (so the
    line lands above it), as a plain line otherwise, and nothing when quiet."""

    def __init__(
        self, update: Callable[[int, int], None] | None = None, console=None, *, quiet: bool = False
    ):
        self._update, self._console, self._quiet = update, console, quiet

    def __call__(self, done: int, total: int) -> None:
        if self._update is not None:
            self._update(done, total)

    def log(self, message: str) -> None:
        if self._quiet:
            return
        if self._console is None:
            typer.echo(message, err=True)
        else:
            self._console.print(message, markup=False, highlight=False, emoji=False)


@contextmanager
def _progress_bar(description: str, *, quiet: bool = False) -> Iterator[_Bar]:
    """A ``progress(done, total)`` callback (with its ``log``) that draws a bar on stderr while
    the block runs, when stderr is a terminal (in pipes, logs and tests, or when ``quiet``, it
    draws nothing)."""
    if quiet or not sys.stderr.isatty():
        yield _Bar(quiet=quiet)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    console = Console(stderr=True)
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield _Bar(lambda done, total: bar.update(task, completed=done, total=total), console)


def _local(source: str) -> str:
    """A model argument as a local path: hub IDs (``org/name[@revision]``) are resolved through
    the Hugging Face cache (``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, ``HF_TOKEN``), paths pass."""
    from app.hub.resolve import looks_like_hub_id, resolve_with_settings

    if not looks_like_hub_id(source):
        return source
    from app.core.config import get_settings

    return str(resolve_with_settings(get_settings(), source).folder)


@cli.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def detect(
    ctx: typer.Context,
    child: str = typer.Argument(
        ..., help="Child model: a folder, a .safetensors file or a hub ID (org/name[@rev])."
    ),
    parents: list[str] = typer.Option(
        None, "--parents", "-p", help="Candidate parents (folders, .safetensors files, hub IDs)."
    ),
    method: str = typer.Option(
        "auto", "--method", "-m", help="Scoring method (`lineage methods`)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    probes: int = typer.Option(64, help="Number of probe inputs N."),
    seed: int = typer.Option(0, help="Seed of the probe inputs."),
    taylor_alpha: float = typer.Option(
        None, help="Scale α of the Taylor correction (default: each similarity's calibrated α)."
    ),
) -> None:
    """Rank candidate parents for CHILD, best first, and decide which (if any) is its parent.

    Usage: lineage detect CHILD --parents P1 P2 ... [--method NAME] [--json]
    """
    from app.engine.architectures import open_model
    from app.engine.decision import rank_candidates

    extra = list(ctx.args)
    unknown = [a for a in extra if a.startswith("-")]
    if unknown:
        _fail(f"unknown option {unknown[0]!r}; see `lineage detect --help`")
    candidates = list(parents or []) + extra
    if not candidates:
        _fail("give at least one candidate with --parents P1 P2 ...")
    if probes < 2:
        _fail("--probes must be at least 2")
    try:
        torch_device = _device(device)
        child_model = open_model(_local(child), child)
        parent_models = [open_model(_local(p), p) for p in candidates]
        with _progress_bar(f"scoring {len(parent_models)} candidates") as progress:
            ranking = rank_candidates(
                child_model,
                parent_models,
                method,
                device=torch_device,
                num_probes=probes,
                probe_seed=seed,
                taylor_alpha=taylor_alpha,
                progress=progress,
            )
    except LineageError as exc:
        _fail(exc.message)
    except OSError as exc:
        _fail(f"cannot read {exc.filename or 'a model file'}: {exc.strerror or exc}")
    if as_json:
        typer.echo(json.dumps(ranking.to_dict(), indent=2))
    else:
        typer.echo(_format_ranking(ranking))


@cli.command()
def methods() -> None:
    """List every method `detect --method` accepts: name, kind and what it computes."""
    from app.engine.methods import METHODS

    name_width = max(len(name) for name in METHODS)
    kind_width = max(len(method.kind) for method in METHODS.values())
    for method in METHODS.values():
        typer.echo(f"{method.name:<{name_width}} {method.kind:<{kind_width}} {method.description}")


@cli.command()
def demo(
    out: Path = typer.Option(
        None, help="Where to write the demo zoo (default: a temporary folder)."
    ),
    family: str = typer.Option("cnn", help="cnn or mlp."),
    all_methods: bool = typer.Option(
        False, "--all-methods", help="Also print every method's top-1 accuracy on the zoo."
    ),
) -> None:
    """Build a tiny zoo on this CPU, detect every child's parent and print the table."""
    from app.demo import DEMO_CONFIGS, demo_methods
    from app.demo import demo as run

    if family not in DEMO_CONFIGS:
        _fail(f"unknown family {family!r}; choose one of {', '.join(DEMO_CONFIGS)}")
    methods = demo_methods() if all_methods else None
    if out is None:
        with tempfile.TemporaryDirectory(prefix="lineage-demo-") as tmp:
            typer.echo(run(Path(tmp), family, methods))
    else:
        typer.echo(run(out, family, methods))


@cli.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    demo: bool = typer.Option(
        False, "--demo", help="Fill the service with a demo family through its API, then serve."
    ),
) -> None:
    """Run the API (and, without REDIS_URL, an in-process worker) on the configured database.

    The database is migrated to the newest schema first. Configuration: environment variables
    (see README: DATABASE_URL, REDIS_URL, STORAGE_DIR, ...). LINEAGE_ADMIN_KEY is made an admin
    key; without it, the first start (no key yet) makes an admin key and prints it once.
    """
    import threading

    import uvicorn

    from app.auth import service as auth
    from app.core.db import transaction

    settings, factory = _prepared_database()
    from app.api.app import create_app
    from worker.dispatch import dispatcher_for

    try:
        app = create_app(settings, dispatcher_for(settings))
    except LineageError as exc:  # a LINEAGE_ADMIN_KEY too short to be a secret
        _fail(exc.message)
    with transaction(factory) as session:
        first = None
        if not auth.has_active_keys(session):
            first = auth.create_key(session, "admin", "first admin key")
    if first is not None:
        typer.echo(
            f"no API key existed: made admin key {first[0].id} (shown this once; store it, "
            f"send it as `Authorization: Bearer <key>`, make others with `lineage keys create`):"
            f"\n  {first[1]}\n"
        )
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port))
    if demo:
        from app.service_demo import run_service_demo

        with transaction(factory) as session:
            demo_key, key = auth.create_key(session, "curator", "serve --demo")

        def fill() -> None:
            while not server.started:
                time.sleep(0.1)
            try:
                run_service_demo(f"http://{host}:{port}", Path("var/demo-zoo"), typer.echo, key)
            finally:  # the demo's key lives as long as the demo
                with transaction(factory) as session:
                    auth.revoke_key(session, demo_key.id)

        threading.Thread(target=fill, daemon=True).start()
    server.run()


def _prepared_database():
    """The settings and a session factory on their database, migrated to the newest schema;
    a bad configuration or an unreachable database is one ``error:`` line."""
    from pydantic import ValidationError

    from app.core.config import get_settings
    from app.core.db import make_engine, migrate, session_factory

    try:
        settings = get_settings()
    except ValidationError as exc:
        _fail(f"bad configuration: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}")
    try:
        migrate(settings.database_url)
    except Exception as exc:  # the database is unreachable or refuses us
        _fail(f"cannot prepare the database at {settings.database_url}: {exc}")
    return settings, session_factory(make_engine(settings.database_url))


keys_cli = typer.Typer(
    no_args_is_help=True,
    help="API keys of the service's database: make (shown once), list, revoke.",
)
cli.add_typer(keys_cli, name="keys")


@keys_cli.command("create")
def keys_create(
    role: str = typer.Option(..., "--role", help="reader, submitter, curator or admin."),
    name: str | None = typer.Option(None, "--name", help="Whose key, or what it is for."),
) -> None:
    """Make an API key. The key alone goes to stdout, this once (only its hash is stored)."""
    from app.auth import service as auth
    from app.core.db import transaction

    _settings, factory = _prepared_database()
    try:
        with transaction(factory) as session:
            record, key = auth.create_key(session, role, name)
    except LineageError as exc:
        _fail(exc.message)
    typer.echo(
        f"made {record.role} key {record.id}{f' ({name})' if name else ''}; it is shown this once:",
        err=True,
    )
    typer.echo(key)


@keys_cli.command("list")
def keys_list() -> None:
    """Every key: id, role, name, first characters, made, revoked (never the key)."""
    from app.auth import service as auth
    from app.core.db import transaction

    _settings, factory = _prepared_database()
    with transaction(factory) as session:
        records = auth.list_keys(session)
    typer.echo(f"{'id':>4}  {'role':<9}  {'prefix':<13}  {'made':<19}  {'revoked':<19}  name")
    for r in records:
        revoked = r.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if r.revoked_at else "-"
        typer.echo(
            f"{r.id:>4}  {r.role:<9}  {r.prefix + '…':<13}  "
            f"{r.created_at.strftime('%Y-%m-%d %H:%M:%S'):<19}  {revoked:<19}  {r.name or ''}"
        )


@keys_cli.command("revoke")
def keys_revoke(key_id: int = typer.Argument(..., help="The key's id (see `lineage keys list`).")):
    """Revoke a key: the service refuses it (401) from now on."""
    from app.auth import service as auth
    from app.core.db import transaction

    _settings, factory = _prepared_database()
    try:
        with transaction(factory) as session:
            record = auth.revoke_key(session, key_id)
    except LineageError as exc:
        _fail(exc.message)
    typer.echo(f"revoked {record.role} key {record.id} ({record.prefix}…)")


@cli.command("delete-model")
def delete_model(
    name: str = typer.Argument(..., help="The model's name, e.g. org/name."),
) -> None:
    """Delete a model from the service's database: its edges go (each kept in the graph's log
    with the reason "model deleted"), its queued or running jobs fail with unknown_model (every
    job keeps its row), and its stored files are removed once the deletion has committed."""
    from app.core.db import transaction
    from app.detection import service as detection

    _settings, factory = _prepared_database()
    try:
        with transaction(factory) as session:
            deleted = detection.delete_model(session, name)
    except LineageError as exc:
        _fail(exc.message)
    typer.echo(
        f"deleted model {deleted['name']}: {deleted['edges_removed']} edge(s) removed "
        f"(logged), {deleted['jobs_failed']} unfinished job(s) failed"
    )


@cli.command()
def worker(
    concurrency: int = typer.Option(
        1, help="Processes in this worker; keep 1 per GPU (CUDA_VISIBLE_DEVICES picks the GPU)."
    ),
    loglevel: str = typer.Option("INFO", help="Celery log level."),
) -> None:
    """Run a Celery worker for detection jobs (needs REDIS_URL and DATABASE_URL)."""
    from app.core.config import get_settings

    if not get_settings().redis_url:
        _fail("REDIS_URL is not set: a separate worker needs the Redis broker")
    from worker.tasks import celery

    celery.worker_main(
        ["worker", f"--loglevel={loglevel}", f"--concurrency={concurrency}", "--pool=prefork"]
    )


zoo_cli = typer.Typer(no_args_is_help=True, help="Build model zoos for the benchmark.")
cli.add_typer(zoo_cli, name="zoo")


def _progress(message: str) -> None:
    typer.echo(message, err=True)


@zoo_cli.command("build")
def zoo_build(
    family: str = typer.Argument(..., help="mlp, cnn, gpt2, bert, llama or vit."),
    out: Path = typer.Option(..., "--out", help="Folder to write the zoo into."),
    seed: int = typer.Option(0, help="Seed of the zoo (initialisation, tasks, batches)."),
    size: str = typer.Option("small", help="tiny (tests), small (benchmark) or full."),
    quiet: bool = typer.Option(False, "--quiet", help="Do not print progress."),
) -> None:
    """Train a zoo of FAMILY on this CPU and write its models and manifest.json to --out."""
    from app.bench.zoo import build_zoo

    if out.exists() and not out.is_dir():
        _fail(f"--out {out} exists and is not a folder")
    try:
        with _progress_bar(f"training the {family} zoo", quiet=quiet) as bar:
            manifest = build_zoo(family, out, seed, size, bar.log, bar)
    except LineageError as exc:
        _fail(exc.message)
    queries = sum(len(q) for q in manifest["splits"].values())
    typer.echo(
        f"{len(manifest['models'])} models, {queries} queries in {len(manifest['splits'])} splits, "
        f"built in {manifest['build_seconds']} s: {out / 'manifest.json'}"
    )


def _split_names(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v for value in values for v in value.split(",") if v]


class _BenchGroup(TyperGroup):
    """``lineage bench ZOO ...`` is ``lineage bench run ZOO ...``: the accuracy benchmark keeps
    its short form beside ``lineage bench speed`` (a zoo folder named ``speed`` needs ``run``)."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


bench_cli = typer.Typer(
    cls=_BenchGroup,
    no_args_is_help=True,
    help="Benchmarks: accuracy (lineage bench ZOO, short for lineage bench run ZOO) and speed "
    "(lineage bench speed).",
)
cli.add_typer(bench_cli, name="bench")


@bench_cli.command("run")
def bench(
    zoo: Path = typer.Argument(
        ..., help="A zoo folder, or a benchmark folder holding one zoo per family and seed."
    ),
    methods: list[str] = typer.Option(
        None, "--methods", help="Methods to score (repeat or comma-separate; default: all)."
    ),
    seeds: int = typer.Option(3, help="Reported zoo seeds 0..K-1 per family."),
    families: list[str] = typer.Option(
        None,
        "--families",
        help="Families (repeat or comma-separate; default: mlp, cnn, gpt2, bert, llama, vit).",
    ),
    size: str = typer.Option("small", help="Zoo size when zoos are built: tiny, small or full."),
    out: Path = typer.Option(None, "--out", help="Write the report here (and its .png plot)."),
    calibrate: bool = typer.Option(
        False,
        "--calibrate",
        help="Fit the engine's constants from the zoos' scores (each reported figure with "
        "constants fitted without its zoo's seed, and without its family), and train the "
        "universal detector.",
    ),
    calibration_out: Path = typer.Option(
        None, help="Where --calibrate writes (default: the engine's calibration.json)."
    ),
    detector_epochs: int = typer.Option(
        None, help="Epochs of detector training with --calibrate (default: the shipped ones')."
    ),
    detectors: Path = typer.Option(
        None,
        "--detectors",
        help="Folder of detector checkpoints: read, and with --calibrate trained into "
        "(default: the shipped app/engine/detectors).",
    ),
    device: str = typer.Option("cpu", help="auto, cpu, cuda or cuda:N."),
    probes: int = typer.Option(64, help="Number of probe inputs N."),
    reuse_scores: bool = typer.Option(
        False, "--reuse-scores", help="Reuse each zoo's results.json when it covers the methods."
    ),
    scale_timing: bool = typer.Option(
        False, "--scale-timing", help="Also time every method on a MiniLM-sized pair (22.7M)."
    ),
    jobs: int = typer.Option(
        1, "--jobs", help="Zoos built and scored at once, each in a one-thread process."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="Do not print progress."),
) -> None:
    """Score every method on every split of the zoos; print (and write) the benchmark report."""
    from app.bench.run import default_calibration_path, run_bench
    from app.bench.zoo import CONFIGS
    from app.engine.detector_inputs import CHECKPOINT_DIR

    if zoo.exists() and not zoo.is_dir():
        _fail(f"{zoo} is not a folder")
    if probes < 2:
        _fail("--probes must be at least 2")
    if detector_epochs is not None and detector_epochs < 1:
        _fail("--detector-epochs must be at least 1")
    if jobs < 1:
        _fail("--jobs must be at least 1")
    command = "lineage bench " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "lineage bench"
    try:
        torch_device = _device(device)
        target = (calibration_out or default_calibration_path()) if calibrate else None
        with _progress_bar("models trained, queries scored", quiet=quiet) as bar:
            report, _ = run_bench(
                zoo,
                families=_split_names(families) or list(CONFIGS),
                seeds=seeds,
                size=size,
                methods=_split_names(methods),
                out=out,
                calibrate_into=target,
                detectors_into=detectors or CHECKPOINT_DIR,
                detector_epochs=detector_epochs,
                device=str(torch_device),
                probes=probes,
                reuse=reuse_scores,
                scale_timing=scale_timing,
                jobs=jobs,
                command=command,
                log=bar.log,
                progress=bar,
            )
    except LineageError as exc:
        _fail(exc.message)
    except OSError as exc:
        _fail(f"cannot write {exc.filename or 'a file'}: {exc.strerror or exc}")
    typer.echo(report if out is None else f"report written to {out}")


def _int_names(values: list[str] | None, option: str) -> list[int] | None:
    names = _split_names(values)
    if names is None:
        return None
    try:
        return [int(v.replace("_", "")) for v in names]
    except ValueError:
        _fail(f"{option} takes whole numbers, e.g. 10,100,1000")


@bench_cli.command("speed")
def bench_speed(
    sizes: list[str] = typer.Option(
        None,
        "--sizes",
        help="Model sizes timed per pair (comma-separate; default: mlp, bert-base, gpt2-small, "
        "llama-1b; none: --sizes '').",
    ),
    batch_sizes: list[str] = typer.Option(
        None,
        "--batch-sizes",
        help="Sizes timed batched against one by one (default: mlp, bert-base).",
    ),
    candidates: int = typer.Option(16, help="Candidates of the batched section."),
    catalogs: list[str] = typer.Option(
        None, "--catalogs", help="Catalog sizes of one job (default: 10,100,1000,10000)."
    ),
    shortlist: int = typer.Option(
        16, "--shortlist", help="Shortlist size K of the catalog section."
    ),
    catalog_size: str = typer.Option(
        "mlp",
        "--catalog-size",
        help="Model size of the catalog section's family (mlp, bert-base, gpt2-small, "
        "llama-1b); its real models are registered once, the rest of each catalog synthetic.",
    ),
    off_up_to: int = typer.Option(
        1000, help="Largest catalog also timed with the shortlist off (every model scored)."
    ),
    repeats: int = typer.Option(3, help="Timed runs per row (median), after a warm-up."),
    device: str = typer.Option("cpu", help="auto, cpu, cuda or cuda:N."),
    out: Path = typer.Option(None, "--out", help="Also write the report (markdown) here."),
    quiet: bool = typer.Option(False, "--quiet", help="Do not print progress."),
) -> None:
    """Time detection: per pair and method, batched against one by one, and one job against
    catalogs of growing size, with peak memory; prints a markdown report naming the machine."""
    from app.bench.speed import SIZES, run_speed

    def chosen(values, default):
        if values is None:
            return default
        return _split_names(values) or []

    argv = sys.argv[1:]
    command = (
        "lineage " + " ".join(argv) if argv[:2] == ["bench", "speed"] else "lineage bench speed"
    )
    try:
        torch_device = _device(device)
        with _progress_bar("timing", quiet=quiet) as bar:
            report = run_speed(
                sizes=chosen(sizes, SIZES),
                batch_sizes=chosen(batch_sizes, ["mlp", "bert-base"]),
                candidates=candidates,
                catalogs=_int_names(catalogs, "--catalogs")
                if catalogs is not None
                else [10, 100, 1000, 10000],
                shortlist_size=shortlist,
                off_up_to=off_up_to,
                repeats=repeats,
                device=str(torch_device),
                log=bar.log,
                command=command,
                catalog_size=catalog_size,
            )
        if out is not None:
            out.write_text(report)
    except LineageError as exc:
        _fail(exc.message)
    except OSError as exc:
        _fail(f"cannot write {exc.filename or 'a file'}: {exc.strerror or exc}")
    typer.echo(report)


@cli.command("train-detector")
def train_detector_command(
    zoos: list[Path] = typer.Argument(
        ..., help="Zoo folders of one family (`lineage zoo build`); the last is held out."
    ),
    out: Path = typer.Option(..., "--out", help="Checkpoint to write (.safetensors)."),
    variant: str = typer.Option("ours", help="ours or paper."),
    seed: int = typer.Option(0, help="Seed of the splits, the initialisation and the batches."),
    device: str = typer.Option("cpu", help="auto, cpu, cuda or cuda:N."),
    probes: int = typer.Option(64, help="Number of probe inputs N."),
    evaluate: bool = typer.Option(
        True, "--evaluate/--no-evaluate", help="Measure held-out child and parent splits first."
    ),
    epochs: int = typer.Option(None, help="Training epochs (default: 20)."),
    quiet: bool = typer.Option(False, "--quiet", help="Do not print progress."),
) -> None:
    """Train the Lineage Detector on zoos; report seen- and unseen-parent accuracy; save it.

    Usage: lineage train-detector ZOO [ZOO ...] --out PATH [--variant ours|paper]
    """
    from app.bench.detector import train_on_zoos
    from app.engine.detector import VARIANTS

    if variant not in VARIANTS:
        _fail(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if epochs is not None and epochs < 1:
        _fail("--epochs must be at least 1")
    missing = [z for z in zoos if not (z / "manifest.json").is_file()]
    if missing:
        _fail(f"{missing[0]} is not a zoo (no manifest.json); build one with `lineage zoo build`")
    if out.suffix != ".safetensors":
        _fail(f"--out {out}: a detector checkpoint is a .safetensors file")
    if probes < 2:
        _fail("--probes must be at least 2")
    try:
        record = train_on_zoos(
            list(zoos),
            out,
            variant=variant,
            seed=seed,
            device=_device(device),
            num_probes=probes,
            evaluate=evaluate,
            epochs=epochs,
            log=(lambda _: None) if quiet else _progress,
        )
    except LineageError as exc:
        _fail(exc.message)
    except OSError as exc:
        _fail(f"cannot write {exc.filename or 'a file'}: {exc.strerror or exc}")
    typer.echo(format_record(record))
    typer.echo(f"checkpoint written to {out}")


def format_record(record: dict) -> str:
    """The evaluation of a detector training run as a small table."""

    def pct(value) -> str:
        return "–" if value is None else f"{100 * value:.1f}"

    lines = [
        f"{record['variant']} detector, {record['family']}: {record['examples']} examples "
        f"from {len(record['trained_on'])} zoo(s), {record['seconds']} s",
        f"{'held out':<32} {'queries':>7} {'top-1 %':>8} {'exact %':>8} "
        f"{'none P %':>9} {'none R %':>9}",
    ]
    for name, result in record["evaluation"].items():
        lines.append(
            f"{name:<32} {result['queries']:>7} {pct(result['top1']):>8} "
            f"{pct(result['accuracy']):>8} {pct(result['none_precision']):>9} "
            f"{pct(result['none_recall']):>9}"
        )
    return "\n".join(lines)


def main() -> None:
    """Entry point of the ``lineage`` script."""
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
