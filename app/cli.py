"""The ``lineage`` command line.

Every engine error (``LineageError``) becomes one line on stderr and exit code 2; nothing prints a
traceback for bad input.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import typer

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


@cli.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def detect(
    ctx: typer.Context,
    child: str = typer.Argument(..., help="Child model: a folder or a .safetensors file."),
    parents: list[str] = typer.Option(
        None, "--parents", "-p", help="Candidate parents (folders or .safetensors files)."
    ),
    method: str = typer.Option(
        "auto", "--method", "-m", help="Scoring method (`lineage methods`)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    probes: int = typer.Option(64, help="Number of probe inputs N."),
    seed: int = typer.Option(0, help="Seed of the probe inputs."),
    taylor_alpha: float = typer.Option(0.01, help="Scale α of the Taylor correction."),
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
        child_model = open_model(child, child)
        parent_models = [open_model(p, p) for p in candidates]
        ranking = rank_candidates(
            child_model,
            parent_models,
            method,
            device=torch_device,
            num_probes=probes,
            probe_seed=seed,
            taylor_alpha=taylor_alpha,
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
    """List the scoring methods."""
    from app.engine.methods import AUTO, METHODS

    typer.echo(
        f"{AUTO:<16} combined   weight-space + function-space evidence, calibrated (default)"
    )
    for method in METHODS.values():
        typer.echo(f"{method.name:<16} {method.kind:<10} {method.description}")


@cli.command()
def demo(
    out: Path = typer.Option(
        None, help="Where to write the demo zoo (default: a temporary folder)."
    ),
    family: str = typer.Option("mlp", help="mlp or cnn."),
    all_methods: bool = typer.Option(
        False, "--all-methods", help="Also print every method's top-1 accuracy on the zoo."
    ),
) -> None:
    """Build a tiny zoo on this CPU, detect every child's parent and print the table."""
    from app.demo import DEMO_CONFIGS
    from app.demo import demo as run
    from app.engine.methods import method_names

    if family not in DEMO_CONFIGS:
        _fail(f"unknown family {family!r}; choose one of {', '.join(DEMO_CONFIGS)}")
    methods = method_names() if all_methods else None
    if out is None:
        with tempfile.TemporaryDirectory(prefix="lineage-demo-") as tmp:
            typer.echo(run(Path(tmp), family, methods))
    else:
        typer.echo(run(out, family, methods))


def main() -> None:
    """Entry point of the ``lineage`` script."""
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
