"""Configs are data: one that asks transformers for code from the hub (``auto_map``,
``trust_remote_code``, a hub kernel as attention implementation) is refused with
``remote_code_refused`` before any network is built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.engine import architectures
from app.engine.architectures import build_network, open_model
from app.engine.errors import RemoteCodeRefused
from app.engine.model_files import save_model

TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 32,
    "hidden_size": 8,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 8,
    "max_position_embeddings": 16,
}

REFUSED = [
    {"auto_map": {"AutoModel": "modeling_evil.EvilModel"}},
    {"trust_remote_code": True},
    {"custom_pipelines": {"evil": {"impl": "evil.Pipeline"}}},
    {"attn_implementation": "kernels-community/flash-attn"},
    {"_attn_implementation": "someone/evil-kernel@main:attn"},
    {"_attn_implementation": {"": "eager", "text_config": "someone/evil-kernel"}},
    {"experts_implementation": "someone/evil-experts"},
    {"text_config": {"auto_map": {"AutoModel": "evil.Model"}}},
]


@pytest.mark.parametrize("extra", REFUSED, ids=lambda e: json.dumps(e)[:40])
def test_remote_code_is_refused_before_any_build(extra, monkeypatch):
    def no_build(config):
        raise AssertionError("a network was built for a config asking for remote code")

    monkeypatch.setattr(architectures, "_build_transformers", no_build)
    with pytest.raises(RemoteCodeRefused, match="refused") as caught:
        build_network({**TINY_BERT, **extra}, "meta")
    assert caught.value.status == 400 and caught.value.code == "remote_code_refused"


def test_a_model_folder_asking_for_remote_code_is_refused(tmp_path: Path):
    network = build_network(TINY_BERT)
    state = {k: v for k, v in network.module.state_dict().items()}
    folder = save_model(tmp_path / "m", state, {**TINY_BERT, "auto_map": {"AutoModel": "x.Y"}})
    with pytest.raises(RemoteCodeRefused, match="auto_map"):
        open_model(folder)
    # The same weights with the key removed are an ordinary model.
    (folder / "config.json").write_text(json.dumps(TINY_BERT))
    assert open_model(folder).config == TINY_BERT


@pytest.mark.parametrize("name", ["eager", "sdpa", None])
def test_built_in_attention_implementations_are_accepted(name):
    network = build_network({**TINY_BERT, "attn_implementation": name}, "meta")
    assert isinstance(network.module, torch.nn.Module)
