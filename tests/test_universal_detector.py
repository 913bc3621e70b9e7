"""The universal Lineage Detector: architecture-free pair features, the model, its checkpoints,
ranking any architecture, and training from (hand-made, tiny) zoos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from app.bench import universal_detector as bench
from app.engine.architectures import build_network, open_model
from app.engine.detector import DetectorError
from app.engine.errors import IncompatibleModels
from app.engine.methods import PairContext
from app.engine.model_files import save_model
from app.engine.results import Ranking
from app.engine.separation import candidate_separations
from app.engine.training import initial_state, noisy_copy, permute_hidden_units
from app.engine.universal_detector import (
    MAX_TOKENS,
    SCALAR_FEATURES,
    TOKEN_FEATURES,
    UniversalConfig,
    UniversalDetector,
    UniversalExample,
    collate,
    load_universal,
    pair_features,
    rank_universal,
    read_universal,
    save_universal,
    with_query_features,
)
from tests.factories import TINY_CNN_CONFIG

MLP = {"model_type": "lineage-mlp", "sizes": [6, 12, 12, 3], "activation": "relu"}
SMALL_TRANSFORMER = {"vocab_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
CONFIGS = {
    "mlp": MLP,
    "cnn": TINY_CNN_CONFIG,
    "gpt2": transformers.GPT2Config(
        **SMALL_TRANSFORMER | {"n_embd": 16, "n_positions": 16, "n_inner": 32}
    ).to_dict(),
    "bert": transformers.BertConfig(
        **SMALL_TRANSFORMER,
        hidden_size=16,
        intermediate_size=32,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    ).to_dict(),
    "llama": transformers.LlamaConfig(
        **SMALL_TRANSFORMER,
        hidden_size=16,
        intermediate_size=32,
        num_key_value_heads=2,
        max_position_embeddings=16,
    ).to_dict(),
}
# Columns that a hidden-unit permutation of the child must leave unchanged: the norm ratio, the
# spectral statistics and what describes the tensor.
INVARIANT = [
    i for i, name in enumerate(TOKEN_FEATURES) if name not in ("log_relative_distance", "cosine")
]
PROBES = 16


def _model(folder: Path, state, config, name: str | None = None):
    save_model(folder, state, config)
    return open_model(folder, name or folder.name)


def _features(parent, child):
    return pair_features(PairContext(parent, child, "cpu", PROBES))


@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_permuted_child_keeps_the_spectral_features(tmp_path, family):
    config = CONFIGS[family]
    parent_state = initial_state(config, 0)
    child_state = noisy_copy(parent_state, 0.05, 1)
    permuted_state = permute_hidden_units(build_network(config), child_state, 2)
    parent = _model(tmp_path / "parent", parent_state, config)
    plain = _features(parent, _model(tmp_path / "child", child_state, config))
    permuted = _features(parent, _model(tmp_path / "permuted", permuted_state, config))
    torch.testing.assert_close(
        plain.tokens[:, INVARIANT], permuted.tokens[:, INVARIANT], atol=1e-5, rtol=0
    )
    # ... while the element-wise distance sees a stranger
    assert not torch.allclose(plain.tokens[:, 0], permuted.tokens[:, 0])
    # the same function: function-space distance and CKA unchanged
    for name in ("function_neg_log_relative_l2", "cka_neg_log_distance"):
        i = SCALAR_FEATURES.index(name)
        assert abs(float(plain.scalars[i] - permuted.scalars[i])) < 1e-3


@pytest.mark.parametrize("family", list(CONFIGS))
def test_features_run_on_every_architecture(tmp_path, family):
    config = CONFIGS[family]
    state = initial_state(config, 0)
    parent = _model(tmp_path / "parent", state, config)
    child = _model(tmp_path / "child", noisy_copy(state, 0.05, 1), config)
    stranger = _model(tmp_path / "stranger", initial_state(config, 3), config)
    near, far = _features(parent, child), _features(stranger, child)
    for f in (near, far):
        assert f.tokens.shape[1] == len(TOKEN_FEATURES) and 1 <= f.tokens.shape[0] <= MAX_TOKENS
        assert f.scalars.shape == (len(SCALAR_FEATURES),)
        assert torch.isfinite(f.tokens).all() and torch.isfinite(f.scalars).all()
    missing = [SCALAR_FEATURES.index(n) for n in SCALAR_FEATURES if n.endswith("_missing")]
    assert near.scalars[missing].sum() == 0  # function space available
    distance = SCALAR_FEATURES.index("weight_log_relative_distance")
    assert near.scalars[distance] < far.scalars[distance]
    # weights only (no config): function-space evidence is flagged missing, the rest computed
    bare_parent = _model(tmp_path / "bare-parent", state, None)
    bare = _features(bare_parent, child)
    assert bare.scalars[missing].tolist() == [1.0] * len(missing)
    torch.testing.assert_close(bare.tokens, near.tokens)


def test_tokens_are_capped_and_spread_over_depth(tmp_path):
    config = CONFIGS["bert"]
    state = initial_state(config, 0)
    parent = _model(tmp_path / "parent", state, config)
    child = _model(tmp_path / "child", noisy_copy(state, 0.05, 1), config)
    ctx = PairContext(parent, child, "cpu", PROBES)
    assert len(parent.weights.infos) > 8
    capped = pair_features(ctx, max_tokens=8)
    assert capped.tokens.shape[0] == 8
    depth = capped.tokens[:, TOKEN_FEATURES.index("relative_depth")]
    assert float(depth[0]) == 0.0 and float(depth[-1]) == 1.0


# --- synthetic queries: parent = a noisy copy of one candidate, strangers = independent inits ---


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """(training items, held-out items) of MLP queries: 4 candidates, the parent among them
    (target its index) or not (target 4)."""
    out = tmp_path_factory.mktemp("synthetic")
    roots = [
        _model(out / f"root-{i}", initial_state(MLP, 100 + i), MLP, f"root-{i}") for i in range(10)
    ]
    items = []
    for q in range(24):
        gen = torch.Generator().manual_seed(q)
        order = torch.randperm(len(roots), generator=gen).tolist()
        has_parent = q % 3 != 0
        child_state = noisy_copy(initial_state(MLP, 100 + order[0]), 0.05 + 0.01 * (q % 5), q)
        if not has_parent:
            child_state = initial_state(MLP, 1000 + q)  # a stranger to every candidate
        child = _model(out / f"child-{q}", child_state, MLP, f"child-{q}")
        candidates = [roots[i] for i in order[:4]]
        views = candidate_separations(candidates, child)
        pairs = with_query_features([_features(c, child) for c in candidates], views)
        target = 0 if has_parent else 4
        items.append(
            {
                "split": "parent" if has_parent else "none",
                "truth": candidates[0].name if has_parent else None,
                "droppable": True,
                "example": UniversalExample(pairs, target),
            }
        )
    return items[:16], items[16:], roots


@pytest.fixture(scope="module")
def trained(synthetic):
    train, _, _ = synthetic
    model, history = bench.fit_universal(train, epochs=30, seed=0)
    return model, history


def test_training_names_the_parent_and_says_none(synthetic, trained):
    _, held_out, _ = synthetic
    model, history = trained
    assert history[-1]["loss"] < history[0]["loss"]
    result = bench.measure(model, held_out)
    overall = result["overall"]
    # chance: 1 in 5 answers (4 candidates or none)
    assert overall["accuracy"] >= 0.75, result
    assert overall["top1"] == 1.0
    assert result["splits"]["none"]["accuracy"] >= 0.5, result


def test_training_is_deterministic(synthetic):
    train, _, _ = synthetic
    a, _ = bench.fit_universal(train[:6], epochs=2, seed=3)
    b, _ = bench.fit_universal(train[:6], epochs=2, seed=3)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_checkpoint_round_trips_and_refuses_foreign_files(tmp_path, synthetic, trained):
    model, _ = trained
    path = tmp_path / "universal.safetensors"
    save_universal(model, path, {"note": "test"})
    loaded, record = read_universal(path)
    assert record == {"note": "test"}
    assert loaded.config == model.config
    _, held_out, _ = synthetic
    batch = collate([i["example"] for i in held_out])[:4]
    with torch.no_grad():
        torch.testing.assert_close(loaded(*batch), model(*batch), rtol=0, atol=0)
    assert load_universal(path)[0] is load_universal(path)[0]  # cached by file identity

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DetectorError, match="not a readable safetensors"):
        read_universal(corrupt)
    pickled = tmp_path / "pickled.safetensors"
    torch.save(model.state_dict(), pickled)
    with pytest.raises(DetectorError):
        read_universal(pickled)
    foreign = tmp_path / "foreign.safetensors"
    save_model(tmp_path / "some-model", initial_state(MLP, 0), MLP)
    foreign.write_bytes((tmp_path / "some-model" / "model.safetensors").read_bytes())
    with pytest.raises(DetectorError, match="not a universal detector checkpoint"):
        read_universal(foreign)
    with pytest.raises(DetectorError, match="no universal detector checkpoint"):
        load_universal(tmp_path / "missing.safetensors")


def test_config_refuses_other_features():
    with pytest.raises(DetectorError, match="retrain"):
        UniversalConfig(features_version="0")
    with pytest.raises(DetectorError, match="unknown detector config keys"):
        UniversalConfig.from_dict({"embed_dim": 32, "colour": "red"})
    assert sum(p.numel() for p in UniversalDetector(UniversalConfig()).parameters()) < 20_000


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_rank_universal_on_an_architecture_not_trained_on(tmp_path, trained, family):
    model, _ = trained
    path = tmp_path / "universal.safetensors"
    save_universal(model, path, {})
    config = CONFIGS[family]
    parents = [
        _model(tmp_path / f"p{i}", initial_state(config, 10 + i), config, f"p{i}") for i in range(3)
    ]
    child = _model(tmp_path / "child", noisy_copy(initial_state(config, 11), 0.05, 0), config)
    other = _model(tmp_path / "mlp", initial_state(MLP, 0), MLP, "mlp")
    calls = []
    ranking = rank_universal(
        child,
        [*parents, other],
        path=path,
        num_probes=PROBES,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert isinstance(ranking, Ranking)
    assert [s.parent for s in ranking.skipped] == ["mlp"]
    assert "share no tensor" in ranking.skipped[0].reason
    assert sorted(c.parent for c in ranking.candidates) == ["p0", "p1", "p2"]
    assert ranking.decision.best == ranking.candidates[0].parent
    assert ranking.decision.method == "detector"
    assert calls[-1] == (4, 4)
    json.dumps(ranking.to_dict())
    with pytest.raises(IncompatibleModels):
        rank_universal(child, [other], path=path, num_probes=PROBES)


# --- zoos: cached features, training and leave-one-family-out ---------------------------------


def _mini_zoo(folder: Path, family: str, config: dict, seed: int) -> Path:
    """A hand-made zoo: root → 2 parents → a child each, one stranger; a standard query per
    child and an orphan query."""
    root = initial_state(config, seed)
    states = {"root": root, "stranger": initial_state(config, seed + 50)}
    models = {
        "root": {"parent": None, "role": "root"},
        "stranger": {"parent": None, "role": "root"},
    }
    for i in range(2):
        states[f"parent-{i}"] = noisy_copy(root, 0.3, seed + i)
        states[f"child-{i}"] = noisy_copy(states[f"parent-{i}"], 0.05, seed + 10 + i)
        models[f"parent-{i}"] = {"parent": "root", "role": "parent"}
        models[f"child-{i}"] = {"parent": f"parent-{i}", "role": "standard"}
    for name, state in states.items():
        save_model(folder / name, state, config)
    candidates = ["parent-0", "parent-1", "stranger"]
    splits = {
        "standard": [
            {"child": f"child-{i}", "candidates": candidates, "truth": f"parent-{i}"}
            for i in range(2)
        ],
        "orphans": [{"child": "child-0", "candidates": ["parent-1", "stranger"], "truth": None}],
        "kinship": [{"child": "child-1", "candidates": ["root", "parent-1"], "truth": "parent-1"}],
    }
    manifest = {"family": family, "seed": seed, "size": "tiny", "models": models, "splits": splits}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_zoo_features_are_cached_until_the_manifest_changes(tmp_path, monkeypatch):
    zoo = _mini_zoo(tmp_path / "zoo", "mlp", MLP, 0)
    items = bench.zoo_features(zoo, num_probes=PROBES)
    assert [i["split"] for i in items] == ["standard", "standard", "orphans", "kinship"]
    assert [i["example"].target for i in items] == [0, 1, 2, 1]
    # the root is an ancestor: dropping the parent would not leave a parentless query
    assert [i["droppable"] for i in items] == [True, True, False, False]
    assert (zoo / bench.FEATURES_FILE).is_file()

    def refuse(*_args, **_kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(bench, "_compute", refuse)
    again = bench.zoo_features(zoo, num_probes=PROBES)
    for a, b in zip(items, again, strict=True):
        for p, q in zip(a["example"].pairs, b["example"].pairs, strict=True):
            assert torch.equal(p.tokens, q.tokens) and torch.equal(p.scalars, q.scalars)
    manifest = json.loads((zoo / "manifest.json").read_text())
    manifest["splits"]["orphans"] = []
    (zoo / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AssertionError, match="recomputed"):
        bench.zoo_features(zoo, num_probes=PROBES)


def test_train_universal_and_leave_one_family_out(tmp_path):
    zoos = {
        "mlp": [_mini_zoo(tmp_path / "mlp", "mlp", MLP, 0)],
        "cnn": [_mini_zoo(tmp_path / "cnn", "cnn", TINY_CNN_CONFIG, 1)],
    }
    out = tmp_path / "universal.safetensors"
    record = bench.train_universal(zoos["mlp"] + zoos["cnn"], out, epochs=3, num_probes=PROBES)
    assert record["families"] == ["cnn", "mlp"] and record["queries"] == 8
    _, stored = read_universal(out)
    assert stored == record
    results = bench.leave_one_family_out(zoos, zoos, epochs=3, num_probes=PROBES)
    assert set(results) == {"mlp", "cnn"}
    assert results["mlp"]["trained_on"] == ["cnn"]
    assert results["cnn"]["overall"]["queries"] == 4
    assert set(results["cnn"]["splits"]) == {"standard", "orphans", "kinship"}
    with pytest.raises(Exception, match="no other family"):
        bench.leave_one_family_out({"mlp": zoos["mlp"]}, {"mlp": zoos["mlp"]}, epochs=1)


def test_the_benchmark_trains_the_detector_with_its_own_probes(tmp_path):
    """``lineage bench --probes N`` reaches the detector's features, not only the methods'."""
    from app.bench.run import train_universal_detector

    zoos = [
        _mini_zoo(tmp_path / "mlp", "mlp", MLP, 0),
        _mini_zoo(tmp_path / "cnn", "cnn", TINY_CNN_CONFIG, 1),
    ]
    options = {"device": "cpu", "probes": PROBES + 3}
    report = train_universal_detector(zoos, tmp_path, options, 1, lambda _: None)
    assert report["record"]["probes"] == PROBES + 3
    assert set(report["leave_one_family_out"]) == {"mlp", "cnn"}
