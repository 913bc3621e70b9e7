"""Declared lineage: the parents a model's own files name, with the relation and the source.

Hugging Face models declare their base in three places, most authoritative first:
- the model card's YAML front matter: ``base_model`` (a string, or a list for merges) and
  ``base_model_relation`` (adapter, merge, quantized, finetune), read with ``ModelCard``;
- ``adapter_config.json``: ``base_model_name_or_path`` (PEFT adapters; relation "adapter");
- ``config.json``: ``_name_or_path``, which transformers writes from wherever the weights were
  loaded; only a hub ID (``org/name``) counts, a local path says nothing about lineage.
Unreadable files are treated as declaring nothing: a declaration is evidence, never a reason to
refuse a model.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from app.engine.model_files import parse_json
from app.hub.resolve import is_hub_id

log = logging.getLogger(__name__)
RELATIONS = ("adapter", "merge", "quantized", "finetune")


@dataclass(frozen=True)
class DeclaredParent:
    """One declared parent: its name as written, the relation, and which file said so."""

    name: str
    relation: str
    source: str

    def to_dict(self) -> dict:
        return asdict(self)


def _read_json(path: Path) -> dict:
    try:
        value = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON, nested absurdly deep
        return {}
    return value if isinstance(value, dict) else {}


def _from_card(path: Path) -> list[DeclaredParent]:
    from huggingface_hub import ModelCard

    try:
        data = ModelCard(path.read_text(encoding="utf-8"), ignore_metadata_errors=True).data
        metadata = data.to_dict()
    except Exception as exc:  # a broken card declares nothing; it is not a broken model
        log.info("ignoring an unreadable model card %s: %s", path, exc)
        return []
    bases = metadata.get("base_model") or []
    bases = [bases] if isinstance(bases, str) else [b for b in bases if isinstance(b, str)]
    relation = metadata.get("base_model_relation")
    if relation not in RELATIONS:
        relation = "merge" if len(bases) > 1 else "finetune"
    return [DeclaredParent(b.strip(), relation, "model_card") for b in bases if b.strip()]


def declared_parents(folder: Path) -> list[DeclaredParent]:
    """Every parent the model in ``folder`` declares, each name once (first source wins)."""
    found: list[DeclaredParent] = []
    card = folder / "README.md"
    if card.is_file():
        found += _from_card(card)
    adapter = _read_json(folder / "adapter_config.json").get("base_model_name_or_path")
    if isinstance(adapter, str) and adapter.strip():
        found.append(DeclaredParent(adapter.strip(), "adapter", "adapter_config"))
    origin = _read_json(folder / "config.json").get("_name_or_path")
    if isinstance(origin, str) and is_hub_id(origin.strip()):
        found.append(DeclaredParent(origin.strip(), "finetune", "config"))
    unique: dict[str, DeclaredParent] = {}
    for parent in found:
        unique.setdefault(parent.name, parent)
    return list(unique.values())
