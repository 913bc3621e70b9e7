"""``lineage zoo build``: the manifest, the splits' ground truth, and the trained models themselves.

Tiny zoos (3 parents, step counts ×0.1) are built once per module: a couple of seconds for the
MLP, a few for the GPT-2. No test looks at accuracy; they check that each model is what the
manifest says it is and that every split's answer follows from the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.bench.zoo import (
    FAR_LR,
    FAR_STEPS,
    NONE_SPLITS,
    SPLITS,
    ancestors,
    build_zoo,
    make_splits,
    read_manifest,
)
from app.engine.architectures import build_network, model_state, open_model
from app.engine.errors import InvalidArgument
from app.engine.probes import probe_inputs
from tests.conftest import run_cli

FAMILIES = ("mlp", "gpt2")
TRAINED_KEYS = ("data", "lr", "steps", "seed")


@pytest.fixture(scope="module")
def zoos(tmp_path_factory) -> dict[str, Path]:
    """family -> folder of a tiny zoo of seed 0 (built once for the module)."""
    built = {}
    for family in FAMILIES:
        out = tmp_path_factory.mktemp(f"zoo-{family}")
        build_zoo(family, out, seed=0, size="tiny")
        built[family] = out
    return built


@pytest.fixture(params=FAMILIES)
def zoo(request, zoos) -> Path:
    return zoos[request.param]


def _function(folder: Path, x: torch.Tensor | None = None):
    """(f(x) on the probe inputs, the network, the float tensors) of the model in ``folder``."""
    model = open_model(folder, folder.name)
    network = build_network(model.config)
    state, _ = model_state(network, model)
    if x is None:
        x = probe_inputs(network, 32)
    with torch.no_grad():
        out = network.output(state, x)
    return out, x, network, model.float_tensors()


# --- the manifest ---------------------------------------------------------------------------


def test_manifest_records_every_model_and_its_lineage(zoo):
    manifest = read_manifest(zoo)
    models = manifest["models"]
    assert manifest["size"] == "tiny" and manifest["seed"] == 0
    assert set(manifest["splits"]) == set(SPLITS)
    roles = {record["role"] for record in models.values()}
    assert {
        "root",
        "parent",
        "standard",
        "distilled",
        "permuted",
        "residual-permuted",
        "far",
        "generation",
        "stranger-root",
        "stranger",
    } <= roles

    assert models["root"]["parent"] is None
    assert models["root"]["generation"] == 0
    assert [n for n, r in models.items() if r["parent"] is None] == ["root", "stranger-root"]
    # A far child trains FAR_STEPS times its parent's steps at FAR_LR times its learning rate.
    for name, record in models.items():
        if record["role"] == "far":
            parent = models[record["parent"]]
            assert record["steps"] == FAR_STEPS * parent["steps"], name
            assert record["lr"] == pytest.approx(FAR_LR * parent["lr"]), name

    for name, record in models.items():
        for key in ("parent", "generation", "role"):
            assert key in record, f"{name} has no {key!r}"
        if "permutation_of" not in record:  # every model but the permuted copies is trained
            for key in TRAINED_KEYS:
                assert key in record, f"{name} has no {key!r}"
            assert record["steps"] >= 1 and record["lr"] > 0
        folder = zoo / name
        assert (folder / "model.safetensors").is_file(), name
        assert (folder / "config.json").is_file(), name
        if record["parent"] is None:
            continue
        parent = models[record["parent"]]
        assert record["generation"] == parent["generation"] + 1, name
        assert record["inherits_weights"] == (record["role"] != "distilled"), name
        if record["role"] == "distilled":
            assert record["regulariser"]["teacher"] == record["parent"]
        if record["role"] in ("permuted", "residual-permuted"):
            source = models[record["permutation_of"]]
            assert source["parent"] == record["parent"]
            assert source["generation"] == record["generation"]

    # Every model folder on disk is in the manifest, and the other way round.
    on_disk = {p.name for p in zoo.iterdir() if p.is_dir()}
    assert on_disk == set(models)


def test_ground_truth_of_every_split_is_the_manifests(zoo):
    manifest = read_manifest(zoo)
    models = manifest["models"]
    for split in SPLITS:
        queries = manifest["splits"][split]
        assert queries, f"split {split} is empty"
        for query in queries:
            child, candidates, truth = query["child"], query["candidates"], query["truth"]
            lineage = ancestors(models, child)
            related = [c for c in candidates if c in lineage]
            where = f"{split}: {child} among {candidates}"
            assert child not in candidates, where
            assert len(set(candidates)) == len(candidates), where
            assert all(c in models for c in candidates), where
            if split in NONE_SPLITS:
                assert truth is None, where
                assert related == [], where
                # Cousins and siblings share the candidates' ancestors; orphans none of them.
                shared = set(lineage) & {a for c in candidates for a in ancestors(models, c)}
                assert bool(shared) == (split != "orphans"), where
                continue
            assert truth in lineage, where
            assert truth in candidates, where
            if split == "kinship":
                assert truth == models[child]["parent"], where
            else:
                assert related == [truth], where
            if split == "generations":
                gap = models[child]["generation"] - models[truth]["generation"]
                assert query["gap"] == gap >= 1, where


def test_splits_are_derived_from_the_manifest_alone(zoo):
    manifest = read_manifest(zoo)
    assert make_splits(manifest) == manifest["splits"]


# --- the models -----------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["permuted", "residual-permuted"])
def test_permuted_children_compute_their_source_function_with_other_weights(zoo, role):
    models = read_manifest(zoo)["models"]
    permuted = [n for n, r in models.items() if r["role"] == role]
    assert permuted
    for name in permuted:
        source = models[name]["permutation_of"]
        out, x, network, weights = _function(zoo / name)
        source_out, _, _, source_weights = _function(zoo / source, x)
        assert set(weights) == set(source_weights)
        changed = [k for k in weights if not torch.equal(weights[k], source_weights[k])]
        assert changed, f"{name} has the very weights of {source}"
        if network.family == "transformers":
            embeddings = [k for k in weights if "wte" in k or "embed" in k]
            moved = [k for k in embeddings if not torch.equal(weights[k], source_weights[k])]
            # Only a residual permutation moves the embeddings (the stream's own axis).
            assert bool(moved) == (role == "residual-permuted"), name
        if network.family == "transformers" and role == "residual-permuted":
            # The residual stream is permuted: the last hidden state comes out with its
            # features in another order.
            hidden = network.config["n_embd"]
            out = out.reshape(x.shape[0], x.shape[1], hidden)
            source_out = source_out.reshape(x.shape[0], x.shape[1], hidden)
            assert not torch.allclose(out, source_out, atol=1e-3)
            out, source_out = out.sort(-1).values, source_out.sort(-1).values
        torch.testing.assert_close(out, source_out, atol=1e-4, rtol=1e-4)


def test_distilled_models_inherit_no_weight(zoo):
    models = read_manifest(zoo)["models"]
    distilled = [n for n, r in models.items() if r["role"] == "distilled"]
    assert distilled
    for name in distilled:
        weights = open_model(zoo / name).float_tensors()
        for other in (models[name]["parent"], "root"):
            other_weights = open_model(zoo / other).float_tensors()
            assert set(weights) == set(other_weights)
            shared = [k for k in weights if torch.equal(weights[k], other_weights[k])]
            assert shared == [], f"{name} shares {shared} with {other}"


def _hashes(zoo: Path) -> dict[str, str]:
    models = read_manifest(zoo)["models"]
    return {name: open_model(zoo / name).sha256 for name in models}


def test_same_seed_gives_the_same_zoo_and_another_seed_another(zoos, tmp_path):
    first = zoos["mlp"]
    again = build_zoo("mlp", tmp_path / "again", seed=0, size="tiny")
    assert again["models"] == read_manifest(first)["models"]
    assert again["splits"] == read_manifest(first)["splits"]
    assert _hashes(tmp_path / "again") == _hashes(first)

    other = _hashes(first)
    build_zoo("mlp", tmp_path / "seed1", seed=1, size="tiny")
    reseeded = _hashes(tmp_path / "seed1")
    assert set(reseeded) == set(other)
    same = [n for n in other if reseeded[n] == other[n]]
    assert same == [], f"seed 1 reproduced the seed-0 models {same}"


# --- bad input ------------------------------------------------------------------------------


def test_unknown_family_or_size_is_refused_before_writing(tmp_path):
    with pytest.raises(InvalidArgument, match="nope"):
        build_zoo("nope", tmp_path / "a", size="tiny")
    with pytest.raises(InvalidArgument, match="huge"):
        build_zoo("mlp", tmp_path / "b", size="huge")
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()


def test_read_manifest_names_what_is_wrong(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidArgument) as missing:
        read_manifest(empty)
    assert "manifest.json" in missing.value.message
    assert "not a built zoo" in missing.value.message

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(InvalidArgument) as bad:
        read_manifest(broken)
    assert "manifest.json" in bad.value.message
    assert "not valid JSON" in bad.value.message

    wrong_shape = tmp_path / "wrong"
    wrong_shape.mkdir()
    (wrong_shape / "manifest.json").write_text(json.dumps({"models": {}}))
    with pytest.raises(InvalidArgument, match="not a zoo manifest"):
        read_manifest(wrong_shape)


def test_cli_zoo_build_unknown_family_is_one_error_line(tmp_path):
    out = tmp_path / "zoo"
    result = run_cli("zoo", "build", "nope", "--out", str(out), "--size", "tiny")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "nope" in lines[0]
    assert not out.exists()
