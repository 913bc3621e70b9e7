"""Declared lineage against the weights: the declarations a model's files make, the audit
verdict, declared edges in the graph, and the review queue ``GET /audit``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app.detection.audit import audit_verdict
from app.engine.model_files import save_model
from app.hub.declared import DeclaredParent, declared_parents
from tests.test_api import CONFIG, family, service, upload  # noqa: F401  (fixtures)


def write(folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


def test_declarations_are_read_from_card_adapter_and_config(tmp_path):
    write(
        tmp_path,
        "README.md",
        "---\nbase_model:\n- org/a\n- org/b\nbase_model_relation: merge\n---\n",
    )
    write(tmp_path, "adapter_config.json", json.dumps({"base_model_name_or_path": "org/c"}))
    write(tmp_path, "config.json", json.dumps({"_name_or_path": "org/a"}))
    assert declared_parents(tmp_path) == [
        DeclaredParent("org/a", "merge", "model_card"),  # the card wins over config.json
        DeclaredParent("org/b", "merge", "model_card"),
        DeclaredParent("org/c", "adapter", "adapter_config"),
    ]


def test_local_paths_broken_cards_and_silence_declare_nothing(tmp_path):
    write(tmp_path, "config.json", json.dumps({"_name_or_path": "/home/me/checkpoints/run3"}))
    write(tmp_path, "README.md", "---\nbase_model: [unclosed\n---\n# a card with broken YAML\n")
    assert declared_parents(tmp_path) == []
    write(tmp_path / "plain", "README.md", "---\nbase_model: org/base\n---\n")
    assert declared_parents(tmp_path / "plain") == [
        DeclaredParent("org/base", "finetune", "model_card")
    ]


@pytest.mark.parametrize(
    ("inferred", "declared", "in_catalog", "verdict"),
    [
        ("org/p", [], {}, "undisclosed"),
        (None, [], {}, "no_parent"),
        ("org/p", ["org/p"], {"org/p": "org/p"}, "consistent"),
        ("org/p", ["hub/p"], {"hub/p": "org/p"}, "consistent"),  # matched by hub ID
        ("org/p", ["org/q"], {"org/q": "org/q"}, "mismatch"),
        (None, ["org/q"], {"org/q": "org/q"}, "mismatch"),
        ("org/p", ["else/where"], {}, "unverified"),
    ],
)
def test_verdicts(inferred, declared, in_catalog, verdict):
    parents = [DeclaredParent(n, "finetune", "model_card") for n in declared]
    result = audit_verdict(inferred, parents, in_catalog, {"confidence": 0.9, "method": "auto"})
    assert result["verdict"] == verdict
    assert result["inferred"] == inferred
    assert [d["in_catalog"] for d in result["declared"]] == [in_catalog.get(n) for n in declared]


def variant(models, tmp_path: Path, seed: int, card: str | None) -> Path:
    """A slightly different fine-tune of parent 1 (own weights, own record), with a card."""
    state = load_file(models.child / "model.safetensors")
    gen = torch.Generator().manual_seed(seed)
    state = {k: v + 1e-3 * torch.randn(v.shape, generator=gen) for k, v in state.items()}
    folder = save_model(tmp_path / f"variant-{seed}", state, CONFIG)
    if card is not None:
        (folder / "README.md").write_text(card)
    return folder


def test_audit_of_uploads_and_the_review_queue(service, family, tmp_path):  # noqa: F811
    client = service.client
    for i, folder in enumerate(family.parents):
        assert (
            client.post(
                "/parents", data={"name": f"org/parent-{i}"}, files=upload(folder)
            ).status_code
            == 201
        )
    cases = {
        "org/honest": ("---\nbase_model: org/parent-1\n---\n", "consistent"),
        "org/silent": (None, "undisclosed"),
        "org/liar": ("---\nbase_model: org/parent-0\n---\n", "mismatch"),
        "org/elsewhere": ("---\nbase_model: other/model\n---\n", "unverified"),
    }
    for seed, (name, (card, expected)) in enumerate(cases.items()):
        folder = variant(family, tmp_path, seed, card)
        names = ["model.safetensors", "config.json"] + (["README.md"] if card else [])
        job_id = client.post("/detect", data={"name": name}, files=upload(folder, *names)).json()[
            "job_id"
        ]
        job = service.finished_job(job_id)
        assert job["status"] == "succeeded", job
        audit = job["result"]["audit"]
        assert (audit["verdict"], audit["inferred"]) == (expected, "org/parent-1"), (name, audit)
        assert job["verdict"] == expected

    # The liar's tree shows both: the inferred edge and the declared, unconfirmed one.
    edges = {
        (e["parent"], e["declared"], e["score"] is not None)
        for e in client.get("/lineage/org/liar", headers={"Accept": "application/json"}).json()[
            "edges"
        ]
    }
    assert edges == {("org/parent-1", False, True), ("org/parent-0", True, False)}
    honest = client.get("/lineage/org/honest", headers={"Accept": "application/json"}).json()
    assert [(e["parent"], e["declared"]) for e in honest["edges"]] == [("org/parent-1", True)]

    queue = client.get("/audit", params={"verdict": "undisclosed"}).json()
    assert [j["child"] for j in queue["jobs"]] == ["org/silent"]
    assert queue["jobs"][0]["inferred"] == "org/parent-1"
    assert [j["child"] for j in client.get("/audit?verdict=mismatch").json()["jobs"]] == [
        "org/liar"
    ]
    bad = client.get("/audit", params={"verdict": "suspicious"})
    assert bad.status_code == 422 and bad.json()["error"]["code"]


def test_each_upload_is_audited_against_its_own_card(service, family, tmp_path):  # noqa: F811
    """The same weights uploaded again with a card: stored once, but this request's card is
    what the audit reads, not the first upload's."""
    client = service.client
    for i, folder in enumerate(family.parents):
        client.post("/parents", data={"name": f"org/parent-{i}"}, files=upload(folder))
    folder = variant(family, tmp_path, 10, None)
    plain = ["model.safetensors", "config.json"]
    first = client.post("/detect", data={"name": "org/again"}, files=upload(folder, *plain))
    assert service.finished_job(first.json()["job_id"])["verdict"] == "undisclosed"
    (folder / "README.md").write_text("---\nbase_model: org/parent-1\n---\n")
    second = client.post(
        "/detect", data={"name": "org/again"}, files=upload(folder, *plain, "README.md")
    )
    job = service.finished_job(second.json()["job_id"])
    assert job["child"] == "org/again"  # the same record
    assert job["verdict"] == "consistent", job["result"]["audit"]
