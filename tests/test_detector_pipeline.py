"""The detector end to end: examples from real (tiny) zoos, `lineage train-detector`, checkpoints
with their record, `--method detector` with a trained checkpoint, and the shipped checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.bench.detector import train_on_zoos, zoo_examples
from app.bench.zoo import CONFIGS, NONE_SPLITS, build_zoo, read_manifest
from app.engine.architectures import open_model
from app.engine.decision import rank_candidates
from app.engine.detector import VARIANTS, DetectorError, load_checkpoint
from app.engine.detector_inputs import CHECKPOINT_DIR, SCORE_METHODS, VARIANT_OF, load_detector
from app.engine.methods import MethodKind, method_names
from app.engine.universal_detector import CHECKPOINT_NAME, read_universal
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def zoos(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("detector-zoos")
    folders = [root / f"mlp-seed{seed}" for seed in (0, 1)]
    for seed, folder in enumerate(folders):
        build_zoo("mlp", folder, seed, "tiny")
    return folders


@pytest.fixture(scope="module")
def trained(zoos, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("detectors") / "lineage-mlp-ours.safetensors"
    record = train_on_zoos(zoos, out, variant="ours", epochs=8)
    return out, record


def test_examples_cover_every_query_with_the_truth_or_none(zoos):
    items = zoo_examples(zoos[0], with_scores=True)
    manifest = read_manifest(zoos[0])
    assert len(items) == sum(len(q) for q in manifest["splits"].values())
    for item in items:
        example = item["example"]
        k = example.num_candidates
        assert example.weights.shape[:2] == (k, 2) and example.features.shape[:2] == (k, 2)
        assert example.scores.shape == (k, len(SCORE_METHODS))
        assert (example.target == k) == (item["truth"] is None)
        assert (item["split"] in NONE_SPLITS) == (item["truth"] is None)


def test_training_on_zoos_beats_chance_on_held_out_parents_and_records_it(trained, zoos):
    out, record = trained
    unseen = record["evaluation"]["parent split (unseen parents)"]
    seen = record["evaluation"]["child split (seen parents)"]
    candidates = len(read_manifest(zoos[1])["splits"]["standard"][0]["candidates"])
    # Chance is 1/K; the detector sees the scores of weight-space methods, which find the
    # parent of a fine-tune, so even a few epochs must be far above it.
    assert unseen["top1"] > 2 / candidates and seen["top1"] > 2 / candidates
    assert record["trained_on"][0]["zoo"] == zoos[0].name
    assert [z["seed"] for z in record["trained_on"]] == [0, 1]
    model, loaded = load_checkpoint(out)
    assert loaded == json.loads(json.dumps(record))
    assert model.config.n_scores == len(SCORE_METHODS)


def test_method_detector_paper_ranks_with_a_checkpoint_and_can_answer_none(zoos, tmp_path):
    out = tmp_path / "lineage-mlp-paper.safetensors"
    train_on_zoos(zoos, out, variant="paper", epochs=2, evaluate=False)
    zoo = zoos[1]
    query = read_manifest(zoo)["splits"]["standard"][0]
    child = open_model(zoo / query["child"], query["child"])
    parents = [open_model(zoo / c, c) for c in query["candidates"]]
    ranking = rank_candidates(child, parents, "detector-paper", detector_dir=out.parent)
    assert ranking.decision.method == "detector-paper"
    assert {c.parent for c in ranking.candidates} == set(query["candidates"])
    probabilities = [c.score for c in ranking.candidates]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1 + 1e-6  # the rest is "no parent"
    assert 0 < ranking.decision.confidence <= 1
    # ``detector`` is the universal detector: this folder holds no checkpoint of it.
    with pytest.raises(DetectorError, match="universal"):
        rank_candidates(child, parents, "detector", detector_dir=out.parent)


def test_every_per_family_method_has_a_detector_variant():
    trained = method_names(MethodKind.TRAINED)
    assert sorted(VARIANT_OF) == sorted(m for m in trained if m != "detector")
    assert set(VARIANT_OF.values()) <= set(VARIANTS)


def test_shipped_checkpoints_load_and_say_what_they_were_trained_on():
    shipped = sorted(CHECKPOINT_DIR.glob("*-paper.safetensors"))
    assert {p.stem for p in shipped} >= {
        f"{CONFIGS[f]['model_type']}-paper" for f in ("mlp", "cnn", "gpt2")
    }
    for path in shipped:
        assert path.stat().st_size < 1_000_000
        model_type, variant = path.stem.rsplit("-", 1)
        model, record = load_detector(model_type, variant)
        assert record["variant"] == variant and model.config.variant == variant
        assert "parent split (unseen parents)" in record["evaluation"]
    _, record = read_universal(CHECKPOINT_DIR / CHECKPOINT_NAME, "cpu")
    assert set(record["families"]) == set(CONFIGS)


def test_train_detector_cli_writes_a_checkpoint_and_reports_both_splits(zoos, tmp_path):
    out = tmp_path / "paper.safetensors"
    result = run_cli(
        "train-detector", *map(str, zoos), "--out", str(out), "--variant", "paper",
        "--epochs", "2", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "child split (seen parents)" in result.stdout
    assert "parent split (unseen parents)" in result.stdout
    _, record = load_checkpoint(out)
    assert record["variant"] == "paper" and record["epochs"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{zoo}", "--out", "{tmp}/x.safetensors", "--variant", "big"], "unknown variant"),
        (["{tmp}", "--out", "{tmp}/x.safetensors"], "is not a zoo"),
        (["{zoo}", "--out", "{tmp}/x.pt"], "a detector checkpoint is a .safetensors file"),
        (["{zoo}", "--out", "{tmp}/x.safetensors", "--epochs", "0"], "--epochs must be"),
    ],
)
def test_train_detector_cli_refuses_bad_input_with_one_line(zoos, tmp_path, args, message):
    filled = [a.format(zoo=zoos[0], tmp=tmp_path) for a in args]
    result = run_cli("train-detector", *filled)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize(
    ("method", "file"),
    [("detector-paper", "lineage-mlp-paper.safetensors"), ("detector", CHECKPOINT_NAME)],
)
def test_a_corrupt_checkpoint_is_a_clear_error_for_detect(zoos, tmp_path, method, file):
    broken = tmp_path / file
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    zoo = zoos[0]
    query = read_manifest(zoo)["splits"]["standard"][0]
    child = open_model(zoo / query["child"], query["child"])
    parents = [open_model(zoo / c, c) for c in query["candidates"]]
    with pytest.raises(DetectorError, match=str(broken.name)):
        rank_candidates(child, parents, method, detector_dir=tmp_path)
