"""Similarities and their closed-form gradients, checked against hand-computed values.

Reference values are written out as literals or computed with plain Python loops over lists, never
with the torch expressions the implementation uses.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from app.engine import metrics
from app.engine.metrics import (
    SIMILARITIES,
    SIMILARITY_GRADIENTS,
    cka_similarity,
    dc_similarity,
    lse_gradient,
    lse_similarity,
)

# A 2×2 example: d = a − b = [[1, −2], [0, −2.5]].
A = [[1.0, 2.0], [3.0, -1.0]]
B = [[0.0, 4.0], [3.0, 1.5]]


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def _lse_by_hand(t: float) -> float:
    # rows of |d|: [1, 2] and [0, 2.5]; N·K = 4
    row0 = math.log(math.exp(t * 1.0) + math.exp(t * 2.0))
    row1 = math.log(math.exp(t * 0.0) + math.exp(t * 2.5))
    return -(row0 + row1) / (4 * t)


HAND_VALUES = {
    "l1": -(1.0 + 2.0 + 0.0 + 2.5) / 4,  # −1.375
    "l2": -(1.0 + 4.0 + 0.0 + 6.25) / 4,  # −2.8125
    "l4": -(1.0 + 16.0 + 0.0 + 39.0625) / 4,  # −14.015625
    "linf": -(2.0 + 2.5) / 2,  # mean over rows of the largest |d|
}


@pytest.mark.parametrize("name", ["l1", "l2", "l4", "linf"])
def test_distance_similarity_on_2x2_by_hand(name):
    value = float(SIMILARITIES[name](_t(A), _t(B)))
    assert value == pytest.approx(HAND_VALUES[name], rel=1e-12)


def test_lse_on_2x2_by_hand():
    value = float(SIMILARITIES["lse"](_t(A), _t(B)))
    assert value == pytest.approx(_lse_by_hand(metrics.LSE_TEMPERATURE), rel=1e-12)
    assert float(lse_similarity(_t(A), _t(B), t=1.0)) == pytest.approx(_lse_by_hand(1.0), rel=1e-12)
    assert float(lse_similarity(_t(A), _t(B), t=0.5)) == pytest.approx(_lse_by_hand(0.5), rel=1e-12)


def _rand_rows(rng: random.Random, n: int, k: int) -> list[list[float]]:
    return [[rng.uniform(-2.0, 2.0) for _ in range(k)] for _ in range(n)]


def _distances_by_loops(a, b, name, t=1.0):
    n, k = len(a), len(a[0])
    total = 0.0
    for i in range(n):
        diffs = [abs(a[i][j] - b[i][j]) for j in range(k)]
        if name == "l1":
            total += sum(diffs) / (n * k)
        elif name == "l2":
            total += sum(x * x for x in diffs) / (n * k)
        elif name == "l4":
            total += sum(x**4 for x in diffs) / (n * k)
        elif name == "linf":
            total += max(diffs) / n
        elif name == "lse":
            total += math.log(sum(math.exp(t * x) for x in diffs)) / (n * k * t)
    return -total


@pytest.mark.parametrize("name", ["l1", "l2", "l4", "linf", "lse"])
def test_distance_similarity_on_3x2_by_loops(name):
    rng = random.Random(7)
    a, b = _rand_rows(rng, 3, 2), _rand_rows(rng, 3, 2)
    expected = _distances_by_loops(a, b, name, metrics.LSE_TEMPERATURE)
    assert float(SIMILARITIES[name](_t(a), _t(b))) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", ["l1", "l2", "l4", "linf", "lse"])
def test_distance_similarity_is_symmetric_and_highest_on_identity(name):
    rng = random.Random(3)
    a, b = _t(_rand_rows(rng, 4, 3)), _t(_rand_rows(rng, 4, 3))
    fn = SIMILARITIES[name]
    assert float(fn(a, b)) == pytest.approx(float(fn(b, a)), rel=1e-12)
    assert float(fn(a, b)) < float(fn(a, a))
    if name != "lse":  # lse(a, a) = −log K / (K t), not 0
        assert float(fn(a, a)) == 0.0


# ---------------------------------------------------------------- CKA and distance correlation


def _double_centre(m: list[list[float]]) -> list[list[float]]:
    """H M H for a square list matrix, written out: subtract row and column means, add the mean."""
    n = len(m)
    row_mean = [sum(m[i][j] for j in range(n)) / n for i in range(n)]
    col_mean = [sum(m[i][j] for i in range(n)) / n for j in range(n)]
    grand = sum(row_mean) / n
    return [[m[i][j] - row_mean[i] - col_mean[j] + grand for j in range(n)] for i in range(n)]


def _ratio(kc, lc) -> float:
    n = len(kc)
    kl = sum(kc[i][j] * lc[i][j] for i in range(n) for j in range(n))
    kk = sum(kc[i][j] ** 2 for i in range(n) for j in range(n))
    ll = sum(lc[i][j] ** 2 for i in range(n) for j in range(n))
    return kl / math.sqrt(kk * ll)


def _gram(a):
    return [[sum(x * y for x, y in zip(ai, aj, strict=True)) for aj in a] for ai in a]


def _dist(a):
    return [
        [math.sqrt(sum((x - y) ** 2 for x, y in zip(ai, aj, strict=True))) for aj in a] for ai in a
    ]


def _cka_loops(a, b) -> float:
    return _ratio(_double_centre(_gram(a)), _double_centre(_gram(b)))


def _dc_loops(a, b) -> float:
    return _ratio(_double_centre(_dist(a)), _double_centre(_dist(b)))


def test_cka_one_feature_is_squared_pearson_by_hand():
    # 1-d features: linear CKA = r². x_c = [−1, 0, 1], y_c = [−1, 1, 0]: r = 1/2, r² = 1/4.
    a, b = [[1.0], [2.0], [3.0]], [[1.0], [3.0], [2.0]]
    assert float(cka_similarity(_t(a), _t(b))) == pytest.approx(0.25, rel=1e-12)


def test_cka_3x2_by_hand():
    # X_c = [[2,−1],[−1,2],[−1,−1]]/3, Y_c = [[2,−1],[−1,−1],[−1,2]]/3.
    # ‖Y_cᵀX_c‖² = 7/9, ‖X_cᵀX_c‖ = ‖Y_cᵀY_c‖ = sqrt(10/9) → CKA = 7/10.
    a = [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    b = [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    assert float(cka_similarity(_t(a), _t(b))) == pytest.approx(0.7, rel=1e-12)
    assert _cka_loops(a, b) == pytest.approx(0.7, rel=1e-12)


def test_dc_3x1_by_hand():
    # x = [0, 1, 2], y = [0, 2, 1]: A = [[−10,2,8],[2,−4,2],[8,2,−10]]/9,
    # B = [[−10,8,2],[8,−10,2],[2,2,−4]]/9; ΣAB = 252/81, ΣA² = ΣB² = 360/81 → 0.7.
    a, b = [[0.0], [1.0], [2.0]], [[0.0], [2.0], [1.0]]
    assert float(dc_similarity(_t(a), _t(b))) == pytest.approx(0.7, rel=1e-12)
    assert _dc_loops(a, b) == pytest.approx(0.7, rel=1e-12)


def test_two_samples_give_one():
    # With N = 2 every centred kernel is c·[[1, −1], [−1, 1]]: CKA = DC = 1.
    a, b = [[1.0, 2.0], [0.5, -1.0]], [[3.0, 0.0], [-2.0, 7.0]]
    assert float(cka_similarity(_t(a), _t(b))) == pytest.approx(1.0, rel=1e-12)
    assert float(dc_similarity(_t(a), _t(b))) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cka_and_dc_match_loops(seed):
    rng = random.Random(seed)
    a, b = _rand_rows(rng, 6, 3), _rand_rows(rng, 6, 2)
    assert float(cka_similarity(_t(a), _t(b))) == pytest.approx(_cka_loops(a, b), rel=1e-10)
    assert float(dc_similarity(_t(a), _t(b))) == pytest.approx(_dc_loops(a, b), rel=1e-10)


def _orthogonal(k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))
    return q


@pytest.mark.parametrize("name", ["cka", "dc"])
def test_cka_dc_properties(name):
    fn = SIMILARITIES[name]
    g = torch.Generator().manual_seed(11)
    a = torch.randn(8, 4, generator=g, dtype=torch.float64)
    b = torch.randn(8, 4, generator=g, dtype=torch.float64) + 0.5 * a
    base = float(fn(a, b))
    assert float(fn(a, a)) == pytest.approx(1.0, rel=1e-12)
    assert 0.0 <= base <= 1.0
    assert base < 0.999  # unrelated enough that invariance checks below mean something
    q = _orthogonal(4, 5)
    assert float(fn(a, b @ q)) == pytest.approx(base, rel=1e-10)
    assert float(fn(a @ q, b)) == pytest.approx(base, rel=1e-10)
    assert float(fn(a, 3.7 * b)) == pytest.approx(base, rel=1e-10)
    assert float(fn(0.2 * a, b)) == pytest.approx(base, rel=1e-10)
    # symmetric in its arguments
    assert float(fn(b, a)) == pytest.approx(base, rel=1e-10)


def test_cka_is_not_invariant_to_anisotropic_scaling():
    g = torch.Generator().manual_seed(12)
    a = torch.randn(8, 3, generator=g, dtype=torch.float64)
    b = torch.randn(8, 3, generator=g, dtype=torch.float64)
    scale = torch.tensor([1.0, 10.0, 0.1], dtype=torch.float64)
    assert float(cka_similarity(a, b * scale)) != pytest.approx(float(cka_similarity(a, b)))


@pytest.mark.parametrize("name", ["cka", "dc"])
@pytest.mark.parametrize("seed", range(5))
def test_cka_dc_in_unit_interval(name, seed):
    g = torch.Generator().manual_seed(100 + seed)
    a = torch.randn(10, 5, generator=g)
    b = torch.randn(10, 3, generator=g)
    value = float(SIMILARITIES[name](a, b))
    assert 0.0 <= value <= 1.0 + 1e-6


# ---------------------------------------------------------------- closed-form gradients


@pytest.mark.parametrize("name", ["l1", "l2", "l4", "lse"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closed_form_gradient_matches_autograd(name, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(6, 4, generator=g, dtype=torch.float64)
    b = torch.randn(6, 4, generator=g, dtype=torch.float64)
    assert (a - b).abs().min() > 1e-3  # l1 is not differentiable at d = 0
    a.requires_grad_(True)
    (expected,) = torch.autograd.grad(SIMILARITIES[name](a, b), a)
    closed = SIMILARITY_GRADIENTS[name](a.detach() - b)
    assert closed.shape == a.shape
    torch.testing.assert_close(closed, expected, rtol=1e-10, atol=1e-14)


def test_lse_gradient_matches_autograd_at_other_temperature():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 3, generator=g, dtype=torch.float64)
    (expected,) = torch.autograd.grad(lse_similarity(a, b, t=2.5), a)
    torch.testing.assert_close(lse_gradient(a.detach() - b, t=2.5), expected, rtol=1e-10, atol=0)


def test_l2_gradient_by_hand():
    # Π = −2d/(NK) with d = [[1, −2], [0, −2.5]], NK = 4.
    d = _t(A) - _t(B)
    expected = _t([[-0.5, 1.0], [0.0, 1.25]])
    torch.testing.assert_close(SIMILARITY_GRADIENTS["l2"](d), expected, rtol=0, atol=1e-15)
