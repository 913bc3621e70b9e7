"""The shortlist: each model's weight sketch (computed at registration, stored in its row) is
deterministic and unchanged by permuting hidden units, approximates weight-spectrum's distance,
and decides which catalog models a detection job scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.core.config import Settings
from app.core.db import migrate
from app.engine import weightspace
from app.engine.architectures import build_network
from app.engine.model_files import load_model, save_model
from app.engine.sketch import (
    SKETCH_DIM,
    Sketch,
    model_sketch,
    shortlist,
    sketch_distance,
    sketch_distances,
    stored_keys,
)
from app.engine.training import initial_state, noisy_copy, permute_hidden_units
from worker.dispatch import dispatcher_for

CONFIG = {"model_type": "lineage-mlp", "sizes": [64, 48, 48, 10], "activation": "relu"}


def files_of(folder: Path) -> list:
    return [("files", (p.name, p.read_bytes())) for p in sorted(folder.iterdir())]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A root, two fine-tune stand-ins of it (parents), a child of parent 0, its permuted copy,
    and three unrelated models (other initialisations)."""
    out = tmp_path_factory.mktemp("family")
    root = initial_state(CONFIG, 0)
    states = {
        "parent-0": noisy_copy(root, 0.3, seed=1),
        "parent-1": noisy_copy(root, 0.3, seed=2),
        **{f"stranger-{i}": initial_state(CONFIG, 10 + i) for i in range(3)},
    }
    states["child"] = noisy_copy(states["parent-0"], 0.05, seed=3)
    states["child-permuted"] = permute_hidden_units(build_network(CONFIG), states["child"], 4)
    return {name: save_model(out / name, state, CONFIG) for name, state in states.items()}


def test_a_sketch_is_deterministic_and_blind_to_permuted_units(family):
    child = model_sketch(load_model(family["child"], "child"))
    again = model_sketch(load_model(family["child"], "child"))
    assert child.keys == again.keys and np.array_equal(child.rows, again.rows)
    permuted = model_sketch(load_model(family["child-permuted"], "permuted"))
    assert permuted.keys == child.keys
    # The spectral half is blind to the permutation; the raw-weight half is not, by design.
    spectra = slice(SKETCH_DIM, None)
    np.testing.assert_allclose(
        permuted.rows[:, spectra], child.rows[:, spectra], rtol=1e-4, atol=1e-5
    )
    assert not np.allclose(permuted.rows[:, :SKETCH_DIM], child.rows[:, :SKETCH_DIM])
    stored = Sketch.from_stored(
        stored_keys([list(k) for k in child.keys]), child.to_bytes(), child.layout
    )
    assert stored.keys == child.keys and np.array_equal(stored.rows, child.rows)


def test_sketch_distances_approximate_the_spectra_and_rank_the_parent_first(family):
    child = load_model(family["child"], "child")
    names = ["parent-0", "parent-1", "stranger-0", "stranger-1", "stranger-2"]
    candidates = [load_model(family[n], n) for n in names]
    exact = [weightspace.spectrum_distance(c, child) for c in candidates]
    approx = [sketch_distance(model_sketch(child), model_sketch(c)) for c in candidates]
    np.testing.assert_allclose(approx, exact, rtol=0.3)
    exact = [weightspace.l2_distance(c, child) for c in candidates]
    approx = [sketch_distances(model_sketch(child), model_sketch(c))[0] for c in candidates]
    np.testing.assert_allclose(approx, exact, rtol=0.3)
    order = shortlist(model_sketch(child), [model_sketch(c) for c in candidates], 2)
    assert names[order[0]] == "parent-0"
    # A candidate without a sketch (registered before sketches existed) is never dropped.
    assert shortlist(model_sketch(child), [None, *map(model_sketch, candidates)], 1) == [1, 0]


def service(tmp_path: Path, shortlist_size: int) -> TestClient:
    """The embedded service on a fresh SQLite file, scoring ``shortlist_size`` candidates."""
    url = f"sqlite:///{tmp_path / 'lineage.db'}"
    migrate(url)
    settings = Settings(
        database_url=url,
        storage_dir=tmp_path / "storage",
        redis_url=None,
        shortlist_size=shortlist_size,
    )
    return TestClient(create_app(settings, dispatcher_for(settings)))


def test_a_job_scores_only_the_shortlist(family, tmp_path):
    with service(tmp_path, shortlist_size=2) as client:
        catalog = ["parent-0", "parent-1", "stranger-0", "stranger-1", "stranger-2"]
        for name in catalog:
            response = client.post("/parents", data={"name": name}, files=files_of(family[name]))
            assert response.status_code == 201, response.text
        for child in ("child", "child-permuted"):
            response = client.post(
                "/detect",
                data={"name": child, "method": "weight-l2"},
                files=files_of(family[child]),
            )
            client.app.state.dispatcher.join()
            job = client.get(f"/jobs/{response.json()['job_id']}").json()
            assert job["status"] == "succeeded", job["error"]
            result = job["result"]
            assert result["shortlist"] == {"catalog": 5, "scored": 2}
            scored = {c["parent"] for c in result["candidates"]}
            assert len(scored) == 2 and "parent-0" in scored, child


def test_without_a_shortlist_every_model_of_the_architecture_is_scored(family, tmp_path):
    with service(tmp_path, shortlist_size=0) as client:
        for name in ("parent-0", "parent-1", "stranger-0"):
            client.post("/parents", data={"name": name}, files=files_of(family[name]))
        response = client.post("/detect", data={"name": "child"}, files=files_of(family["child"]))
        client.app.state.dispatcher.join()
        result = client.get(f"/jobs/{response.json()['job_id']}").json()["result"]
    assert result["shortlist"] == {"catalog": 3, "scored": 3}
    assert result["decision"]["parent"] == "parent-0"
