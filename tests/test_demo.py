"""The demo behind `make run`: its zoo's ground truth, its answers and its report."""

from __future__ import annotations

import json

from app.demo import HELD_OUT, NUM_PARENTS, format_rows, run_demo


def test_the_demo_answers_every_child_right(tmp_path):
    rows, top1 = run_demo(tmp_path, "cnn", methods=["weight-l2", "lin-l1"])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    children = {n: e for n, e in manifest["models"].items() if e["role"] != "parent"}
    parents = [n for n, e in manifest["models"].items() if e["role"] == "parent"]
    assert len(parents) == NUM_PARENTS
    assert [r.child for r in rows] == list(children)
    for row in rows:
        declared = children[row.child]["parent"]
        assert row.truth == (None if declared == HELD_OUT else declared)
        assert (tmp_path / row.child / "model.safetensors").is_file()
    # What README and `make run` promise: auto names every child's parent, the permuted one
    # included, and answers "none" for the orphans of the held-out parent, each with a
    # confidence above a coin toss.
    assert [(r.child, r.predicted) for r in rows] == [(r.child, r.truth) for r in rows]
    assert {r.child for r in rows if r.truth is None} == {"child-40", "child-41"}
    assert all(0.5 < r.confidence <= 1.0 for r in rows)
    # A plain weight distance is right for every child that kept its parent's weights in
    # place (the permuted child shuffled its blocks' inner channels, but not the residual
    # stream: most of its tensors did not move).
    with_parent = [r.child for r in rows if r.truth is not None]
    misses = {c for c, hit in zip(with_parent, top1["weight-l2"], strict=True) if not hit}
    assert misses <= {"child-00-permuted"}
    assert len(top1["lin-l1"]) == len(with_parent)
    report = format_rows(rows)
    assert report.splitlines()[-1] == f"{len(rows)}/{len(rows)} correct"
