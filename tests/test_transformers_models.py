"""Hugging Face ``transformers`` model folders (``save_pretrained``) through the engine and CLI."""

from __future__ import annotations

import json

import torch
import transformers

from app.engine.architectures import open_model
from app.engine.decision import rank_candidates

BERT = {
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 32,
}
GPT2 = {"vocab_size": 64, "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 32}


def _fine_tune(model, task: int, steps: int = 30, lr: float = 3e-3):
    """A few Adam steps pulling the last hidden state towards a task-specific random map."""
    generator = torch.Generator().manual_seed(task)
    hidden = model.config.hidden_size
    target_map = torch.randn(hidden, hidden, generator=generator) / hidden**0.5
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        tokens = torch.randint(0, 64, (16, 12), generator=generator)
        base = model.base_model if hasattr(model, "base_model") else model
        h = base(input_ids=tokens).last_hidden_state
        loss = (h - (h.detach() @ target_map)).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    return model


def _family(folder, model_class, config, tasks: list[int]) -> list:
    """Parents fine-tuned from one random root, one per task, saved with ``save_pretrained``."""
    root = model_class(config)
    parents = []
    for task in tasks:
        parent = model_class(config)
        parent.load_state_dict(root.state_dict())
        _fine_tune(parent, task=task)
        parent.save_pretrained(folder / f"parent-{task}")
        parents.append(folder / f"parent-{task}")
    return parents


def _load_base_into(task_model, folder):
    source = transformers.BertModel.from_pretrained(folder)
    task_model.bert.load_state_dict(source.state_dict())


def test_bert_task_child_is_attributed_to_its_base(tmp_path, cli):
    torch.manual_seed(0)
    parents = _family(tmp_path, transformers.BertModel, transformers.BertConfig(**BERT), [1, 2, 3])
    child = transformers.BertForSequenceClassification(
        transformers.BertConfig(**BERT, num_labels=3)
    )
    _load_base_into(child, parents[1])
    _fine_tune(child, task=10, steps=20, lr=1e-3)
    child.save_pretrained(tmp_path / "child")
    saved = json.loads((tmp_path / "child" / "config.json").read_text())
    assert saved["model_type"] == "bert"
    assert (tmp_path / "child" / "model.safetensors").is_file()

    result = cli("detect", str(tmp_path / "child"), "--parents", *map(str, parents), "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["decision"]["parent"] == str(parents[1])
    ranking = rank_candidates(
        open_model(tmp_path / "child"), [open_model(p) for p in parents], "lin-l1"
    )
    assert ranking.candidates[0].parent == str(parents[1])


def test_gpt2_child_found_by_function_and_weights(tmp_path):
    torch.manual_seed(1)
    config = transformers.GPT2Config(**GPT2)
    parents = _family(tmp_path, transformers.GPT2Model, config, [20, 21, 22])
    child = transformers.GPT2Model(config)
    child.load_state_dict(transformers.GPT2Model.from_pretrained(parents[2]).state_dict())
    _fine_tune(child, task=30, steps=20, lr=1e-3)
    child.save_pretrained(tmp_path / "child")
    models = [open_model(p) for p in parents]
    child_model = open_model(tmp_path / "child")
    for method in ("auto", "lin-l2", "weight-l2"):
        ranking = rank_candidates(child_model, models, method)
        assert ranking.candidates[0].parent == str(parents[2]), method
