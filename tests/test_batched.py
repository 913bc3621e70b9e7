"""Batched scoring: every candidate's weight-space evidence in one streaming pass over the child's
tensors equals the one-by-one path and the plain full-tensor arithmetic, whatever the block size,
dtype or naming of the candidates; rankings are identical either way."""

from __future__ import annotations

import math

import pytest
import torch

from app.engine import weightspace
from app.engine.decision import rank_candidates
from app.engine.methods import PairContext, batch_parent_outputs
from app.engine.model_files import load_model, save_model
from app.engine.training import initial_state, noisy_copy
from tests.factories import TINY_CNN_CONFIG
from tests.test_transformers_models import BERT as BERT_SIZES

BERT = {"model_type": "bert", **BERT_SIZES}

CONFIG = {"model_type": "lineage-mlp", "sizes": [24, 48, 10], "activation": "relu"}


def _state(gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "layers.0.weight": torch.randn(48, 24, generator=gen),
        "layers.0.bias": torch.randn(48, generator=gen),
        "layers.1.weight": torch.randn(10, 48, generator=gen),
        "layers.1.bias": torch.randn(10, generator=gen),
    }


def _moved(state, seed: int, size: float) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: v + size * torch.randn(v.shape, generator=gen) for k, v in state.items()}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """A child, its parent, siblings of the parent at several distances, a stranger, a bf16
    copy of a sibling and a candidate (no config) whose tensors carry a base-model prefix."""
    out = tmp_path_factory.mktemp("batched")
    gen = torch.Generator().manual_seed(0)
    root = _state(gen)
    states = {f"sib{i}": _moved(root, 10 + i, 0.2 + 0.05 * i) for i in range(6)}
    states["parent"] = _moved(root, 1, 0.25)
    states["stranger"] = _state(gen)
    child = _moved(states["parent"], 2, 0.05)
    paths = {name: save_model(out / name, s, CONFIG) for name, s in states.items()}
    paths["half"] = save_model(
        out / "half", {k: v.to(torch.bfloat16) for k, v in states["sib1"].items()}, CONFIG
    )
    paths["prefixed"] = save_model(
        out / "prefixed", {f"base.{k}": v for k, v in _moved(states["sib2"], 99, 0.1).items()}, None
    )
    save_model(out / "child", child, CONFIG)
    candidates = [load_model(p, name) for name, p in paths.items()]
    return load_model(out / "child", "child"), candidates


def _plain(candidate, child):
    """The evidence from whole float64 tensors, the obvious way."""
    pairs = weightspace.matched_tensors(candidate, child)
    p = {n: candidate.weights[n].double() for n, _ in pairs}
    c = {n: child.weights[n].double() for _, n in pairs}
    l2 = math.sqrt(sum(float((c[cn] - p[pn]).pow(2).sum()) for pn, cn in pairs))
    cos = sum(
        float(torch.nn.functional.cosine_similarity(c[cn].flatten(), p[pn].flatten(), dim=0))
        for pn, cn in pairs
    ) / len(pairs)
    norm = math.sqrt(sum(float(p[pn].pow(2).sum()) for pn, _ in pairs))
    return l2, cos, norm


@pytest.mark.parametrize("budget", [weightspace.BLOCK_BUDGET, 7 * 13])
def test_batched_evidence_equals_plain_arithmetic(catalog, budget):
    child, candidates = catalog
    evidence, ratios = weightspace.weight_evidence(
        candidates, child, outward=True, block_budget=budget
    )
    for candidate, pair in zip(candidates, evidence, strict=True):
        l2, cos, norm = _plain(candidate, child)
        assert pair.l2 == pytest.approx(l2, rel=1e-5)
        assert pair.cosine == pytest.approx(cos, rel=1e-5)
        assert pair.parent_norm == pytest.approx(norm, rel=1e-5)
        assert pair.relative == pytest.approx(l2 / norm, rel=1e-5)
    # outward: over the tensors every candidate shares with the child, from their mean
    shared = [n for n in child.weights.infos]
    stacks = {
        n: torch.stack(
            [
                k.weights[
                    dict((c, p) for p, c in weightspace.matched_tensors(k, child))[n]
                ].double()
                for k in candidates
            ]
        )
        for n in shared
    }
    spread = [
        sum(float((s[i] - s.mean(0)).pow(2).sum()) for s in stacks.values())
        for i in range(len(candidates))
    ]
    mine = sum(
        float((child.weights[n].double() - s.mean(0)).pow(2).sum()) for n, s in stacks.items()
    )
    expected = [0.5 * (math.log(v) - math.log(mine)) for v in spread]
    assert ratios == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_small_blocks_change_nothing(catalog):
    child, candidates = catalog
    whole, whole_ratios = weightspace.weight_evidence(candidates, child, outward=True)
    blocks, block_ratios = weightspace.weight_evidence(
        candidates, child, outward=True, block_budget=50
    )
    for a, b in zip(whole, blocks, strict=True):
        assert a.l2 == pytest.approx(b.l2, rel=1e-6)
        assert a.cosine == pytest.approx(b.cosine, rel=1e-6)
    assert whole_ratios == pytest.approx(block_ratios, rel=1e-6)


def test_one_by_one_equals_batched(catalog):
    child, candidates = catalog
    batched, _ = weightspace.weight_evidence(candidates, child)
    for candidate, pair in zip(candidates, batched, strict=True):
        alone = weightspace.weight_evidence([candidate], child)[0][0]
        assert alone.l2 == pytest.approx(pair.l2, rel=1e-6)
        assert alone.cosine == pytest.approx(pair.cosine, rel=1e-6)


def test_stored_norms_give_the_same_evidence(catalog):
    """Registered candidates' norms come from their stored statistics instead of their blocks;
    the evidence is the plain arithmetic's either way, with some candidates stored and some not."""
    child, candidates = catalog
    fresh = []
    for number, candidate in enumerate(candidates):
        reopened = load_model(candidate.path, candidate.name)
        if number % 2 == 0:
            weightspace.save_statistics(reopened, candidate.path)
            reopened = load_model(candidate.path, candidate.name)
            assert weightspace.load_statistics(reopened, candidate.path)
            name = next(iter(reopened.weights.infos))
            stored = weightspace.stored_squared_norm(reopened, name)
            assert stored == pytest.approx(float(reopened.weights[name].double().pow(2).sum()))
        fresh.append(reopened)
    evidence, _ = weightspace.weight_evidence(fresh, load_model(child.path, "child"))
    for candidate, pair in zip(fresh, evidence, strict=True):
        l2, cos, norm = _plain(candidate, child)
        assert pair.l2 == pytest.approx(l2, rel=1e-5)
        assert pair.cosine == pytest.approx(cos, rel=1e-5)
        assert pair.parent_norm == pytest.approx(norm, rel=1e-5)
    for number, candidate in enumerate(fresh):
        (candidate.path / weightspace.STATISTICS_FILE).unlink(missing_ok=True)
        assert (number % 2 == 0) == ("spectrum" in candidate.cache)


@pytest.mark.parametrize("method", ["auto", "weight-l2", "weight-cos", "weight-spectrum", "l2"])
def test_rankings_are_identical(catalog, method, tmp_path):
    child_model, candidates = catalog
    fresh = [load_model(c.path, c.name) for c in candidates]  # no evidence cached yet
    one = rank_candidates(load_model(child_model.path, "child"), fresh, method, batched=False)
    fresh = [load_model(c.path, c.name) for c in candidates]
    many = rank_candidates(load_model(child_model.path, "child"), fresh, method, batched=True)
    assert [c.parent for c in one.candidates] == [c.parent for c in many.candidates]
    for a, b in zip(one.candidates, many.candidates, strict=True):
        assert a.score == pytest.approx(b.score, rel=1e-5, abs=1e-9)
    assert one.decision.parent == many.decision.parent
    assert one.decision.margin == pytest.approx(many.decision.margin, rel=1e-5, abs=1e-9)
    assert [s.parent for s in one.skipped] == [s.parent for s in many.skipped]
    if method != "l2":  # the function-space method needs the config the prefixed copy lacks
        assert many.candidates[0].parent == "parent"


def test_blocks_read_what_the_file_holds(catalog):
    child, _ = catalog
    name = "layers.0.weight"
    whole = child.weights[name].flatten()
    assert torch.equal(child.weights.read_block(name, 5, 301), whole[5:301])
    assert child.weights.read_block(name, 7, 7).numel() == 0


@pytest.mark.parametrize("config", [CONFIG, TINY_CNN_CONFIG, BERT], ids=["mlp", "cnn", "bert"])
def test_function_space_outputs_batched_equal_one_by_one(config, tmp_path):
    """f_p of several candidates from vectorised passes equals each candidate's own pass; the
    project's families and a transformers model are vectorised (not run one by one behind the
    scenes)."""
    root = initial_state(config, 0)
    folders = [save_model(tmp_path / f"p{i}", noisy_copy(root, 0.1, i), config) for i in range(4)]
    child_folder = save_model(tmp_path / "child", noisy_copy(root, 0.1, 9), config)

    def contexts():
        child = load_model(child_folder, "child")
        return [PairContext(load_model(f, f.name), child) for f in folders]

    alone = [ctx.parent_output for ctx in contexts()]
    batched = contexts()
    vectorised = batch_parent_outputs(batched, max_bytes=1 << 30)
    for ctx, expected in zip(batched, alone, strict=True):
        torch.testing.assert_close(ctx.parent_output, expected, rtol=1e-5, atol=1e-5)
        assert "states" not in ctx.__dict__  # no candidate's state is kept
    assert vectorised == len(folders)
    # a budget of one model per pass: still every output, one by one
    one_each = contexts()
    assert batch_parent_outputs(one_each, max_bytes=1) == 0
    for ctx, expected in zip(one_each, alone, strict=True):
        torch.testing.assert_close(ctx.parent_output, expected, rtol=1e-5, atol=1e-5)
