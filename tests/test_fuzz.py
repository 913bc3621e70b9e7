"""Fuzzing the validation paths with hypothesis: random and mutated safetensors headers, random
configs beside real weights. Whatever the input, the engine answers with its own errors
(``LineageError`` subclasses, which the API turns into 4xx), never another exception."""

from __future__ import annotations

import contextlib
import json
import struct
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from app.engine.architectures import open_model
from app.engine.errors import LineageError
from app.engine.model_files import read_safetensors_header

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
MLP = {"model_type": "lineage-mlp", "sizes": [4, 3, 2]}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
dtypes = st.sampled_from(["F32", "F16", "BF16", "I8", "U8", "BOOL", "F64", "X9", "", 3])
entries = (
    st.fixed_dictionaries(
        {
            "dtype": dtypes,
            "shape": st.lists(st.integers(-2, 2**40), max_size=4) | json_values,
            "data_offsets": st.lists(st.integers(-4, 2**40), min_size=0, max_size=3) | json_values,
        }
    )
    | json_values
)
headers = st.dictionaries(st.text(max_size=6), entries, max_size=4)


def _valid_file() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.safetensors"
        save_file({"a": torch.ones(2, 3), "b": torch.zeros(4, dtype=torch.int8)}, str(path))
        return path.read_bytes()


VALID = _valid_file()


def _check(path: Path) -> None:
    with contextlib.suppress(LineageError):
        read_safetensors_header(path)


@FUZZ
@given(header=headers, data=st.binary(max_size=64), metadata=json_values)
def test_random_headers_give_only_engine_errors(tmp_path, header, data, metadata):
    if metadata is not None:
        header = {**header, "__metadata__": metadata}
    raw = json.dumps(header).encode()
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    _check(path)


@FUZZ
@given(
    position=st.integers(0, len(VALID) - 1),
    replacement=st.binary(min_size=1, max_size=8),
    cut=st.integers(0, len(VALID)),
)
def test_mutated_files_give_only_engine_errors(tmp_path, position, replacement, cut):
    mutated = VALID[:position] + replacement + VALID[position + len(replacement) :]
    path = tmp_path / "mutated.safetensors"
    path.write_bytes(mutated)
    _check(path)
    path.write_bytes(VALID[:cut])
    _check(path)


configs = st.fixed_dictionaries(
    {"model_type": st.sampled_from(["lineage-mlp", "lineage-cnn", "bert", "gpt2", "nope", 7])},
    optional={
        "sizes": st.lists(st.integers(-1, 10**6), max_size=5) | json_values,
        "activation": st.sampled_from(["relu", "tanh", "evil"]) | json_values,
        "channels": st.lists(st.integers(-1, 10**5), max_size=3) | json_values,
        "num_classes": st.integers(-1, 10**6) | json_values,
        "in_channels": st.integers(-1, 10**4),
        "blocks": st.integers(-1, 10**6),
        "hidden_size": st.integers(-1, 10**6),
        "num_hidden_layers": st.integers(-1, 10**7),
        "num_attention_heads": st.integers(-1, 64),
        "vocab_size": st.integers(-1, 10**9),
        "n_layer": st.integers(-1, 10**7),
        "n_embd": st.integers(-1, 10**6),
        "auto_map": json_values,
        "attn_implementation": st.sampled_from(["eager", "org/kernel"]) | json_values,
        "extra": json_values,
    },
)


@FUZZ
@given(config=configs)
def test_random_configs_give_only_engine_errors(tmp_path, config):
    folder = tmp_path / "model"
    if not folder.is_dir():
        folder.mkdir()
        state = {
            "layers.0.weight": torch.ones(3, 4),
            "layers.0.bias": torch.ones(3),
            "layers.1.weight": torch.ones(2, 3),
            "layers.1.bias": torch.ones(2),
        }
        save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    with contextlib.suppress(LineageError):
        open_model(folder, check_finite=False)
