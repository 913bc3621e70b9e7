"""Work done once, where it belongs: a model's weight statistics are computed when it is
registered and stored beside its weights; a detection job opens its models trusted (no second
hash, scan or network build) and reuses those statistics; a job's candidates are filtered by
architecture in SQL."""

from __future__ import annotations

import subprocess
import sys
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.core.config import Settings
from app.core.db import make_engine, migrate, session_factory, transaction
from app.detection import service as detection
from app.engine import weightspace
from app.engine.architectures import open_model, open_trusted
from app.engine.model_files import save_model
from app.engine.training import initial_state
from app.registry import service as registry
from scripts.job_cost import HeldJobs
from tests.factories import TINY_CNN_CONFIG as CNN_CONFIG
from tests.factories import TINY_MLP_CONFIG, tiny_mlp_state
from tests.keys import ADMIN_HEADERS, TEST_ADMIN_KEY
from worker.in_process import InProcessDispatcher


def files_of(folder: Path) -> list:
    return [("files", (p.name, p.read_bytes())) for p in sorted(folder.iterdir())]


def upload(folder: Path, files: ExitStack) -> registry.Upload:
    """A model folder's files as an upload (closed with ``files``)."""
    return registry.Upload(
        [(p.name, files.enter_context(open(p, "rb"))) for p in sorted(folder.iterdir())]
    )


def stepped(state: dict, seed: int, scale: float = 0.05) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in state.items()}


@pytest.fixture
def client(tmp_path):
    url = f"sqlite:///{tmp_path / 'lineage.db'}"
    migrate(url)
    settings = Settings(
        database_url=url,
        storage_dir=tmp_path / "storage",
        redis_url=None,
        lineage_admin_key=TEST_ADMIN_KEY,
    )
    app = create_app(settings, partial(InProcessDispatcher, settings=settings))
    with TestClient(app, headers=ADMIN_HEADERS) as client:
        yield client


def stored_folder(client: TestClient, name: str) -> Path:
    sha = client.get(f"/models/{name}").json()["sha256"]
    return client.app.state.settings.storage_dir / "models" / sha


def no_eigensolver(*_args, **_kwargs):
    raise AssertionError("statistics recomputed")


def test_registration_stores_the_statistics_a_job_would_compute(client, tmp_path, monkeypatch):
    source = save_model(tmp_path / "p", tiny_mlp_state(0), TINY_MLP_CONFIG)
    assert client.post("/parents", data={"name": "p"}, files=files_of(source)).status_code == 201
    folder = stored_folder(client, "p")
    assert (folder / weightspace.STATISTICS_FILE).is_file()
    fresh = open_model(folder, "p")  # computes them anew
    trusted = open_trusted(folder, "p", fresh.sha256)
    stored = trusted.cache["spectrum"]
    assert set(stored) == set(fresh.weights.infos)
    for name in stored:
        torch.testing.assert_close(stored[name], weightspace.invariant_statistics(fresh, name))
    # The same weights again are not summarised again: they keep the statistics stored first.
    with monkeypatch.context() as patch:
        patch.setattr(weightspace.np.linalg, "eigvalsh", no_eigensolver)
        again = client.post("/parents", data={"name": "p"}, files=files_of(source))
    assert again.status_code == 200, again.text
    # Statistics of other weights, or of another version of the computation, are not used.
    assert weightspace.load_statistics(open_model(source, "p"), folder)  # the same weights
    other = save_model(tmp_path / "q", tiny_mlp_state(1), TINY_MLP_CONFIG)
    assert weightspace.load_statistics(open_model(other, "q"), folder) is False
    assert "spectrum" not in open_model(other, "q").cache


def test_a_job_reuses_the_stored_statistics(tmp_path, monkeypatch):
    """With the eigensolver that computes them broken once every model is registered,
    weight-spectrum still scores: the job read every model's statistics from storage (an
    untrusted open would call it, and fail)."""
    url = f"sqlite:///{tmp_path / 'lineage.db'}"
    migrate(url)
    settings = Settings(database_url=url, storage_dir=tmp_path / "storage")
    engine = make_engine(url)
    factory = session_factory(engine)
    parents = {f"p{i}": stepped(tiny_mlp_state(0), i) for i in range(3)}
    held = HeldJobs()
    with ExitStack() as files, transaction(factory) as session:
        for name, state in parents.items():
            source = save_model(tmp_path / name, state, TINY_MLP_CONFIG)
            registry.ingest(session, settings, upload(source, files), name=name, candidate=True)
        child = save_model(tmp_path / "child", stepped(parents["p1"], 9, 0.01), TINY_MLP_CONFIG)
        detection.submit(
            session, settings, held, upload(child, files), name="child", method="weight-spectrum"
        )

    monkeypatch.setattr(weightspace.np.linalg, "eigvalsh", no_eigensolver)
    detection.run_job(factory, held.jobs[0])
    with factory() as session:
        job = detection.get_job(session, held.jobs[0])
    engine.dispose()
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["decision"]["parent"] == "p1"
    with pytest.raises(AssertionError, match="recomputed"):  # what an untrusted open would do
        weightspace.spectrum_distance(open_model(tmp_path / "p0"), open_model(child))


def test_a_jobs_candidates_are_the_childs_architecture_in_sql(client, tmp_path):
    """A catalog parent of another architecture is not even opened: it is neither ranked nor
    listed as skipped; one without an architecture is still compared by its weights."""
    base = tiny_mlp_state(0)
    catalog = {
        "same": (stepped(base, 1), TINY_MLP_CONFIG),
        "bare": (stepped(base, 2), None),  # weights only, no config.json
        "cnn": (initial_state(CNN_CONFIG, 0), CNN_CONFIG),
    }
    for name, (state, config) in catalog.items():
        source = save_model(tmp_path / name, state, config)
        response = client.post("/parents", data={"name": name}, files=files_of(source))
        assert response.status_code == 201, response.text
    child = save_model(tmp_path / "child", stepped(base, 3, 0.01), TINY_MLP_CONFIG)
    response = client.post(
        "/detect", data={"name": "child", "method": "weight-l2"}, files=files_of(child)
    )
    client.app.state.dispatcher.join()
    result = client.get(f"/jobs/{response.json()['job_id']}").json()["result"]
    assert {c["parent"] for c in result["candidates"]} == {"same", "bare"}
    assert result["skipped"] == []


def test_a_config_is_checked_against_the_weights_without_building_the_model(tmp_path):
    """A config claiming a 20000×20000 layer (1.6 GB in float32) over a few bytes of weights is
    refused by their shapes, in a process that never comes near that size."""
    hostile = {"model_type": "lineage-mlp", "sizes": [20000, 20000, 2], "activation": "relu"}
    folder = save_model(tmp_path / "hostile", tiny_mlp_state(0), hostile)
    program = (
        "import resource, sys\n"
        "from app.engine.architectures import open_model\n"
        "from app.engine.errors import ShapeMismatch\n"
        "try:\n"
        f"    open_model({str(folder)!r})\n"
        "except ShapeMismatch as exc:\n"
        "    print('refused:', exc.message)\n"
        # VmHWM: this program's own peak (ru_maxrss would also count the forking test process).
        "status = open('/proc/self/status').read()\n"
        "print(int(status.split('VmHWM:')[1].split()[0]) // 1024)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    refusal, peak_mb = result.stdout.strip().splitlines()
    assert refusal.startswith("refused:") and "layers.0.weight" in refusal
    assert int(peak_mb) < 1000, f"peak {peak_mb} MB: the hostile layer was allocated"


def test_progress_is_reported_per_candidate(tmp_path):
    """The engine reports each candidate as it is scored or skipped; a job maps that onto its
    progress between loading the models (0.3) and recording the result (0.9)."""
    from app.engine.decision import rank_candidates

    parents = [stepped(tiny_mlp_state(0), i) for i in range(3)]
    folders = [save_model(tmp_path / f"p{i}", s, TINY_MLP_CONFIG) for i, s in enumerate(parents)]
    folders.append(save_model(tmp_path / "cnn", initial_state(CNN_CONFIG, 0), CNN_CONFIG))
    child = open_model(save_model(tmp_path / "c", stepped(parents[1], 9, 0.01), TINY_MLP_CONFIG))
    calls = []
    ranking = rank_candidates(
        child, [open_model(f) for f in folders], "weight-l2", progress=lambda *a: calls.append(a)
    )
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]  # the skipped CNN counted too
    assert len(ranking.skipped) == 1

    url = f"sqlite:///{tmp_path / 'lineage.db'}"
    migrate(url)
    settings = Settings(database_url=url, storage_dir=tmp_path / "storage")
    engine = make_engine(url)
    factory = session_factory(engine)
    held = HeldJobs()
    with ExitStack() as files, transaction(factory) as session:
        for i, folder in enumerate(folders[:3]):
            registry.ingest(session, settings, upload(folder, files), name=f"p{i}", candidate=True)
        detection.submit(session, settings, held, upload(tmp_path / "c", files), name="c")
    claimed = detection.claim(factory, held.jobs[0])
    seen = []
    detection.score(claimed, "cpu", seen.append)
    engine.dispose()
    assert seen == pytest.approx([0.3, 0.5, 0.7, 0.9])  # each step once, forward only


def test_statistics_are_found_by_the_folder_that_holds_them(tmp_path):
    """A model opened from a stored folder under another id (the benchmark's synthetic catalog
    rows do this) still reads the folder's statistics: they are tagged with the folder's name,
    its weights' SHA-256. A model from elsewhere does not."""
    source = save_model(tmp_path / "p", tiny_mlp_state(0), TINY_MLP_CONFIG)
    model = open_model(source, "p")
    folder = tmp_path / "storage" / model.sha256
    folder.mkdir(parents=True)
    for path in source.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    weightspace.save_statistics(model, folder)
    assert open_trusted(folder, "synthetic", "0" * 64).cache.get("spectrum")
    assert weightspace.load_statistics(open_trusted(source, "elsewhere", "0" * 64), folder) is False
