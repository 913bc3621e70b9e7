"""The linearised parent f̄_p = f_p + J·Δθ, exactly (JVP) and by the Taylor shortcut (VJP).

References are built here with plain reverse-mode autograd (full Jacobians), on tiny real networks
in float64: an MLP with tanh (so second-order terms are non-zero) and a small ResNet with BatchNorm
buffers (kept at the parent's values). The Taylor tests run both paths: one VJP per similarity
(the paper's) and every similarity from one JVP (the benchmark's).
"""

from __future__ import annotations

import math

import pytest
import torch

from app.bench.evaluate import _score_query
from app.engine import linearize
from app.engine.architectures import build_network
from app.engine.linearize import (
    jacobian_delta,
    linearized_outputs,
    parameter_delta,
    taylor_term,
    taylor_terms,
)
from app.engine.methods import METHODS, PAIRWISE_KINDS, MethodKind, PairContext, method_names
from app.engine.metrics import SIMILARITIES, SIMILARITY_GRADIENTS, l1_similarity, l2_similarity
from app.engine.model_files import load_model, save_model
from tests.factories import TINY_CNN_CONFIG as CNN_CONFIG

MLP_CONFIG = {"model_type": "lineage-mlp", "sizes": [6, 5, 4], "activation": "tanh"}
CONFIGS = {"mlp": MLP_CONFIG, "cnn": CNN_CONFIG}
NUM_INPUTS = 5
# The two ways the engine computes the Taylor terms: one VJP per similarity, or one JVP for all.
TAYLOR_PATHS = ["vjp", "jvp"]


def taylor_similarities(network, parent, delta, x, f_c, use_head, alphas, path):
    """s(f_p, f_c) + α·correction per similarity, from the engine's Taylor terms by ``path``."""
    if path == "vjp":
        terms = {n: taylor_term(network, parent, delta, x, f_c, use_head, n) for n in alphas}
    else:
        f_p, j_delta = jacobian_delta(network, parent, delta, x, use_head)
        terms = taylor_terms(f_p, j_delta, f_c, list(alphas))
    return {name: base + alphas[name] * corr for name, (base, corr) in terms.items()}


def _parent(config: dict, seed: int = 0, dtype=torch.float64):
    """A network and a parent state (BatchNorm statistics and affine made non-trivial)."""
    network = build_network(config)  # reseeds the global RNG itself
    network.module.to(dtype)
    torch.manual_seed(seed)
    params = set(network.param_names)
    state = {}
    for name, tensor in network.module.state_dict().items():
        t = tensor.detach().clone()
        if name.endswith("running_mean"):
            t = 0.1 * torch.randn_like(t)
        elif name.endswith("running_var"):
            t = 0.5 + torch.rand_like(t)
        elif name in params:  # every seed gives different weights (BN weights stay near 1)
            t = t + 0.2 * torch.randn_like(t)
        state[name] = t
    return network, state


def _inputs(config: dict, seed: int = 123, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if config["model_type"] == "lineage-mlp":
        shape = (NUM_INPUTS, config["sizes"][0])
    else:
        shape = (NUM_INPUTS, config["in_channels"], config["image_size"], config["image_size"])
    return torch.randn(*shape, generator=g).to(dtype)


def _direction(network, state, seed: int = 1) -> dict[str, torch.Tensor]:
    """A random direction on the parameters only (buffers never move)."""
    g = torch.Generator().manual_seed(seed)
    return {
        n: torch.randn(state[n].shape, generator=g).to(state[n].dtype) for n in network.param_names
    }


def _child(state, direction, scale: float) -> dict[str, torch.Tensor]:
    child = dict(state)
    for n, v in direction.items():
        child[n] = state[n] + scale * v
    return child


def _forward(network, state, x, use_head=True) -> torch.Tensor:
    with torch.no_grad():
        return network.output(state, x, use_head)


def _explicit_linearisation(network, state, delta, x, use_head):
    """(f_p, f_p + J·Δθ): the full Jacobian by reverse-mode autograd, parameter by parameter."""

    def flat_output(s):
        return network.output(s, x, use_head).reshape(-1)

    f_p = flat_output(state).detach()
    jd = torch.zeros_like(f_p)
    for name in network.param_names:

        def of_param(p, name=name):
            return flat_output({**state, name: p})

        jac = torch.autograd.functional.jacobian(of_param, state[name])  # (NK, *shape)
        jd = jd + jac.reshape(f_p.numel(), -1) @ delta[name].reshape(-1)
    n = x.shape[0]
    return f_p.reshape(n, -1), (f_p + jd).reshape(n, -1)


@pytest.mark.parametrize("use_head", [True, False])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_exact_linearisation_equals_explicit_jacobian(arch, use_head):
    config = CONFIGS[arch]
    network, parent = _parent(config)
    x = _inputs(config)
    child = _child(parent, _direction(network, parent), 0.1)
    delta = parameter_delta(network, parent, child, use_head=True)
    f_p, f_bar = linearized_outputs(network, parent, delta, x, use_head)
    ref_p, ref_bar = _explicit_linearisation(network, parent, delta, x, use_head)
    assert f_p.dtype == torch.float64 and f_bar.shape == ref_bar.shape
    torch.testing.assert_close(f_p, ref_p, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f_p, _forward(network, parent, x, use_head), rtol=1e-12, atol=1e-12)
    # the correction is far from negligible, so this comparison can fail
    assert (ref_bar - ref_p).abs().max() > 1e-2
    torch.testing.assert_close(f_bar, ref_bar, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_buffers_stay_the_parents(arch):
    """Δθ covers parameters only; a child whose buffers differ linearises like the parent's."""
    config = CONFIGS[arch]
    network, parent = _parent(config)
    x = _inputs(config)
    child = _child(parent, _direction(network, parent), 0.05)
    delta = parameter_delta(network, parent, child, use_head=True)
    assert set(delta) == set(network.param_names)
    _, f_bar = linearized_outputs(network, parent, delta, x, True)
    _, ref_bar = _explicit_linearisation(network, parent, delta, x, True)
    torch.testing.assert_close(f_bar, ref_bar, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_linearisation_error_is_second_order(arch):
    config = CONFIGS[arch]
    network, parent = _parent(config)
    x = _inputs(config)
    direction = _direction(network, parent)
    # tanh is smooth: Δθ ~ 1e-3 is already in the quadratic regime. The ResNet's ReLUs have
    # pre-activations as small as ~5e-4 on these inputs, so a step that large crosses kinks (the
    # error is then first order there); 1e-5 stays inside one linear piece.
    base = 1e-3 if arch == "mlp" else 1e-5
    errors = []
    for scale in (base, base / 2, base / 4):
        child = _child(parent, direction, scale)
        f_c = _forward(network, child, x)
        delta = parameter_delta(network, parent, child, use_head=True)
        f_p, f_bar = linearized_outputs(network, parent, delta, x, True)
        plain_error = (f_p - f_c).abs().max().item()
        lin_error = (f_bar - f_c).abs().max().item()
        assert lin_error < 1e-2 * plain_error  # f̄_p is much closer to f_c than f_p is
        errors.append(lin_error)
    for big, small in zip(errors[:-1], errors[1:], strict=True):
        assert 3.5 < big / small < 4.5  # halve Δθ, the error falls ~4×


def _true_pair(config, scale, seed=1):
    network, parent = _parent(config)
    x = _inputs(config)
    child = _child(parent, _direction(network, parent, seed), scale)
    delta = parameter_delta(network, parent, child, use_head=True)
    return network, parent, child, delta, x


@pytest.mark.parametrize("path", TAYLOR_PATHS)
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_taylor_l2_is_exact_linearised_l2_plus_the_omitted_square(arch, path):
    network, parent, child, delta, x = _true_pair(CONFIGS[arch], 0.05)
    f_c = _forward(network, child, x)
    taylor = taylor_similarities(network, parent, delta, x, f_c, True, {"l2": 1.0}, path)["l2"]
    f_p, f_bar = linearized_outputs(network, parent, delta, x, True)
    exact = float(l2_similarity(f_bar, f_c))
    omitted = float(((f_bar - f_p) ** 2).mean())  # ‖JΔθ‖²/NK
    assert omitted > 1e-3 * abs(exact) and omitted > 1e-8
    assert taylor == pytest.approx(exact + omitted, rel=1e-9, abs=1e-14)
    assert taylor > exact  # the shortcut overshoots for l2


@pytest.mark.parametrize("path", TAYLOR_PATHS)
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_taylor_l1_equals_exact_linearised_l1_when_no_sign_flips(arch, path):
    config = CONFIGS[arch]
    network, parent, _, delta, x = _true_pair(config, 1e-4)
    # Compare against an unrelated output, so d is O(1) and a tiny JΔθ flips no sign of d.
    stranger_network, stranger = _parent(config, seed=99)
    f_c = _forward(stranger_network, stranger, x)
    f_p, f_bar = linearized_outputs(network, parent, delta, x, True)
    d, d_bar = f_p - f_c, f_bar - f_c
    assert torch.equal(d.sign(), d_bar.sign()) and d.abs().min() > 1e-6
    taylor = taylor_similarities(network, parent, delta, x, f_c, True, {"l1": 1.0}, path)["l1"]
    exact = float(l1_similarity(f_bar, f_c))
    direct = float(l1_similarity(f_p, f_c))
    assert abs(exact - direct) > 1e-7  # the correction is visible at this precision
    assert taylor == pytest.approx(exact, rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("path", TAYLOR_PATHS)
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_taylor_is_first_order_accurate_for_l4_and_lse(arch, path):
    """For smooth s the shortcut differs from s(f̄_p, f_c) at second order in Δθ."""
    config = CONFIGS[arch]
    network, parent = _parent(config)
    x = _inputs(config)
    stranger_network, stranger = _parent(config, seed=99)
    f_c = _forward(stranger_network, stranger, x)
    direction = _direction(network, parent)
    gaps = {"l4": [], "lse": []}
    for scale in (1e-3, 5e-4):
        delta = {n: scale * v for n, v in direction.items()}
        alphas = {"l4": 1.0, "lse": 1.0}
        taylor = taylor_similarities(network, parent, delta, x, f_c, True, alphas, path)
        _, f_bar = linearized_outputs(network, parent, delta, x, True)
        for name in gaps:
            gaps[name].append(abs(taylor[name] - float(SIMILARITIES[name](f_bar, f_c))))
    for name, (big, small) in gaps.items():
        assert 3.0 < big / small < 5.0, name


@pytest.mark.parametrize("path", TAYLOR_PATHS)
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_taylor_with_alpha_zero_is_the_direct_similarity(arch, path):
    network, parent, child, delta, x = _true_pair(CONFIGS[arch], 0.05)
    f_c = _forward(network, child, x)
    f_p = _forward(network, parent, x)
    alphas = dict.fromkeys(SIMILARITY_GRADIENTS, 0.0)
    taylor = taylor_similarities(network, parent, delta, x, f_c, True, alphas, path)
    assert set(taylor) == set(SIMILARITY_GRADIENTS)
    for name, value in taylor.items():
        assert value == pytest.approx(float(SIMILARITIES[name](f_p, f_c)), rel=1e-12), name


@pytest.mark.parametrize("use_head", [True, False])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_one_vjp_per_similarity_equals_all_from_one_jvp(arch, use_head):
    """⟨Jᵀ Π, Δθ⟩ (a VJP per similarity) = ⟨Π, J Δθ⟩ (one JVP for all), for a true child's
    outputs and for an unrelated model's."""
    config = CONFIGS[arch]
    network, parent, child, delta, x = _true_pair(config, 0.05)
    stranger_network, stranger = _parent(config, seed=99)
    f_p, j_delta = jacobian_delta(network, parent, delta, x, use_head)
    for other_network, other in ((network, child), (stranger_network, stranger)):
        f_c = _forward(other_network, other, x, use_head)
        batched = taylor_terms(f_p, j_delta, f_c, list(SIMILARITY_GRADIENTS))
        assert set(batched) == set(SIMILARITY_GRADIENTS)
        for name, (base, correction) in batched.items():
            single = taylor_term(network, parent, delta, x, f_c, use_head, name)
            assert abs(correction) > 1e-6 * abs(base) and abs(correction) > 1e-12, name
            assert single[0] == base, name
            assert single[1] == pytest.approx(correction, rel=1e-10, abs=1e-15), name


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_parameter_delta_zero_on_head_without_head(arch):
    network, parent, child, _, _ = _true_pair(CONFIGS[arch], 0.05)
    assert network.head and network.head <= set(network.param_names)
    without = parameter_delta(network, parent, child, use_head=False)
    with_head = parameter_delta(network, parent, child, use_head=True)
    for name in network.param_names:
        diff = child[name] - parent[name]
        assert diff.abs().max() > 0
        torch.testing.assert_close(with_head[name], diff, rtol=0, atol=0)
        if name in network.head:
            assert torch.count_nonzero(without[name]) == 0
        else:
            torch.testing.assert_close(without[name], diff, rtol=0, atol=0)


# ---------------------------------------------------------------- through PairContext


def _saved(tmp_path, name, state, config):
    folder = save_model(tmp_path / name, state, config)
    return load_model(folder, name)


def _float32_models(tmp_path, config, noise):
    network, parent = _parent(config, dtype=torch.float32)
    params = set(network.param_names)
    g = torch.Generator().manual_seed(5)
    child = {
        n: (t + noise * torch.randn(t.shape, generator=g) if n in params else t.clone())
        for n, t in parent.items()
    }
    same = {n: t.clone() for n, t in parent.items()}
    return (
        _saved(tmp_path, "parent", parent, config),
        _saved(tmp_path, "child", child, config),
        _saved(tmp_path, "same", same, config),
    )


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_every_method_through_pair_context(tmp_path, arch):
    parent, child, same = _float32_models(tmp_path, CONFIGS[arch], noise=1e-2)
    ctx = PairContext(parent, child, num_probes=16)
    scores = {name: METHODS[name].score(ctx) for name in method_names(*PAIRWISE_KINDS)}
    for name, score in scores.items():
        assert isinstance(score, float), name
        assert math.isfinite(score), name
    # the linearised parent explains a small fine-tune much better than the plain parent does
    assert scores["lin-l1"] > scores["l1"]
    assert scores["lin-l2"] > scores["l2"]

    identical = PairContext(parent, same, num_probes=16)
    assert METHODS["lin-l2"].score(identical) == 0.0
    assert METHODS["l2"].score(identical) == 0.0


class _PassCounter:
    """Counts the engine's VJPs (backward passes of ``linearize._pullback``) and JVPs, by
    wrapping what ``linearize`` calls."""

    def __init__(self, monkeypatch):
        self.vjps = self.pullbacks = self.jvps = 0
        real_pullback, real_jvp = linearize._pullback, linearize.jvp

        def counting_pullback(*args, **kwargs):
            self.vjps += 1
            self.pullbacks += 1
            return real_pullback(*args, **kwargs)

        def counting_jvp(*args, **kwargs):
            self.jvps += 1
            return real_jvp(*args, **kwargs)

        monkeypatch.setattr(linearize, "_pullback", counting_pullback)
        monkeypatch.setattr(linearize, "jvp", counting_jvp)

    @property
    def passes(self) -> tuple[int, int, int]:
        return self.vjps, self.pullbacks, self.jvps


TAYLOR_METHODS = method_names(MethodKind.TAYLOR)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_one_taylor_method_runs_one_vjp(tmp_path, monkeypatch, arch):
    parent, child, _ = _float32_models(tmp_path, CONFIGS[arch], noise=1e-2)
    counter = _PassCounter(monkeypatch)
    ctx = PairContext(parent, child, num_probes=16)
    alone = METHODS["taylor-l2"].score(ctx)
    assert counter.passes == (1, 1, 0)
    assert METHODS["taylor-l2"].score(ctx) == alone  # cached
    assert counter.passes == (1, 1, 0)
    METHODS["taylor-l1"].score(ctx)
    assert counter.passes == (2, 2, 0)  # another similarity, another VJP
    # Once the pair's JVP exists (lin-* scores, the benchmark's terms), it serves the rest.
    METHODS["lin-l2"].score(ctx)
    METHODS["taylor-l4"].score(ctx)
    METHODS["taylor-lse"].score(ctx)
    assert counter.passes == (2, 2, 1)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_taylor_scores_are_the_same_by_either_path(tmp_path, arch):
    """A taylor-* method alone (one VJP) scores as from the batched terms (one JVP), in float32."""
    parent, child, _ = _float32_models(tmp_path, CONFIGS[arch], noise=1e-2)
    for alpha in (None, 1.0):
        batched = PairContext(parent, child, num_probes=16, taylor_alpha=alpha)
        terms = batched.taylor_terms
        for name in TAYLOR_METHODS:
            similarity = name.removeprefix("taylor-")
            alone = PairContext(parent, child, num_probes=16, taylor_alpha=alpha)
            base, correction = alone.taylor_term(similarity)
            assert base == terms[similarity][0], name
            assert correction == pytest.approx(terms[similarity][1], rel=1e-5), name
            score = METHODS[name].score(alone)
            # relative to the terms' size: base and α·correction may nearly cancel, and float32
            # kernels round differently from one CPU to another
            scale = abs(base) + abs(score - base)
            assert score == pytest.approx(METHODS[name].score(batched), abs=1e-5 * scale), name


def test_the_benchmark_gets_all_taylor_terms_from_one_jvp(tmp_path, monkeypatch):
    parent, child, same = _float32_models(tmp_path, MLP_CONFIG, noise=1e-2)
    models = {"parent": parent, "child": child, "same": same}
    query = {"child": "child", "candidates": ["parent", "same"], "truth": "parent"}
    methods = [*TAYLOR_METHODS, "lin-l2", "l2"]
    counter = _PassCounter(monkeypatch)
    record = _score_query(query, models.__getitem__, methods, torch.device("cpu"), 16)
    assert counter.passes == (0, 0, 2)  # one JVP per candidate, no VJP
    for name in TAYLOR_METHODS:
        similarity = name.removeprefix("taylor-")
        alone = [
            METHODS[name].score(PairContext(models[c], child, num_probes=16))
            for c in query["candidates"]
        ]
        assert record["scores"][name] == pytest.approx(alone, rel=1e-5), name
        assert len(record["taylor"][similarity]) == 2
