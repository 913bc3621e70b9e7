"""The linearised parent f̄_p(x) = f_p(x) + J_θ f_p(x)·(θ_c − θ_p), exactly and by Taylor shortcut.

- ``linearized_outputs``: one forward-mode Jacobian-vector product (``torch.func.jvp``) gives f_p
  and J·Δθ together; any similarity can then compare f̄_p with f_c. No scale α is needed.
- ``taylor_terms``: the paper's efficient form. Expanding s once more,
      s(f̄_p, f_c) ≈ s(f_p, f_c) + α · ∇_θ[Σ_i sg(Π_i)·f_p(x_i)] · Δθ,   Π_i = ∂s/∂f_p(x_i),
  one vector-Jacobian product per similarity, then a dot product with Δθ. α = 1 is the plain
  first-order expansion; the reference code scales it down (α = 0.01) because for l2 the expansion
  overshoots (it omits −‖JΔθ‖²/NK, see tests).

Only parameters move; buffers (BatchNorm statistics) stay the parent's.
"""

from __future__ import annotations

import torch
from torch.func import jvp, vjp

from app.engine.architectures import Network
from app.engine.metrics import SIMILARITIES, SIMILARITY_GRADIENTS


def _split(network: Network, state: dict[str, torch.Tensor]):
    names = set(network.param_names)
    params = {n: t for n, t in state.items() if n in names}
    buffers = {n: t for n, t in state.items() if n not in names}
    return params, buffers


def parameter_delta(
    network: Network,
    parent_state: dict[str, torch.Tensor],
    child_state: dict[str, torch.Tensor],
    use_head: bool,
) -> dict[str, torch.Tensor]:
    """Δθ = θ_c − θ_p over the network's parameters; zero on a head that f does not use."""
    delta = {}
    for name in network.param_names:
        if not use_head and name in network.head:
            delta[name] = torch.zeros_like(parent_state[name])
        else:
            delta[name] = child_state[name] - parent_state[name]
    return delta


def linearized_outputs(
    network: Network,
    parent_state: dict[str, torch.Tensor],
    delta: dict[str, torch.Tensor],
    x: torch.Tensor,
    use_head: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(f_p(x), f̄_p(x)), both (N, K), from one forward-mode JVP."""
    params, buffers = _split(network, parent_state)

    def f(p):
        return network.output({**p, **buffers}, x, use_head)

    tangents = {n: delta[n] for n in params}
    f_p, jacobian_delta = jvp(f, (params,), (tangents,))
    return f_p.detach(), (f_p + jacobian_delta).detach()


def taylor_terms(
    network: Network,
    parent_state: dict[str, torch.Tensor],
    delta: dict[str, torch.Tensor],
    x: torch.Tensor,
    f_c: torch.Tensor,
    use_head: bool,
    names: list[str],
) -> dict[str, tuple[float, float]]:
    """(s(f_p, f_c), ⟨vjp(Π), Δθ⟩) for each similarity name (keys of SIMILARITY_GRADIENTS).

    One forward pass, then one VJP per similarity: the correction term is
    ⟨vjp(Π), Δθ⟩ = Σ_i Π_i · J_i Δθ. The Taylor similarity is base + α·correction.
    """
    params, buffers = _split(network, parent_state)

    def f(p):
        return network.output({**p, **buffers}, x, use_head)

    f_p, pullback = vjp(f, params)
    f_p = f_p.detach()
    d = f_p - f_c
    results = {}
    for name in names:
        pi = SIMILARITY_GRADIENTS[name](d)  # (N, K)
        (grads,) = pullback(pi)
        correction = sum((grads[n] * delta[n]).sum() for n in params)
        results[name] = (float(SIMILARITIES[name](f_p, f_c)), float(correction))
    return results
