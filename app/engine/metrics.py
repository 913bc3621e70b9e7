"""Similarities between two batches of outputs, and their gradients for the Taylor shortcut.

Every similarity takes a = f_p(x) and b = f_c(x), both (N, K), and returns a 0-d tensor; higher
means more alike. d = a − b. Symbols follow the paper (see shared/paper.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LSE_TEMPERATURE = 1.0


def lp_similarity(a: torch.Tensor, b: torch.Tensor, p: float) -> torch.Tensor:
    """s = −(1/NK) Σ_i ‖a_i − b_i‖_p^p."""
    return -(a - b).abs().pow(p).mean()


def l1_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """s = −(1/NK) Σ_i ‖a_i − b_i‖_1."""
    return lp_similarity(a, b, 1.0)


def l2_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """s = −(1/NK) Σ_i ‖a_i − b_i‖_2²."""
    return lp_similarity(a, b, 2.0)


def l4_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """s = −(1/NK) Σ_i ‖a_i − b_i‖_4⁴."""
    return lp_similarity(a, b, 4.0)


def linf_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """s = −(1/N) Σ_i max_k |a_ik − b_ik|."""
    return -(a - b).abs().amax(dim=1).mean()


def lse_similarity(a: torch.Tensor, b: torch.Tensor, t: float = LSE_TEMPERATURE) -> torch.Tensor:
    """s = −(1/NKt) Σ_i log Σ_k exp(t·|a_ik − b_ik|)."""
    n, k = a.shape
    return -torch.logsumexp(t * (a - b).abs(), dim=1).sum() / (n * k * t)


def _centre(kernel: torch.Tensor) -> torch.Tensor:
    """H K H with H = I − 11ᵀ/N."""
    return kernel - kernel.mean(0, keepdim=True) - kernel.mean(1, keepdim=True) + kernel.mean()


def _alignment(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:  # noqa: E741 (paper's symbol)
    """HSIC(K, L) / sqrt(HSIC(K, K)·HSIC(L, L)) for already-centred matrices."""
    hsic_kl = (k * l).sum()
    denominator = ((k * k).sum() * (l * l).sum()).sqrt()
    return hsic_kl / denominator.clamp_min(torch.finfo(k.dtype).tiny)


def cka_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Linear CKA: K = aaᵀ, L = bbᵀ, centred, CKA = HSIC(K,L)/sqrt(HSIC(K,K)·HSIC(L,L))."""
    a64, b64 = a.double(), b.double()
    return _alignment(_centre(a64 @ a64.T), _centre(b64 @ b64.T)).to(a.dtype)


def dc_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distance correlation: the same ratio on double-centred pairwise distance matrices."""
    a64, b64 = a.double(), b.double()
    return _alignment(_centre(torch.cdist(a64, a64)), _centre(torch.cdist(b64, b64))).to(a.dtype)


# Similarities by name; every function-space method applies one of these.
SIMILARITIES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "l1": l1_similarity,
    "l2": l2_similarity,
    "l4": l4_similarity,
    "linf": linf_similarity,
    "lse": lse_similarity,
    "cka": cka_similarity,
    "dc": dc_similarity,
}


def lp_gradient(d: torch.Tensor, p: float) -> torch.Tensor:
    """Π = ∂s/∂f_p for the l_p similarity: −p·sign(d)·|d|^(p−1)/(NK)."""
    n, k = d.shape
    return -p * d.sign() * d.abs().pow(p - 1) / (n * k)


def lse_gradient(d: torch.Tensor, t: float = LSE_TEMPERATURE) -> torch.Tensor:
    """Π = ∂s/∂f_p for LSE: −sign(d)·softmax_k(t|d|)/(NK)."""
    n, k = d.shape
    return -d.sign() * torch.softmax(t * d.abs(), dim=1) / (n * k)


# Closed-form Π(d) for the similarities the Taylor shortcut supports (the paper's list).
SIMILARITY_GRADIENTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "l1": lambda d: lp_gradient(d, 1.0),
    "l2": lambda d: lp_gradient(d, 2.0),
    "l4": lambda d: lp_gradient(d, 4.0),
    "lse": lse_gradient,
}
