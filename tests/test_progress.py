"""Progress of ``lineage zoo build`` and ``lineage bench``: ``progress(done, total)`` from 0 to the
total, never backwards; and on a pipe the command line draws no bar, only its log lines.

One tiny MLP zoo is built for the module (a few seconds); the benchmark scores it with a few
cheap methods.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.bench import zoo as zoo_module
from app.bench.run import run_bench
from app.bench.zoo import RECIPES, SIZES, build_zoo, make_splits, zoo_counts
from app.cli import _progress_bar, cli

BAR_CHARACTERS = ("━", "\x1b[")  # rich's bar, and any terminal escape
METHODS = ["l2"]  # plus what ``auto`` needs: pairwise methods only, fast on a tiny zoo


def _assert_counts_up(calls: list[tuple[int, int]], total: int) -> None:
    """Calls run from (0, total) to (total, total): one total, done never going back."""
    assert calls, "progress was never called"
    assert {t for _, t in calls} == {total}
    done = [d for d, _ in calls]
    assert done[0] == 0 and done[-1] == total
    assert all(a <= b for a, b in zip(done, done[1:], strict=False))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict, list[tuple[int, int]]]:
    """(benchmark folder, manifest, progress calls) of a tiny MLP zoo built as its ``mlp-seed0``."""
    root = tmp_path_factory.mktemp("bench")
    calls: list[tuple[int, int]] = []
    manifest = build_zoo("mlp", root / "mlp-seed0", 0, "tiny", progress=lambda *c: calls.append(c))
    return root, manifest, calls


def test_build_zoo_counts_the_models_it_writes(built):
    _, manifest, calls = built
    _assert_counts_up(calls, len(manifest["models"]))
    assert len(calls) == len(manifest["models"]) + 1  # 0, then one per model written


@pytest.mark.parametrize("family", sorted(RECIPES))
@pytest.mark.parametrize("size", sorted(SIZES))
def test_zoo_counts_are_what_a_build_trains_and_splits(monkeypatch, family, size):
    """``zoo_counts`` against ``_Builder.build`` run with training and saving left out."""

    def fit(self, name, parent, role, generation, schedule, *, data=None, **_):
        data = data or {"task": self.new_task()}
        self.add(
            name, None, {"parent": parent, "role": role, "generation": generation, "data": data}
        )

    def add(self, name, state, record):
        self.states[name], self.models[name] = state, record

    monkeypatch.setattr(zoo_module._Builder, "fit", fit)
    monkeypatch.setattr(zoo_module._Builder, "add", add)
    monkeypatch.setattr(zoo_module, "permute", lambda *_: None)
    monkeypatch.setattr(zoo_module, "initial_state", lambda *_: None)
    builder = zoo_module._Builder(family, Path("unused"), 0, 1.0, lambda _: None)
    num_parents, grid, _ = SIZES[size]
    recipe = RECIPES[family]
    builder.build(num_parents, recipe.small_children if grid == "small" else recipe.children)
    splits = make_splits({"models": builder.models})
    queries = sum(len(q) for q in splits.values())
    assert zoo_counts(family, size) == (len(builder.models), queries)


def test_run_bench_counts_models_built_and_queries_scored(built):
    """Seed 0 is built already (its queries only); seed 1 is built by the benchmark."""
    root, manifest, _ = built
    calls: list[tuple[int, int]] = []
    lines: list[str] = []
    run_bench(
        root,
        families=["mlp"],
        seeds=2,
        size="tiny",
        methods=METHODS,
        log=lines.append,
        progress=lambda *c: calls.append(c),
    )
    models, queries = zoo_counts("mlp", "tiny")
    assert queries == sum(len(q) for q in manifest["splits"].values())
    _assert_counts_up(calls, queries + models + queries)
    assert any(line.startswith("mlp seed 1: root") for line in lines)  # the log is kept


def test_cli_in_a_pipe_prints_log_lines_and_no_bar(built, tmp_path, monkeypatch):
    root, _, _ = built
    runner = CliRunner()
    bench = runner.invoke(cli, ["bench", str(root / "mlp-seed0"), "--methods", ",".join(METHODS)])
    assert bench.exit_code == 0, bench.output
    assert "mlp seed 0: standard" in bench.stderr
    assert not any(c in bench.stderr + bench.stdout for c in BAR_CHARACTERS)

    # ``zoo build`` on a stand-in for the training (the wiring, not the models, is under test).
    def fake_build(family, out, seed, size, log, progress=None):
        for done in range(4):
            log(f"{family} seed {seed}: model {done}")
            progress(done, 3)
        return {"models": {}, "splits": {}, "build_seconds": 0.0}

    monkeypatch.setattr(zoo_module, "build_zoo", fake_build)
    out = tmp_path / "zoo"
    built_zoo = runner.invoke(cli, ["zoo", "build", "mlp", "--out", str(out), "--size", "tiny"])
    assert built_zoo.exit_code == 0, built_zoo.output
    assert "mlp seed 0: model 3" in built_zoo.stderr
    assert not any(c in built_zoo.stderr + built_zoo.stdout for c in BAR_CHARACTERS)
    quiet = runner.invoke(cli, ["zoo", "build", "mlp", "--out", str(out), "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_log_lines_print_through_the_bar(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with _progress_bar("working") as bar:
        bar(1, 2)
        bar.log("a [bold]log[/bold] line")
        bar(2, 2)
    assert "a [bold]log[/bold] line" in terminal.getvalue()  # printed as is, not as markup
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    with _progress_bar("working", quiet=True) as bar:
        bar(1, 2)
        bar.log("not shown")
    assert quiet.getvalue() == ""
