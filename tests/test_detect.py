"""``lineage detect`` end to end on a zoo the tests trained: the JSON interface and the answers."""

from __future__ import annotations

import json

import pytest

from app.engine.architectures import open_model
from app.engine.decision import rank_candidates
from app.engine.errors import InvalidArgument
from app.engine.methods import METHODS, PAIRWISE_KINDS, MethodKind, method_names


def detect_json(cli, child, parents, *extra) -> dict:
    result = cli("detect", str(child), "--parents", *map(str, parents), "--json", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_json_shape_is_the_documented_interface(mlp_zoo, cli):
    child, truth = mlp_zoo.children["child-0"]
    out = detect_json(cli, child, mlp_zoo.candidates)
    assert out["child"] == str(child)
    assert set(out["decision"]) >= {"parent", "confidence", "method"}
    assert out["decision"]["method"] == "auto"
    assert 0.0 <= out["decision"]["confidence"] <= 1.0
    assert len(out["candidates"]) == len(mlp_zoo.candidates)
    # Names are the arguments as given; candidates best first.
    assert {c["parent"] for c in out["candidates"]} == {str(p) for p in mlp_zoo.candidates}
    scores = [c["score"] for c in out["candidates"]]
    assert scores == sorted(scores, reverse=True)
    for cand in out["candidates"]:
        assert cand["scores"] and all(isinstance(v, float) for v in cand["scores"].values())


@pytest.mark.parametrize("name", ["child-0", "child-5", "child-0-permuted", "child-3-new-head"])
def test_finds_the_true_parent_among_eight(mlp_zoo, cli, name):
    child, truth = mlp_zoo.children[name]
    out = detect_json(cli, child, mlp_zoo.candidates)
    assert out["decision"]["parent"] == str(truth)
    assert out["candidates"][0]["parent"] == str(truth)
    assert out["decision"]["confidence"] > 0.5


def test_orphan_gets_no_parent(mlp_zoo, cli):
    child, truth = mlp_zoo.children["orphan"]
    assert truth is None
    out = detect_json(cli, child, mlp_zoo.candidates)
    assert out["decision"]["parent"] is None
    assert out["decision"]["confidence"] > 0.5


def test_permutation_defeats_plain_weight_distance_but_not_auto(mlp_zoo):
    """The permuted child computes its parent's fine-tune exactly, with scrambled weights."""
    child_path, truth = mlp_zoo.children["child-0-permuted"]
    child = open_model(child_path)
    parents = [open_model(p) for p in mlp_zoo.candidates]
    plain = rank_candidates(child, parents, "weight-l2")
    robust = rank_candidates(child, parents, "weight-spectrum")
    direct = rank_candidates(child, parents, "l1")
    assert robust.candidates[0].parent == str(truth)
    assert direct.candidates[0].parent == str(truth)
    # Plain weight distance sees no relation: the true parent's distance is not clearly smallest.
    distances = {c.parent: -c.score for c in plain.candidates}
    others = [d for p, d in distances.items() if p != str(truth)]
    assert distances[str(truth)] > 0.8 * min(others)


def test_every_method_runs_and_names_a_candidate(mlp_zoo, cli):
    child, truth = mlp_zoo.children["child-0"]
    parents = mlp_zoo.candidates[:3]
    for method in method_names(*PAIRWISE_KINDS):
        out = detect_json(cli, child, parents, "--method", method) if method == "l1" else None
        ranking = rank_candidates(open_model(child), [open_model(p) for p in parents], method)
        assert ranking.decision.parent in {str(p) for p in parents}
        assert ranking.decision.method == method
        assert set(ranking.candidates[0].scores) == {method}
        if out is not None:
            assert out["decision"]["method"] == "l1"


def test_linearised_and_weight_methods_find_plain_fine_tunes(mlp_zoo):
    parents = [open_model(p) for p in mlp_zoo.candidates]
    for name in ("child-0", "child-5"):
        child_path, truth = mlp_zoo.children[name]
        child = open_model(child_path)
        for method in ("lin-l1", "lin-l2", "weight-l2", "weight-cos"):
            ranking = rank_candidates(child, parents, method)
            assert ranking.candidates[0].parent == str(truth), (name, method)


def test_single_candidate_parent_and_stranger(mlp_zoo, tmp_path):
    child_path, truth = mlp_zoo.children["child-0"]
    child = open_model(child_path)
    yes = rank_candidates(child, [open_model(truth)])
    assert yes.decision.parent == str(truth)
    # A network trained from another random initialisation is no relative.
    from app.engine.architectures import build_network
    from app.engine.model_files import save_model
    from app.engine.training import digits_task, initial_state, train

    from .conftest import MLP_CONFIG

    network = build_network(MLP_CONFIG)
    stranger = train(
        network, initial_state(MLP_CONFIG, 7), *digits_task(network, 1), steps=100, lr=1e-2, seed=7
    )
    save_model(tmp_path / "stranger", stranger, MLP_CONFIG)
    no = rank_candidates(child, [open_model(tmp_path / "stranger")])
    assert no.decision.parent is None


def test_incompatible_candidates_are_skipped_with_reason(mlp_zoo, cli, tmp_path):
    from app.engine.model_files import save_model
    from app.engine.training import initial_state

    other = {"model_type": "lineage-mlp", "sizes": [10, 7, 3], "activation": "relu"}
    save_model(tmp_path / "other", initial_state(other, 0), other)
    child, truth = mlp_zoo.children["child-0"]
    out = detect_json(cli, child, [truth, tmp_path / "other"])
    assert out["decision"]["parent"] == str(truth)
    assert [s["parent"] for s in out["skipped"]] == [str(tmp_path / "other")]
    only_bad = cli("detect", str(child), "--parents", str(tmp_path / "other"))
    assert only_bad.returncode == 2
    assert "no candidate can be compared" in only_bad.stderr
    assert "Traceback" not in only_bad.stderr


def test_readable_table_without_json(mlp_zoo, cli):
    child, truth = mlp_zoo.children["child-0"]
    result = cli("detect", str(child), "--parents", *map(str, mlp_zoo.candidates[:3]))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split()[-1] == str(truth)
    assert any(line.strip().startswith("1") and str(truth) in line for line in lines)


def test_methods_lists_the_registry(cli):
    result = cli("methods", check=True)
    rows = [line.split(maxsplit=2) for line in result.stdout.splitlines()]
    assert [name for name, _, _ in rows] == method_names()
    # Every name `detect --method` accepts, the adapters' included, each with its kind.
    assert method_names()[0] == "auto"
    assert {"auto", "detector", "detector-paper", "adapter-alignment"} <= set(method_names())
    assert all(kind == METHODS[name].kind for name, kind, _ in rows)
    assert [n for n, m in METHODS.items() if m.kind is MethodKind.ADAPTER] == ["adapter-alignment"]


def test_adapter_alignment_on_a_plain_child_is_an_invalid_argument(mlp_zoo):
    """Accepted by name (it is in the registry), refused for a full model with a clear error;
    through `lineage detect` too (tests/test_cli_errors.py)."""
    child, _ = mlp_zoo.children["child-0"]
    parents = [open_model(p) for p in mlp_zoo.candidates[:2]]
    with pytest.raises(InvalidArgument) as refused:
        rank_candidates(open_model(child, "child-0"), parents, "adapter-alignment")
    assert refused.value.code == "invalid_argument"
    assert refused.value.message == (
        "adapter-alignment scores LoRA adapter children; child-0 is not one"
    )


def test_without_configs_auto_uses_weight_evidence(mlp_zoo, tmp_path, cli):
    """Bare .safetensors files (no architecture): weight-space evidence still decides."""
    from safetensors.torch import save_file

    def bare(folder, name):
        model = open_model(folder)
        path = tmp_path / f"{name}.safetensors"
        save_file({k: model.weights[k] for k in model.weights}, str(path))
        return path

    child_folder, truth = mlp_zoo.children["child-5"]
    child = bare(child_folder, "child")
    parents = [bare(p, f"parent-{i}") for i, p in enumerate(mlp_zoo.candidates)]
    out = detect_json(cli, child, parents)
    assert out["decision"]["parent"] == str(parents[5])
    # Exactly auto's weight-space components: the function-space ones need an architecture.
    from app.engine.calibration import load_calibration
    from app.engine.methods import MethodKind, get_method

    noise = load_calibration()["auto"]["noise"]
    weight = {m for m in noise if m in METHODS and get_method(m).kind is MethodKind.WEIGHT}
    assert weight and set(out["candidates"][0]["scores"]) == weight
    lin = cli("detect", str(child), "--parents", *map(str, parents), "--method", "lin-l1")
    assert lin.returncode == 2
    assert "need its architecture" in lin.stderr
