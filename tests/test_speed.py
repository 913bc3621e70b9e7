"""``lineage bench speed``: the report's sections, on the smallest sizes (the figures themselves
live in docs/benchmarks.md, never in assertions)."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from app.bench import speed
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
    assert "**One job against a catalog (`auto`, tiny MLP family)**" in report  # the default
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
    result = runner.invoke(
        cli, ["bench", "speed", "--catalog-size", "gpt5", "--sizes", "", "--batch-sizes", ""]
    )
    assert result.exit_code == 2
    assert "unknown size 'gpt5'" in result.output
    assert "Traceback" not in result.output


def test_catalog_size_chooses_the_family(tmp_path, monkeypatch):
    """``--catalog-size`` builds the catalog's family of that size and names it in the heading;
    the other sections can be left out."""
    small = {"model_type": "lineage-mlp", "sizes": [16, 16, 10], "activation": "relu"}
    monkeypatch.setitem(speed.CONFIGS, "mlp-16", small)
    built = []
    build = speed.build_family

    def spy(root, size, candidates, log):
        built.append(size)
        return build(root, size, candidates, log)

    monkeypatch.setattr(speed, "build_family", spy)
    out = tmp_path / "speed.md"
    result = runner.invoke(
        cli,
        [
            "bench", "speed", "--sizes", "", "--batch-sizes", "", "--catalog-size", "mlp-16",
            "--catalogs", "2", "--shortlist", "1", "--off-up-to", "2", "--repeats", "1",
            "--quiet", "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert built == ["mlp-16"]  # the catalog section's family alone
    report = out.read_text()
    assert "**Per pair**" not in report and "**Batched" not in report
    assert "**One job against a catalog (`auto`, mlp-16 family)**" in report
    rows = _rows(report, "**One job against a catalog")
    assert [(row[0], row[1], row[2]) for row in rows] == [
        ("2", "on (K = 1)", "1"),
        ("2", "off", "2"),
    ]


def test_catalog_grows_one_database(tmp_path, monkeypatch):
    """The real models are registered once, for the first catalog that holds them; each larger
    catalog adds synthetic rows (numbered on) to the same database."""
    from app.registry import service as registry

    parents = []
    ingest = registry.ingest

    def counting(session, settings, source, *, name, candidate, **options):
        if candidate:
            parents.append(name)
        return ingest(session, settings, source, name=name, candidate=candidate, **options)

    monkeypatch.setattr(registry, "ingest", counting)
    kept = tmp_path / "kept.db"

    def remove(folder):  # keep the catalog's database to look at
        if (folder / "lineage.db").exists():
            source = sqlite3.connect(folder / "lineage.db")
            with closing(source) as db, closing(sqlite3.connect(kept)) as copy:
                db.backup(copy)

    monkeypatch.setattr(speed, "_remove", remove)
    rows = speed.catalog(tmp_path / "root", [40, 2, 5], 3, 5, "auto", "cpu", lambda _: None)
    body = [[cell.strip() for cell in line.strip("|").split("|")] for line in rows[2:]]
    assert [(row[0], row[1], row[2]) for row in body] == [
        ("2", "on (K = 3)", "2"),
        ("2", "off", "2"),
        ("5", "on (K = 3)", "3"),
        ("5", "off", "5"),
        ("40", "on (K = 3)", "3"),
        ("40", "off", "40"),
    ]
    assert "not run" in body[-1][3]  # above off_up_to
    assert sorted(parents) == ["p0", "p1", "p2", "p3"]  # the family of K + 1, each once
    with closing(sqlite3.connect(kept)) as db:
        names = [n for (n,) in db.execute("SELECT name FROM models WHERE is_candidate")]
        sketches = {s for (s,) in db.execute("SELECT sketch FROM models WHERE is_candidate")}
    assert sorted(names) == sorted(["p0", "p1", "p2", "p3"] + [f"synthetic-{i}" for i in range(36)])
    assert len(sketches) == 40  # every synthetic sketch moved by its own noise


def test_fill_is_the_same_grown_in_steps():
    """Row i of the synthetic fill depends on i alone: two steps give the rows of one."""
    from app.registry.models import Model

    class Session(list):
        add = list.append

    def row(sketch):
        record = SimpleNamespace(**{c.key: None for c in Model.__table__.columns})
        record.sketch = np.asarray(sketch, dtype="<f4").tobytes()
        return record

    real = [row([0, 1, 2, 3]), row([1, 1, 1, 1])]
    once, steps = Session(), Session()
    speed._fill(once, real, 5)
    speed._fill(steps, real, 2)
    speed._fill(steps, real, 3, start=2)
    assert [(m.name, m.sha256, m.sketch) for m in once] == [
        (m.name, m.sha256, m.sketch) for m in steps
    ]
    assert len({m.sha256 for m in steps}) == len({m.sketch for m in steps}) == 5


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


def test_the_reference_baseline_computes_what_taylor_l2_computes(tmp_path, monkeypatch):
    """The speed section's baseline (the reference's approach, written here) and ``taylor-l2`` in
    both of its timed forms score the same pair alike: the rows time the same quantity."""
    tiny = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 64}
    monkeypatch.setitem(speed.CONFIGS, "gpt2-tiny", tiny)
    child, (parent,) = speed.build_family(tmp_path, "gpt2-tiny", 1, lambda _: None)
    rows = speed.taylor_against_reference(child, parent, 2, "cpu")
    assert len(rows) == 4
    engine, in_a_job, reference, built = (measured.value for _, measured in rows)
    assert engine.candidates[0].score == pytest.approx(reference, rel=1e-4)
    assert in_a_job.candidates[0].score == pytest.approx(reference, rel=1e-4)
    assert built == pytest.approx(reference, rel=1e-6)
    assert all(measured.seconds > 0 for _, measured in rows)
