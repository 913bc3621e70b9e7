"""Taylor shortcut per pair at GPT-2-small size (issue 14): `python scripts/taylor_speed.py`.

A seeded random GPT-2-small parent (12 layers, 768-d, 12 heads, vocabulary 50257; 124 M
parameters) and a child = parent + 1 % seeded noise are saved as safetensors in a temporary
folder and opened with the engine. On the engine's probes for that architecture and the engine's
α for l2, each way of computing the Taylor terms is timed per pair (median over runs, after a
warm-up); each timed run starts from the two float32 states in memory and computes f_c, Δθ, its
passes and the score:

(a) the reference's approach, written here: a parent forward pass that keeps its graph, a child
    forward pass, one ``torch.autograd.grad`` of the l2 similarity's Π w.r.t. the parent's
    parameters, and a dot product with θ_c − θ_p;
(b) the engine's old path: one forward pass with its graph, then four pullbacks (one per
    similarity);
(c) ``taylor-l2`` now: ``linearize.taylor_term``, one VJP;
(d) the benchmark's batch: ``linearize.jacobian_delta`` (one JVP) and ``taylor_terms`` (four
    dot products).

A last row times ``taylor-l2`` as ``lineage detect`` runs it (``PairContext`` from the opened
models, weights into the network included). Prints a markdown table; the numbers are in
docs/benchmarks.md ("Taylor shortcut per pair (issue 14)").
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from torch.func import vjp

from app.bench import speed
from app.engine.architectures import pair_states
from app.engine.calibration import taylor_alpha
from app.engine.linearize import jacobian_delta, parameter_delta, taylor_term, taylor_terms
from app.engine.methods import METHODS, PairContext, network_for
from app.engine.metrics import SIMILARITIES, SIMILARITY_GRADIENTS
from app.engine.model_files import LoadedModel, load_model, save_model
from app.engine.probes import probe_inputs
from app.engine.training import initial_state, noisy_copy

GPT2_SMALL = transformers.GPT2Config(
    n_layer=12,
    n_embd=768,
    n_head=12,
    vocab_size=50257,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
)
CONFIG = GPT2_SMALL.to_diff_dict()  # with its model_type, as config.json holds it
ALPHA = taylor_alpha("l2")  # the engine's α, passed to every approach


def save_pair(folder: Path) -> tuple[LoadedModel, LoadedModel]:
    """Write the seeded parent and child (parent + 1 % of each tensor's spread) and open them."""
    parent = initial_state(CONFIG, 0)
    child = noisy_copy(parent, 0.01, seed=1)
    save_model(folder / "parent", parent, CONFIG)
    save_model(folder / "child", child, CONFIG)
    return load_model(folder / "parent", "parent"), load_model(folder / "child", "child")


def gpt2_module(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A GPT2Model of the pair's config holding ``state`` (eager attention, as the engine's)."""
    module = transformers.AutoModel.from_config(GPT2_SMALL, attn_implementation="eager")
    module.load_state_dict(state)
    return module.eval()


def reference_taylor_l2(parent: torch.nn.Module, child: torch.nn.Module, x: torch.Tensor) -> float:
    """(a) the reference's approach (``app.bench.speed.reference_taylor_l2``) at the engine's α."""
    return speed.reference_taylor_l2(parent, child, x, ALPHA)


def old_taylor_terms(network, parent_state, child_state, x) -> dict[str, tuple[float, float]]:
    """(b) the engine before issue 14: one forward pass with its graph, a pullback per Π."""
    with torch.no_grad():
        f_c = network.output(child_state, x)
    delta = parameter_delta(network, parent_state, child_state, True)
    names = set(network.param_names)
    params = {n: t for n, t in parent_state.items() if n in names}
    buffers = {n: t for n, t in parent_state.items() if n not in names}
    f_p, pullback = vjp(lambda p: network.output({**p, **buffers}, x), params)
    f_p = f_p.detach()
    terms = {}
    for name, gradient in SIMILARITY_GRADIENTS.items():
        (grads,) = pullback(gradient(f_p - f_c))
        correction = sum((grads[n] * delta[n]).sum() for n in params)
        terms[name] = (float(SIMILARITIES[name](f_p, f_c)), float(correction))
    return terms


def new_taylor_l2(network, parent_state, child_state, x) -> float:
    """(c) ``taylor-l2`` now: one VJP."""
    with torch.no_grad():
        f_c = network.output(child_state, x)
    delta = parameter_delta(network, parent_state, child_state, True)
    base, correction = taylor_term(network, parent_state, delta, x, f_c, True, "l2")
    return base + ALPHA * correction


def batched_taylor_terms(network, parent_state, child_state, x) -> dict[str, tuple[float, float]]:
    """(d) every similarity's terms from one JVP."""
    with torch.no_grad():
        f_c = network.output(child_state, x)
    delta = parameter_delta(network, parent_state, child_state, True)
    f_p, j_delta = jacobian_delta(network, parent_state, delta, x, True)
    return taylor_terms(f_p, j_delta, f_c, list(SIMILARITY_GRADIENTS))


def l2_score(terms: dict[str, tuple[float, float]]) -> float:
    base, correction = terms["l2"]
    return base + ALPHA * correction


def timed(run: Callable[..., float], repeats: int, setup=tuple) -> tuple[float, float]:
    """(median seconds of ``repeats`` runs of ``run(*setup())`` after one warm-up, the last
    run's score); ``setup`` runs outside the timer."""
    run(*setup())
    seconds = []
    for _ in range(repeats):
        arguments = setup()
        started = time.perf_counter()
        score = run(*arguments)
        seconds.append(time.perf_counter() - started)
        del arguments
    return statistics.median(seconds), score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        parent, child = save_pair(Path(tmp))
        network = network_for(CONFIG)
        parent_state, child_state, use_head = pair_states(network, parent, child)
        assert use_head
        x = probe_inputs(network)  # the engine's probes: 64 × 16 random tokens, seed 0
        modules = gpt2_module(parent_state), gpt2_module(child_state)

        def fresh_models() -> tuple[LoadedModel, LoadedModel]:
            # Nothing cached from an earlier run: weights into the network and f_c are part of
            # the per-pair cost, opening (and hashing) the files is not.
            return load_model(Path(tmp) / "parent", "p"), load_model(Path(tmp) / "child", "c")

        def engine_taylor_l2(p: LoadedModel, c: LoadedModel) -> float:
            return METHODS["taylor-l2"].score(PairContext(p, c, taylor_alpha=ALPHA))

        states = (network, parent_state, child_state, x)
        rows = [
            ("(a) reference approach: autograd.grad, one backward", "1 VJP (autograd)",
             lambda: reference_taylor_l2(*modules, x)),
            ("(b) old engine path: all four similarities", "1 forward + 4 pullbacks",
             lambda: l2_score(old_taylor_terms(*states))),
            ("(c) `taylor-l2` now: `linearize.taylor_term`", "1 VJP",
             lambda: new_taylor_l2(*states)),
            ("(d) benchmark's batch: all four from `jacobian_delta`", "1 JVP",
             lambda: l2_score(batched_taylor_terms(*states))),
        ]  # fmt: skip
        results = [(label, passes, *timed(run, args.repeats)) for label, passes, run in rows]
        engine = timed(engine_taylor_l2, args.repeats, fresh_models)
        results.append(("(c') `taylor-l2` through `PairContext`, as `lineage detect` runs it",
                        "1 VJP", *engine))  # fmt: skip
    reference, ours = results[0][3], results[2][3]
    assert abs(reference - ours) <= 1e-5 * abs(reference), (reference, ours)
    print(f"GPT-2 small ({sum(t.numel() for t in parent_state.values()) / 1e6:.0f} M), ", end="")
    print(f"probes {tuple(x.shape)}, α = {ALPHA}, median of {args.repeats} after a warm-up\n")
    print("| approach | passes | s per pair | taylor-l2 score |")
    print("|---|---|---|---|")
    for label, passes, seconds, score in results:
        print(f"| {label} | {passes} | {seconds:.2f} | {score:.8g} |")
    print(f"\n(whole script: {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
