"""``lineage detect`` on bad input: exit code 2, one ``error:`` line on stderr, never a traceback.

Each case runs the real command line in a fresh interpreter. Starting one costs about two seconds
(importing torch), so a module fixture writes every input once and runs all the commands
concurrently; each test then checks its own command's outcome.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from app.engine.model_files import save_model
from tests.factories import TINY_MLP_CONFIG as MLP_CONFIG
from tests.factories import tiny_mlp_state as mlp_state

REPO = Path(__file__).resolve().parents[1]
EXIT_BAD_INPUT = 2


def run_detect(*args: str) -> subprocess.CompletedProcess:
    """``lineage detect ARGS`` as a user runs it, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "detect", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def build_inputs(root: Path) -> dict[str, Path]:
    """Two valid parents, a child of the first, and one broken model per refusal."""
    paths: dict[str, Path] = {}
    parent_a, parent_b = mlp_state(0), mlp_state(1)
    gen = torch.Generator().manual_seed(2)
    child = {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in parent_a.items()}
    paths["parent_a"] = save_model(root / "parent-a", parent_a, MLP_CONFIG)
    paths["parent_b"] = save_model(root / "parent-b", parent_b, MLP_CONFIG)
    paths["child"] = save_model(root / "child", child, MLP_CONFIG)

    paths["marker"] = root / "unpickled.marker"
    paths["pickle"] = root / "model.pt"
    # Protocol-0 pickle opcodes for open(marker, "w"): creates the marker if ever unpickled.
    paths["pickle"].write_bytes(f"cbuiltins\nopen\n(V{paths['marker']}\nVw\ntR.".encode())

    paths["truncated"] = root / "truncated.safetensors"
    save_file(parent_a, str(paths["truncated"]))
    paths["truncated"].write_bytes(paths["truncated"].read_bytes()[:-7])

    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    paths["absurd"] = root / "absurd.safetensors"
    paths["absurd"].write_bytes(struct.pack("<Q", 2**60) + header + b"\0" * 8)

    non_finite = mlp_state(0)
    non_finite["layers.1.bias"][1] = float("nan")
    paths["non_finite"] = save_model(root / "non-finite", non_finite, MLP_CONFIG)

    wrong = mlp_state(0)
    wrong["layers.1.weight"] = torch.randn(3, 9)
    paths["wrong_shape"] = save_model(root / "wrong-shape", wrong, MLP_CONFIG)

    paths["trailing"] = root / "trailing.safetensors"
    save_file(parent_a, str(paths["trailing"]))
    paths["trailing"].write_bytes(paths["trailing"].read_bytes() + b"junk")

    paths["missing"] = root / "does-not-exist"
    return paths


# name -> (arguments after `detect`, given the input paths; fragments stderr must contain)
ERROR_CASES = {
    "pickle-child": (
        lambda p: [p["pickle"], "--parents", p["parent_a"]],
        ["model.pt: pickle-based weights are refused", "convert the model to safetensors"],
    ),
    "truncated-parent": (
        lambda p: [p["child"], "--parents", p["parent_a"], p["truncated"]],
        ["truncated.safetensors", "the file is truncated"],
    ),
    "absurd-header": (
        lambda p: [p["absurd"], "--parents", p["parent_a"]],
        ["absurd.safetensors: header length", "is absurd"],
    ),
    "trailing-bytes": (
        lambda p: [p["child"], "--parents", p["trailing"]],
        ["trailing.safetensors: 4 bytes after the last tensor"],
    ),
    "non-finite": (
        lambda p: [p["non_finite"], "--parents", p["parent_a"]],
        ["tensor 'layers.1.bias' holds NaN or infinite values"],
    ),
    "nonexistent": (
        lambda p: [p["child"], "--parents", p["missing"]],
        ["does-not-exist: no such file or folder"],
    ),
    "shape-mismatch": (
        lambda p: [p["wrong_shape"], "--parents", p["parent_a"]],
        ["weights do not fit the architecture", "layers.1.weight (3, 9) (expected (3, 8))"],
    ),
    "unknown-method": (
        lambda p: [p["child"], "--parents", p["parent_a"], "--method", "telepathy"],
        ["unknown method 'telepathy'", "choose one of: auto"],
    ),
    "adapter-method-on-a-plain-child": (
        lambda p: [p["child"], "--parents", p["parent_a"], "--method", "adapter-alignment"],
        ["adapter-alignment scores LoRA adapter children", "is not one"],
    ),
    "unknown-option": (
        lambda p: [p["child"], "--parents", p["parent_a"], "--jsn"],
        ["unknown option '--jsn'", "lineage detect --help"],
    ),
    "no-parents": (
        lambda p: [p["child"]],
        ["give at least one candidate with --parents"],
    ),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    return build_inputs(tmp_path_factory.mktemp("cli-inputs"))


@pytest.fixture(scope="module")
def outcomes(inputs) -> dict[str, subprocess.CompletedProcess]:
    """Every error case and the success case, run concurrently."""
    commands = {name: [str(a) for a in args(inputs)] for name, (args, _) in ERROR_CASES.items()}
    commands["success"] = [
        str(inputs["child"]),
        "--parents",
        str(inputs["parent_b"]),
        str(inputs["parent_a"]),
        "--json",
        "--device",
        "cpu",
        "--probes",
        "16",
    ]
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 1))) as pool:
        futures = {name: pool.submit(run_detect, *args) for name, args in commands.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_is_one_error_line_and_exit_2(outcomes, case):
    result = outcomes[case]
    _, fragments = ERROR_CASES[case]
    detail = f"stdout={result.stdout!r} stderr={result.stderr!r}"
    assert result.returncode == EXIT_BAD_INPUT, detail
    assert result.stderr.startswith("error: "), detail
    assert len(result.stderr.strip().splitlines()) == 1, detail
    for fragment in fragments:
        assert fragment in result.stderr, detail
    assert "Traceback" not in result.stdout + result.stderr, detail
    assert result.stdout == "", detail


def test_pickle_file_is_never_unpickled(outcomes, inputs):
    assert outcomes["pickle-child"].returncode == EXIT_BAD_INPUT
    assert inputs["pickle"].exists()
    assert not inputs["marker"].exists()


def test_success_json_names_the_true_parent(outcomes, inputs):
    result = outcomes["success"]
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    out = json.loads(result.stdout)
    assert out["child"] == str(inputs["child"])
    assert {"parent", "confidence", "method"} <= set(out["decision"])
    assert out["decision"]["method"] == "auto"
    assert 0.0 <= out["decision"]["confidence"] <= 1.0
    candidates = out["candidates"]
    assert [set(c) >= {"parent", "score", "scores"} for c in candidates] == [True, True]
    assert {c["parent"] for c in candidates} == {str(inputs["parent_a"]), str(inputs["parent_b"])}
    # Parent A was given second: it is first because it scores best, not by position.
    assert candidates[0]["parent"] == str(inputs["parent_a"])
    assert candidates[0]["score"] > candidates[1]["score"]
    for cand in candidates:
        assert cand["scores"] and all(isinstance(v, float) for v in cand["scores"].values())
