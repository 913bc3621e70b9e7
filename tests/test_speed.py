"""``lineage bench speed``: the report's sections, on the smallest sizes (the figures themselves
live in docs/benchmarks.md, never in assertions)."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from app.bench.speed import read_once
from app.cli import cli
from app.engine.model_files import load_model, save_model
from tests.factories import TINY_MLP_CONFIG, tiny_mlp_state

runner = CliRunner()


def _rows(report: str, heading: str) -> list[list[str]]:
    """The body rows of the table under ``heading``."""
    section = report.split(heading, 1)[1].split("\n\n", 2)[1]
    lines = [line for line in section.splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_speed_report_has_every_section(tmp_path):
    out = tmp_path / "speed.md"
    result = runner.invoke(
        cli,
        [
            "bench", "speed", "--sizes", "mlp", "--batch-sizes", "mlp", "--candidates", "3",
            "--catalogs", "3,6", "--shortlist", "2", "--off-up-to", "3", "--repeats", "1",
            "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = out.read_text()
    assert "lineage bench speed" in report and "cores" in report  # the command and the machine
    pair = _rows(report, "**Per pair**")
    methods = [row[3] for row in pair]
    assert methods[0].startswith("floor")
    assert {"`weight-l2`", "`weight-spectrum`", "`taylor-l2`", "`auto`"} <= set(methods)
    assert all(float(row[4]) > 0 for row in pair)
    batched = _rows(report, "**Batched against one by one, 3 candidates**")
    assert [row[1] for row in batched] == ["`weight-l2`", "`auto`"]
    assert all(row[5] == "yes" for row in batched)  # identical rankings
    catalog = _rows(report, "**One job against a catalog")
    on = [row for row in catalog if row[1].startswith("on")]
    off = [row for row in catalog if row[1] == "off"]
    assert [int(row[0]) for row in on] == [3, 6]
    assert [int(row[2]) for row in on] == [2, 2]  # the shortlist's K, whatever the catalog
    assert int(off[0][2]) == 3  # every model scored with the shortlist off
    assert "not run" in off[1][3]  # above --off-up-to


def test_speed_refuses_bad_options():
    result = runner.invoke(cli, ["bench", "speed", "--sizes", "gpt5"])
    assert result.exit_code == 2
    assert "unknown size 'gpt5'" in result.output
    result = runner.invoke(cli, ["bench", "speed", "--catalogs", "ten"])
    assert result.exit_code == 2
    assert "--catalogs takes whole numbers" in result.output
    assert "Traceback" not in result.output


def test_read_once_reads_every_byte(tmp_path):
    model = load_model(save_model(tmp_path / "m", tiny_mlp_state(0), TINY_MLP_CONFIG))
    expected = sum(t.numel() * t.element_size() for t in tiny_mlp_state(0).values())
    assert read_once([model], block=5) == expected


def test_bench_keeps_its_short_form(tmp_path):
    """``lineage bench ZOO`` is still the accuracy benchmark (``run``)."""
    (tmp_path / "file.txt").write_text("x")
    result = runner.invoke(cli, ["bench", str(tmp_path / "file.txt")])
    assert result.exit_code == 2
    assert re.search(r"is not a folder", result.output)
