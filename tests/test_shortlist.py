"""The shortlist: each model's sketch (computed at registration, stored in its row) is
deterministic and unchanged by permuting hidden units, approximates weight-spectrum's distance
and, by its output part, the distance between how the models represent the probes (which finds
a distilled student's teacher); it decides which catalog models a detection job scores, read
from the catalog in batches as a list of sketches would be compared in memory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app.api.app import create_app
from app.bench.zoo import distillation
from app.core.config import Settings
from app.core.db import downgrade, make_engine, migrate, session_factory, transaction
from app.engine import weightspace
from app.engine.architectures import build_network
from app.engine.model_files import load_model, save_model
from app.engine.sketch import (
    OUTPUT_DIM,
    PARTS,
    SKETCH_DIM,
    Sketch,
    layout_of,
    model_sketch,
    nearest,
    output_distance,
    output_features,
    output_sketch,
    shortlist,
    sketch_distance,
    sketch_distances,
    stored_keys,
)
from app.engine.training import (
    digits_task,
    initial_state,
    noisy_copy,
    permute_hidden_units,
    train,
)
from app.registry import service as registry
from app.registry import shortlist as shortlists
from app.registry.models import Model
from tests.keys import ADMIN_HEADERS, TEST_ADMIN_KEY
from worker.dispatch import dispatcher_for

CONFIG = {"model_type": "lineage-mlp", "sizes": [64, 48, 48, 10], "activation": "relu"}


def files_of(folder: Path) -> list:
    return [("files", (p.name, p.read_bytes())) for p in sorted(folder.iterdir())]


def trained(network, start: dict, task: int, seed: int, teacher: dict | None = None) -> dict:
    """``start`` trained on digits task ``task``, or (``teacher``) trained to imitate the
    teacher's outputs alone, as the benchmark's distilled students are."""
    x, y = digits_task(network, task)
    regulariser = None if teacher is None else distillation(network, teacher, 1.0, 1.0)
    return train(
        network,
        start,
        x,
        y,
        steps=300,
        lr=3e-3,
        seed=seed,
        regulariser=regulariser,
        task_weight=0.0 if teacher is not None else 1.0,
    )


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A root, two fine-tune stand-ins of it (parents), a child of parent 0, its permuted copy,
    and three unrelated models (other initialisations); a teacher trained on a digits task, its
    student distilled from another initialisation (no weight in common), and three decoys
    trained on other tasks from other initialisations; the student's weights without a config,
    and a fine-tune stand-in of parent 0 and a child of it, neither with a config."""
    out = tmp_path_factory.mktemp("family")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: a second thread only waits, badly on a busy CPU
    try:
        return _family(out)
    finally:
        torch.set_num_threads(threads)


def _family(out: Path) -> dict[str, Path]:
    network = build_network(CONFIG)
    root = initial_state(CONFIG, 0)
    states = {
        "parent-0": noisy_copy(root, 0.3, seed=1),
        "parent-1": noisy_copy(root, 0.3, seed=2),
        **{f"stranger-{i}": initial_state(CONFIG, 10 + i) for i in range(3)},
    }
    states["child"] = noisy_copy(states["parent-0"], 0.05, seed=3)
    states["child-permuted"] = permute_hidden_units(network, states["child"], 4)
    states["teacher"] = trained(network, initial_state(CONFIG, 20), task=1, seed=5)
    states["student"] = trained(
        network, initial_state(CONFIG, 21), task=1, seed=6, teacher=states["teacher"]
    )
    for i in range(3):
        states[f"decoy-{i}"] = trained(network, initial_state(CONFIG, 30 + i), 2 + i, 7 + i)
    folders = {name: save_model(out / name, state, CONFIG) for name, state in states.items()}
    folders["student-bare"] = save_model(out / "student-bare", states["student"], None)
    bare_parent = noisy_copy(states["parent-0"], 0.1, seed=8)
    folders["bare-parent"] = save_model(out / "bare-parent", bare_parent, None)
    folders["bare-child"] = save_model(out / "bare-child", noisy_copy(bare_parent, 0.05, 9), None)
    return folders


def sketch_of(family, name: str, **options) -> Sketch:
    return model_sketch(load_model(family[name], name), **options)


def test_a_sketch_is_deterministic_and_blind_to_permuted_units(family):
    child = sketch_of(family, "child")
    again = sketch_of(family, "child")
    assert child.keys == again.keys and np.array_equal(child.rows, again.rows)
    assert child.outputs_key == again.outputs_key and np.array_equal(child.outputs, again.outputs)
    permuted = sketch_of(family, "child-permuted")
    assert permuted.keys == child.keys
    # The spectral half is blind to the permutation; the raw-weight half is not, by design.
    spectra = slice(SKETCH_DIM, None)
    np.testing.assert_allclose(
        permuted.rows[:, spectra], child.rows[:, spectra], rtol=1e-4, atol=1e-5
    )
    assert not np.allclose(permuted.rows[:, :SKETCH_DIM], child.rows[:, :SKETCH_DIM])
    # The output part is the function's: the same for the same function, whatever its weights.
    assert permuted.outputs_key == child.outputs_key
    np.testing.assert_allclose(permuted.outputs, child.outputs, atol=1e-5)
    assert not np.allclose(sketch_of(family, "parent-1").outputs, child.outputs, atol=1e-3)
    stored = Sketch.from_stored(
        stored_keys([list(k) for k in child.keys]),
        child.to_bytes(),
        child.layout,
        child.outputs_bytes(),
        child.outputs_key,
    )
    assert stored.keys == child.keys and np.array_equal(stored.rows, child.rows)
    assert stored.outputs_key == child.outputs_key
    assert np.array_equal(stored.outputs, child.outputs) and stored.outputs.shape == (OUTPUT_DIM,)
    # Rows stored before output parts existed read as sketches without one.
    old = Sketch.from_stored(child.keys, child.to_bytes(), child.layout)
    assert old.outputs is None and old.outputs_key is None


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


def similarities(model) -> torch.Tensor:
    """K̂: the model's centred features' Gram matrix over the probes, of unit Frobenius norm."""
    features, _ = output_features(model)
    features = features - features.mean(dim=0)
    gram = features @ features.T
    return gram / torch.linalg.matrix_norm(gram)


def test_the_output_part_estimates_the_distance_between_representations(family):
    student = load_model(family["student"], "student")
    names = ["teacher", "decoy-0", "decoy-1", "parent-0", "stranger-0"]
    candidates = [load_model(family[n], n) for n in names]
    exact = [float(torch.linalg.norm(similarities(c) - similarities(student))) for c in candidates]
    approx = [output_distance(model_sketch(student), model_sketch(c)) for c in candidates]
    np.testing.assert_allclose(approx, exact, rtol=0.3)
    assert np.argmin(approx) == 0 and np.argmin(exact) == 0  # the teacher
    # Bounded whatever the model's size, and absent where there is no network to run.
    key, vector = output_sketch(student)
    assert len(key) == 32 and vector.shape == (OUTPUT_DIM,) and vector.dtype == np.float32
    bare = load_model(family["student-bare"], "bare")
    assert bare.config is None and output_sketch(bare) is None
    assert model_sketch(bare).outputs is None
    assert output_distance(model_sketch(student), model_sketch(bare)) == np.inf
    assert "spectrum" in bare.cache and bare.cached_float_tensors() is None
    fresh = load_model(family["student"], "student")
    assert output_sketch(fresh)[0] == key and np.array_equal(output_sketch(fresh)[1], vector)
    assert fresh.cached_float_tensors() is None  # the forward pass kept no float32 copy


def test_a_distilled_student_finds_its_teacher_by_outputs(family):
    """A student trained from its own initialisation to imitate a teacher shares no weight with
    it: by raw weights the teacher is among the farthest, by outputs it is the nearest, and a
    shortlist of three (one slot per part) keeps it."""
    names = [
        "parent-0",
        "parent-1",
        "stranger-0",
        "stranger-1",
        "stranger-2",
        "decoy-0",
        "decoy-1",
        "decoy-2",
        "teacher",
    ]
    catalog = [sketch_of(family, n) for n in names]
    student = sketch_of(family, "student")
    teacher = names.index("teacher")
    by_weights = [sketch_distances(student, c)[0] for c in catalog]
    by_outputs = [output_distance(student, c) for c in catalog]
    assert sorted(by_weights).index(by_weights[teacher]) >= len(names) // 2
    assert np.argmin(by_outputs) == teacher
    assert teacher in shortlist(student, catalog, 3)
    blind = [dataclasses.replace(c, outputs=None, outputs_key=None) for c in catalog]
    assert shortlist(student, blind, 1) != [teacher]
    # The child without outputs (weights only): the other parts still shortlist, no slot lost.
    bare = sketch_of(family, "student-bare")
    assert bare.outputs is None and len(shortlist(bare, catalog, 3)) == 3
    assert shortlist(bare, catalog, 3) == shortlist(student, blind, 3)


def test_nearest_takes_each_part_in_turn_and_skips_what_it_cannot_compare():
    inf = np.inf
    distances = np.array(
        [
            [0.1, 5.0, inf],
            [0.2, 0.1, inf],
            [0.3, 0.2, 0.1],
            [inf, inf, inf],  # shares no tensor, no output part
            [0.4, 0.3, inf],
        ]
    )
    present = np.array([True, True, True, True, False])
    assert nearest(distances, present, 3) == [0, 1, 2, 4]
    assert nearest(distances, present, 2) == [0, 1, 4]
    # Room left once every comparable candidate is in: the others, in order; then the absent.
    assert nearest(distances, present, 10) == [0, 1, 2, 3, 4]
    # A part no candidate has takes no slot.
    assert nearest(distances[:, :2], present, 2) == nearest(distances, present, 2)


def service(tmp_path: Path, shortlist_size: int) -> TestClient:
    """The embedded service on a fresh SQLite file, scoring ``shortlist_size`` candidates."""
    url = f"sqlite:///{tmp_path / 'lineage.db'}"
    migrate(url)
    settings = Settings(
        database_url=url,
        storage_dir=tmp_path / "storage",
        redis_url=None,
        shortlist_size=shortlist_size,
        lineage_admin_key=TEST_ADMIN_KEY,
    )
    return TestClient(create_app(settings, dispatcher_for(settings)), headers=ADMIN_HEADERS)


def detect(client: TestClient, family, child: str) -> dict:
    response = client.post(
        "/detect", data={"name": child, "method": "weight-l2"}, files=files_of(family[child])
    )
    assert response.status_code == 202, response.text
    client.app.state.dispatcher.join()
    job = client.get(f"/jobs/{response.json()['job_id']}").json()
    assert job["status"] == "succeeded", job["error"]
    return job["result"]


def register(client: TestClient, family, names: list[str]) -> None:
    for name in names:
        response = client.post("/parents", data={"name": name}, files=files_of(family[name]))
        assert response.status_code == 201, response.text


def test_a_job_scores_only_the_shortlist(family, tmp_path):
    with service(tmp_path, shortlist_size=2) as client:
        register(client, family, ["parent-0", "parent-1", "stranger-0", "stranger-1", "stranger-2"])
        for child in ("child", "child-permuted"):
            result = detect(client, family, child)
            assert result["shortlist"] == {"catalog": 5, "scored": 2}
            scored = {c["parent"] for c in result["candidates"]}
            assert len(scored) == 2 and "parent-0" in scored, child


def test_a_job_finds_a_distilled_students_teacher_and_shortlists_weights_alone(family, tmp_path):
    """The service stores each model's output part at registration and shortlists by it; a
    model without a config (weights only) has none, and its job still shortlists by weights."""
    catalog = ["parent-0", "parent-1", "stranger-0", "stranger-1", "decoy-0", "decoy-1", "teacher"]
    with service(tmp_path, shortlist_size=3) as client:
        register(client, family, [*catalog, "bare-parent"])
        result = detect(client, family, "student")
        assert result["shortlist"] == {"catalog": 8, "scored": 3}  # the bare one: no arch.
        assert "teacher" in {c["parent"] for c in result["candidates"]}
        result = detect(client, family, "bare-child")  # no architecture: meets every model
        assert result["shortlist"] == {"catalog": 8, "scored": 3}
        assert result["decision"]["parent"] == "bare-parent"
        with client.app.state.session_factory() as session:
            stored = dict(session.execute(select(Model.name, Model.sketch_outputs_key)).all())
    assert stored["bare-parent"] == stored["bare-child"] == ""  # none, and not to be retried
    assert len(stored["teacher"]) == 32 and stored["teacher"] == stored["student"]


def test_a_model_stored_before_output_parts_existed_gets_one_when_registered_again(
    family, tmp_path
):
    with service(tmp_path, shortlist_size=2) as client:
        register(client, family, ["parent-0", "teacher", "decoy-0"])
        factory = client.app.state.session_factory
        with transaction(factory) as session:  # as migration 0005 leaves older rows
            session.execute(update(Model).values(sketch_outputs=None, sketch_outputs_key=None))
        result = detect(client, family, "student")  # no output part to compare with: weights
        assert result["shortlist"] == {"catalog": 3, "scored": 2}
        again = client.post("/parents", data={"name": "teacher"}, files=files_of(family["teacher"]))
        assert again.status_code == 200, again.text
        with factory() as session:
            rows = session.execute(select(Model.name, Model.sketch_outputs_key)).all()
    keys = dict(rows)
    assert keys["parent-0"] is None and keys["decoy-0"] is None and len(keys["teacher"]) == 32


def test_without_a_shortlist_every_model_of_the_architecture_is_scored(family, tmp_path):
    with service(tmp_path, shortlist_size=0) as client:
        register(client, family, ["parent-0", "parent-1", "stranger-0"])
        response = client.post("/detect", data={"name": "child"}, files=files_of(family["child"]))
        client.app.state.dispatcher.join()
        result = client.get(f"/jobs/{response.json()['job_id']}").json()["result"]
    assert result["shortlist"] == {"catalog": 3, "scored": 3}
    assert result["decision"]["parent"] == "parent-0"


def reference_shortlist(child: Sketch, candidates: list[Sketch | None], size: int) -> list[int]:
    """The shortlist written plainly, one candidate at a time: per part, the comparable
    candidates by distance; those in turn; then the present rest; then the absent."""
    parts = []
    for part in range(len(PARTS)):
        distances = {}
        for i, candidate in enumerate(candidates):
            if candidate is None:
                continue
            if part < 2:
                index = {key: j for j, key in enumerate(candidate.keys)}
                shared = [(a, index[k]) for a, k in enumerate(child.keys) if k in index]
                if shared:
                    half = slice(0, SKETCH_DIM) if part == 0 else slice(SKETCH_DIM, None)
                    mine = np.stack([child.rows[a, half] for a, _ in shared]).astype(np.float64)
                    theirs = np.stack([candidate.rows[b, half] for _, b in shared])
                    distances[i] = float(np.linalg.norm(mine - theirs))
            elif candidate.outputs_key is not None and candidate.outputs_key == child.outputs_key:
                distances[i] = float(np.linalg.norm(child.outputs - candidate.outputs))
        parts.append(sorted(distances, key=lambda i: (distances[i], i)))
    chosen: list[int] = []
    for rank in range(len(candidates)):
        for order in parts:
            if rank < len(order) and order[rank] not in chosen and len(chosen) < size:
                chosen.append(order[rank])
    present = [i for i, c in enumerate(candidates) if c is not None]
    chosen += [i for i in present if i not in chosen][: max(0, size - len(chosen))]
    return chosen + [i for i, c in enumerate(candidates) if c is None]


def test_the_catalog_is_shortlisted_as_its_sketches_would_be_in_memory(database_url):
    """``registry.candidates`` streams the catalog's sketches in batches (more than one here),
    of several layouts (one known only once read), with and without output parts of the
    child's key, some rows without a sketch at all, in no particular order (here some copies of
    the child's sketch, without an architecture, come last): it keeps what ``shortlist`` keeps
    from the same sketches, and what the plain reference keeps."""
    rng = np.random.default_rng(0)
    tensors = [(f"t{i}", 8) for i in range(6)]
    other = [("t0", 8), ("t1", 8), ("u", 3)]  # shares two tensors with the first
    engine = make_engine(database_url)
    factory = session_factory(engine)

    def sketch(keys, outputs_key: str | None) -> Sketch:
        rows = rng.standard_normal((len(keys), 2 * SKETCH_DIM)).astype(np.float32)
        outputs = None
        if outputs_key is not None:
            outputs = rng.standard_normal(OUTPUT_DIM).astype(np.float32)
        return Sketch(tuple(keys), rows, layout_of(keys), outputs, outputs_key)

    own = sketch(tensors, "k" * 32)
    catalog: list[Sketch | None] = []
    for i in range(200):
        if i % 37 == 5:
            catalog.append(None)  # registered before sketches existed
        elif i % 10 == 7:
            catalog.append(own)  # ties (20 of them): the oldest are kept, as in a list
        else:
            keys = other if i % 11 == 3 else tensors
            catalog.append(sketch(keys, ["k" * 32, "j" * 32, None][i % 3]))
    with transaction(factory) as session:
        for i, item in enumerate([own, *catalog]):
            session.add(
                Model(
                    name=f"m{i}",
                    sha256=f"{i:064x}",
                    architecture=None if i % 20 == 8 else "a",  # read after the others
                    num_bytes=1,
                    num_parameters=1,
                    storage_path="/nowhere",
                    is_candidate=i > 0,
                    sketch=None if item is None else item.to_bytes(),
                    sketch_tensors=None if item is None else [list(k) for k in item.keys],
                    sketch_layout=None if item is None else item.layout,
                    sketch_outputs=None if item is None else item.outputs_bytes(),
                    sketch_outputs_key=None if item is None else item.outputs_key or "",
                )
            )
    expected = sorted(shortlist(own, catalog, 16))
    assert expected == sorted(reference_shortlist(own, catalog, 16))
    assert [i for i in expected if catalog[i] is own] == [i for i in range(200) if i % 10 == 7][:16]
    sketched = 200 - catalog.count(None)
    # the worker's index kept every sketch, or (a small bound) some, the rest compared as read;
    # each twice: read into the index, then from it
    for bound in (None, 50 * own.rows.nbytes):
        shortlists.forget_indexes()
        with factory() as session:
            index = shortlists.index_for(session)
            if bound is not None:
                index.max_bytes = bound
            child = registry.get_by_name(session, "m0")
            for _ in range(2):
                found = registry.candidates(session, child, 16)
                assert [m.name for m in found.models] == [f"m{i + 1}" for i in expected]
                assert found.catalog_size == 200 and len(found.models) == 16 + catalog.count(None)
            assert (len(index) == sketched) if bound is None else (0 < len(index) < sketched / 2)
    engine.dispose()
    shortlists.forget_indexes()


def test_a_kept_index_follows_the_catalog(database_url):
    """The index keeps sketches between jobs, never which models are candidates: a model
    registered since, or taken out of the catalog, changes the next shortlist; a database
    recreated under the same URL, with other sketches under the same ids and digests, is never
    answered from the old one's."""
    rng = np.random.default_rng(1)
    keys = tuple((f"t{i}", 8) for i in range(3))

    def rows() -> np.ndarray:
        return rng.standard_normal((len(keys), 2 * SKETCH_DIM)).astype(np.float32)

    def add(session, i: int, matrix: np.ndarray, candidate: bool = True) -> None:
        session.add(
            Model(
                name=f"m{i}",
                sha256=f"{i:064x}",
                architecture="a",
                num_bytes=1,
                num_parameters=1,
                storage_path="/nowhere",
                is_candidate=candidate,
                sketch=matrix.astype("<f4").tobytes(),
                sketch_tensors=[list(k) for k in keys],
                sketch_layout=layout_of(keys),
                sketch_outputs=None,
                sketch_outputs_key="",
            )
        )

    def chosen(factory) -> list[str]:
        with factory() as session:
            child = registry.get_by_name(session, "m0")
            return [m.name for m in registry.candidates(session, child, 2).models]

    shortlists.forget_indexes()
    engine = make_engine(database_url)
    factory = session_factory(engine)
    own = rows()
    with transaction(factory) as session:
        add(session, 0, own, candidate=False)
        for i in range(1, 7):  # m1 and m2 nearest
            add(session, i, own + (0.1 * i if i < 3 else 5.0) * rows())
    assert chosen(factory) == ["m1", "m2"]
    with transaction(factory) as session:
        add(session, 7, own + 0.01 * rows())  # nearer than any
        session.execute(update(Model).where(Model.name == "m1").values(is_candidate=False))
    assert chosen(factory) == ["m2", "m7"]
    engine.dispose()
    # the same URL, a new database: the far models now nearest, under the same ids and digests
    downgrade(database_url)
    migrate(database_url)
    engine = make_engine(database_url)
    factory = session_factory(engine)
    with transaction(factory) as session:
        add(session, 0, own, candidate=False)
        for i in range(1, 7):
            add(session, i, own + (0.1 * i if i >= 5 else 5.0) * rows())
    assert chosen(factory) == ["m5", "m6"]
    engine.dispose()
    shortlists.forget_indexes()
