"""The learned Lineage Detector: shapes, masking, permutation equivariance, a toy task it must
learn in seconds, safetensors checkpoints and the errors for bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from app.engine.detector import (
    DetectorConfig,
    DetectorError,
    DetectorExample,
    LineageDetector,
    collate,
    load_checkpoint,
    save_checkpoint,
)
from app.engine.detector_training import accuracy, predict, train_detector

VARIANTS = [("paper", 0), ("ours", 0), ("ours", 3)]  # (variant, n_scores)


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is faster, and immune to a busy machine's other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_batch(batch: int, k: int, n_scores: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(batch, k, 2, 6, 5, generator=g)
    features = torch.randn(batch, k, 2, 7, 4, generator=g)
    scores = torch.randn(batch, k, n_scores, generator=g) if n_scores else None
    return weights, features, scores, torch.ones(batch, k, dtype=torch.bool)


def toy_examples(n: int, seed: int, n_scores: int = 0, size: int = 8) -> list[DetectorExample]:
    """K = 3..5 candidates; the child is its parent plus 10 % noise, or (every fourth example) an
    independent draw with no parent among the candidates. Scores, when asked for, are noise."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(n):
        k = 3 + i % 3
        scale = float(torch.empty(()).uniform_(0.5, 2.0, generator=g))
        parent_w = torch.randn(k, size, size, generator=g) * scale
        parent_f = torch.randn(k, size, size, generator=g) * scale
        target = k if i % 4 == 0 else int(torch.randint(k, (), generator=g))
        child_w = torch.randn(size, size, generator=g) * scale
        child_f = torch.randn(size, size, generator=g) * scale
        if target < k:
            child_w = parent_w[target] + 0.1 * child_w
            child_f = parent_f[target] + 0.1 * child_f
        weights = torch.stack([parent_w, child_w.expand(k, -1, -1)], dim=1)
        features = torch.stack([parent_f, child_f.expand(k, -1, -1)], dim=1)
        scores = torch.randn(k, n_scores, generator=g) if n_scores else None
        examples.append(DetectorExample(weights, features, scores, target))
    return examples


@pytest.mark.parametrize("no_parent", [True, False])
@pytest.mark.parametrize(("variant", "n_scores"), VARIANTS)
def test_shapes_and_padding(variant, n_scores, no_parent):
    model = LineageDetector(DetectorConfig(variant, n_scores=n_scores, no_parent=no_parent))
    weights, features, scores, mask = random_batch(3, 4, n_scores)
    mask[1, 2:] = False
    mask[2, 1:] = False  # a single real candidate
    for mode in (model.train, model.eval):
        mode()
        logits = model(weights, features, scores, mask)
        assert logits.shape == (3, 5 if no_parent else 4)
        assert torch.isfinite(logits[0]).all()
        assert torch.isfinite(logits[2, :1]).all()
        assert (logits[1, 2:4] < -1e30).all() and (logits[2, 1:4] < -1e30).all()
        winners = logits.argmax(1)
        assert winners[1] in (0, 1, 4) and winners[2] in (0, 4)
        probs = torch.softmax(logits, 1)
        assert torch.isfinite(probs).all() and probs[1, 2:4].max() == 0
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0]))
        assert torch.isfinite(loss)


def test_batch_of_one_in_eval_mode():
    model = LineageDetector(DetectorConfig("ours")).eval()
    logits = model(*random_batch(1, 1, 0))
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


def test_paper_variant_is_small():
    counts = {
        variant: sum(
            p.numel() for p in LineageDetector(DetectorConfig(variant, n_scores=s)).parameters()
        )
        for variant, s in (("paper", 0), ("ours", 4))
    }
    assert 3_000 < counts["paper"] < 10_000  # the paper: "about 6k parameters" at E = 32
    assert counts["ours"] < 100_000


@pytest.mark.parametrize(("variant", "n_scores"), VARIANTS)
def test_permuting_candidates_permutes_logits(variant, n_scores):
    torch.manual_seed(0)
    model = LineageDetector(DetectorConfig(variant, n_scores=n_scores)).eval()
    weights, features, scores, mask = random_batch(2, 5, n_scores, seed=1)
    perm = torch.tensor([3, 0, 4, 1, 2])
    logits = model(weights, features, scores, mask)
    permuted = model(
        weights[:, perm], features[:, perm], None if scores is None else scores[:, perm], mask
    )
    assert logits.shape == (2, 6)
    torch.testing.assert_close(permuted[:, :5], logits[:, perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(permuted[:, 5], logits[:, 5], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("variant", "n_scores", "epochs", "lr"), [("ours", 2, 4, 3e-3), ("paper", 0, 12, 1e-2)]
)
def test_learns_toy_lineage_task(variant, n_scores, epochs, lr):
    train, held_out = toy_examples(128, seed=0, n_scores=n_scores), toy_examples(80, 1, n_scores)
    config = DetectorConfig(variant, n_scores=n_scores)
    model, history = train_detector(train, config, epochs=epochs, lr=lr, valid=held_out[:20])
    assert len(history) == epochs and history[-1]["loss"] < history[0]["loss"]
    assert {"valid_accuracy", "valid_loss", "train_accuracy"} <= set(history[0])
    test = held_out[20:]
    orphans = [e for e in test if e.target == e.num_candidates]
    assert len(orphans) == 15
    # Chance is about 1 / (K + 1) = 0.2.
    assert accuracy(model, test) > 0.85
    assert accuracy(model, orphans) > 0.8
    index, probs = predict(model, test[:1])[0]
    assert index == test[0].target and len(probs) == test[0].num_candidates + 1
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)


def test_training_is_deterministic_and_shuffles_candidates():
    train = toy_examples(16, seed=3)
    runs = [
        train_detector(train, DetectorConfig("paper"), epochs=2, batch_size=8, seed=5)[1]
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    other = train_detector(train, DetectorConfig("paper"), epochs=2, batch_size=8, seed=6)[1]
    assert other != runs[0]


def test_collate_pads_and_maps_no_parent_target():
    short, long = toy_examples(2, seed=0)[0], toy_examples(3, seed=0)[2]  # K = 3 and 5
    assert short.target == 3 and long.num_candidates == 5
    weights, features, scores, mask, targets = collate([short, long])
    assert weights.shape == (2, 5, 2, 8, 8) and features.shape == (2, 5, 2, 8, 8)
    assert scores is None and mask.sum(1).tolist() == [3, 5]
    assert targets.tolist() == [5, long.target]  # the no-parent column of the padded batch
    odd = DetectorExample(torch.zeros(3, 2, 4, 4), torch.zeros(3, 2, 8, 8), None, 0)
    with pytest.raises(DetectorError, match="must share"):
        collate([short, odd])


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = LineageDetector(DetectorConfig("ours", n_scores=3))
    batch = random_batch(2, 4, 3)
    model.train()(*batch)  # moves BatchNorm's running statistics away from their defaults
    model.eval()
    path = tmp_path / "detector.safetensors"
    record = {"trained_on": "toy", "accuracy": 0.97, "epochs": [1, 2]}
    save_checkpoint(model, path, record)
    assert [p.name for p in tmp_path.iterdir()] == ["detector.safetensors"]
    loaded, loaded_record = load_checkpoint(path)
    assert not loaded.training and loaded.config == model.config
    assert loaded_record == record
    with torch.no_grad():
        torch.testing.assert_close(loaded(*batch), model(*batch), rtol=0, atol=0)


def _saved(tmp_path) -> tuple:
    model = LineageDetector(DetectorConfig("paper"))
    path = tmp_path / "detector.safetensors"
    save_checkpoint(model, path, {})
    return model, path


def test_checkpoint_errors_name_the_problem(tmp_path):
    model, path = _saved(tmp_path)
    data = path.read_bytes()

    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(DetectorError, match="no detector checkpoint") as err:
        load_checkpoint(missing)
    assert str(missing) in err.value.message

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DetectorError, match="not a readable safetensors file") as err:
        load_checkpoint(truncated)
    assert str(truncated) in err.value.message

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(
        torch.randint(
            0, 256, (4096,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
        )
        .numpy()
        .tobytes()
    )
    with pytest.raises(DetectorError, match="not a readable safetensors file"):
        load_checkpoint(garbage)

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    foreign = tmp_path / "foreign.safetensors"
    save_file(state, foreign)
    with pytest.raises(DetectorError, match="'format' metadata") as err:
        load_checkpoint(foreign)
    assert str(foreign) in err.value.message

    def metadata(**config) -> dict:
        config = {**model.config.to_dict(), **config}
        return {
            "format": "lineage-detector",
            "version": "1",
            "config": json.dumps(config),
            "record": "{}",
        }

    wrong_shapes = tmp_path / "shapes.safetensors"
    save_file(state, wrong_shapes, metadata=metadata(embed_dim=16))
    with pytest.raises(DetectorError, match=r"has shape .* the config needs"):
        load_checkpoint(wrong_shapes)

    wrong_names = tmp_path / "names.safetensors"
    save_file(state, wrong_names, metadata=metadata(variant="ours"))
    with pytest.raises(DetectorError, match="missing tensors .*unexpected tensors"):
        load_checkpoint(wrong_names)

    bad_config = tmp_path / "config.safetensors"
    save_file(state, bad_config, metadata=metadata(variant="resnet"))
    with pytest.raises(DetectorError, match="bad detector config: unknown detector variant"):
        load_checkpoint(bad_config)


def test_save_refuses_a_record_that_is_not_json(tmp_path):
    model = LineageDetector(DetectorConfig("paper"))
    with pytest.raises(DetectorError, match="not JSON-serialisable"):
        save_checkpoint(model, tmp_path / "d.safetensors", {"when": object()})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"variant": "huge"}, "unknown detector variant"),
        ({"embed_dim": 0}, "embed_dim must be an integer >= 1"),
        ({"embed_dim": 30, "heads": 4}, "divisible by heads"),
        ({"n_scores": -1}, "n_scores must be"),
        ({"heads": True}, "heads must be"),
        ({"no_parent": "yes"}, "no_parent must be"),
        ({"dropout": 1.5}, "dropout must be"),
        ({"variant": "paper", "n_scores": 2}, "paper detector takes no scores"),
        ({"colour": "red"}, "unknown detector config keys: colour"),
    ],
)
def test_invalid_config(changes, message):
    with pytest.raises(DetectorError, match=message):
        DetectorConfig.from_dict({**DetectorConfig().to_dict(), **changes})


def test_config_round_trips():
    config = DetectorConfig("paper", embed_dim=16, no_parent=False, heads=2, dropout=0.1)
    assert DetectorConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_invalid_inputs():
    model = LineageDetector(DetectorConfig("ours", n_scores=2))
    weights, features, scores, mask = random_batch(2, 3, 2)
    cases = [
        ((weights[0], features, scores, mask), "weights must have shape"),
        ((weights, features[:, :2], scores, mask), r"features hold \(B, K\) = \(2, 2\)"),
        ((weights, features, None, mask), "expects scores of shape"),
        ((weights, features, scores[..., :1], mask), "expects scores of shape"),
        ((weights, features, scores, mask.float()), "mask must be a bool tensor"),
        ((weights.long(), features, scores, mask), "weights must be a float tensor"),
        ((weights * float("nan"), features, scores, mask), "NaN or infinity"),
        ((weights, features, scores, torch.tensor([[True] * 3, [False] * 3])), "rows \\[1\\]"),
    ]
    for args, message in cases:
        with pytest.raises(DetectorError, match=message):
            model(*args)
    no_scores = LineageDetector(DetectorConfig("paper"))
    with pytest.raises(DetectorError, match="n_scores=0"):
        no_scores(weights, features, scores, mask)


def test_invalid_training_sets():
    examples = toy_examples(4, seed=0)
    with pytest.raises(DetectorError, match="training set is empty"):
        train_detector([], DetectorConfig("paper"))
    with pytest.raises(DetectorError, match="no_parent=False"):
        train_detector(examples, DetectorConfig("paper", no_parent=False), epochs=1)
    with pytest.raises(DetectorError, match="0 scores per candidate, the config 2"):
        train_detector(examples, DetectorConfig("ours", n_scores=2), epochs=1)
    bad = DetectorExample(examples[0].weights, examples[0].features, None, 7)
    with pytest.raises(DetectorError, match="target 7 is not in 0..3"):
        train_detector([bad], DetectorConfig("paper"), epochs=1)
