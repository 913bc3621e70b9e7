"""The demo behind `make run`: its zoo's ground truth and its report."""

from __future__ import annotations

import json

from app.demo import HELD_OUT, NUM_PARENTS, format_rows, run_demo


def test_demo_zoo_and_report(tmp_path):
    rows, top1 = run_demo(tmp_path, "mlp", methods=["weight-l2", "l1"])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    children = {n: e for n, e in manifest["models"].items() if e["role"] != "parent"}
    parents = [n for n, e in manifest["models"].items() if e["role"] == "parent"]
    assert len(parents) == NUM_PARENTS
    assert [r.child for r in rows] == list(children)
    for row in rows:
        declared = children[row.child]["parent"]
        assert row.truth == (None if declared == HELD_OUT else declared)
        assert (tmp_path / row.child / "model.safetensors").is_file()
    with_parent = sum(r.truth is not None for r in rows)
    assert {m: len(h) for m, h in top1.items()} == {"weight-l2": with_parent, "l1": with_parent}
    report = format_rows(rows)
    assert report.splitlines()[-1] == f"{sum(r.correct for r in rows)}/{len(rows)} correct"
