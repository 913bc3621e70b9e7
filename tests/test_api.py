"""The HTTP API end to end, on SQLite and on a real PostgreSQL: uploads, detection jobs run by the
in-process worker, the lineage graph, error shapes, health and metrics. No mocks: real files,
real databases (schema by migrations), the real dispatcher."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from app.api.app import create_app
from app.core.config import Settings
from app.core.db import make_engine, migrate, session_factory
from app.detection.models import Job
from app.engine.architectures import build_network
from app.engine.methods import method_names
from app.engine.model_files import save_model
from app.engine.training import digits_task, initial_state, train
from app.registry.models import Model
from tests.keys import ADMIN_HEADERS, TEST_ADMIN_KEY
from tests.services import ADMIN_URL, postgres_database
from worker.dispatch import dispatcher_for
from worker.in_process import InProcessDispatcher

CONFIG = {"model_type": "lineage-mlp", "sizes": [64, 32, 10], "activation": "relu"}


@dataclass
class Family:
    """Model folders: three parents fine-tuned from one root, and a fine-tune of parent 1."""

    parents: list[Path]
    child: Path
    grandchild: Path  # a fine-tune of the child
    misfit: Path  # parent 0's weights with a config.json they do not fit


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> Family:
    """A tiny trained family (about a second on a CPU); detection separates it clearly."""
    out = tmp_path_factory.mktemp("family")
    network = build_network(CONFIG)
    x, y = digits_task(network, None)
    root = train(network, initial_state(CONFIG, 0), x, y, steps=100, lr=1e-2, seed=0)
    states = []
    for i in range(3):
        state = train(network, root, *digits_task(network, i), steps=60, lr=3e-3, seed=10 + i)
        states.append(save_model(out / f"parent-{i}", state, CONFIG))
    x, y = digits_task(network, 40)
    child = train(network, _read_state(states[1]), x, y, steps=60, lr=2e-3, seed=40)
    misfit_config = {**CONFIG, "sizes": [64, 16, 10]}
    x, y = digits_task(network, 41)
    grandchild = train(network, child, x, y, steps=60, lr=2e-3, seed=41)
    return Family(
        parents=states,
        child=save_model(out / "child", child, CONFIG),
        grandchild=save_model(out / "grandchild", grandchild, CONFIG),
        misfit=save_model(out / "misfit", _read_state(states[0]), misfit_config),
    )


def _read_state(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def upload(folder: Path, *names: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    """The multipart ``files`` of a model folder (default: weights and config)."""
    names = names or ("model.safetensors", "config.json")
    return [
        ("files", (name, (folder / name).read_bytes(), "application/octet-stream"))
        for name in names
    ]


@dataclass
class Service:
    """A running API and what the test needs to look behind it."""

    client: TestClient
    dispatcher: InProcessDispatcher
    engine: Engine
    factory: sessionmaker[Session]
    settings: Settings

    def rows(self) -> tuple[int, int]:
        """How many models and jobs the database holds."""
        with self.factory() as session:
            models = session.scalar(select(func.count()).select_from(Model))
            jobs = session.scalar(select(func.count()).select_from(Job))
        return models, jobs

    def stored(self) -> list[Path]:
        """Every file stored under the content-addressed folder or left in staging."""
        root = self.settings.storage_dir
        return [p for d in ("models", "staging") for p in (root / d).rglob("*") if p.is_file()]

    def finished_job(self, job_id: str) -> dict:
        """Wait for the in-process worker, then poll the job until it has finished."""
        self.dispatcher.join()
        deadline = time.monotonic() + 30
        while True:
            job = self.client.get(f"/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
                return job
            time.sleep(0.05)


def start_service(url: str, storage: Path, **settings) -> Service:
    """The API on ``url`` with its own in-process worker (start it with ``with svc.client``)."""
    # Hub models only from a local cache: the tests never reach the network.
    settings = Settings(
        database_url=url,
        storage_dir=storage,
        redis_url=None,
        **{
            "hf_hub_offline": True,
            "hf_hub_cache": storage.parent / "hf-cache",
            "lineage_admin_key": TEST_ADMIN_KEY,
            **settings,
        },
    )
    engine = make_engine(url)
    factory = session_factory(engine)
    client = TestClient(
        create_app(settings, partial(InProcessDispatcher, settings=settings)), headers=ADMIN_HEADERS
    )
    return Service(client, client.app.state.dispatcher, engine, factory, settings)


@pytest.fixture
def service(database_url, tmp_path) -> Iterator[Service]:
    """The API on a fresh database, with the in-process worker, started and stopped."""
    svc = start_service(database_url, tmp_path / "storage")
    with svc.client:
        yield svc
    svc.engine.dispose()


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The response is ``status`` with the error shape (and ``code``); its error object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def test_register_detect_and_browse_the_family(service, family):
    client = service.client
    for i, folder in enumerate(family.parents):
        response = client.post("/parents", data={"name": f"org/parent-{i}"}, files=upload(folder))
        assert response.status_code == 201, response.text
        record = response.json()
        assert record["name"] == f"org/parent-{i}" and record["created"] is True
        assert record["is_candidate"] and record["architecture"] == "lineage-mlp"

    response = client.post(
        "/detect",
        data={"name": "org/child", "register_as_parent": "true"},
        files=upload(family.child),
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert response.headers["location"] == f"/jobs/{job_id}"

    job = service.finished_job(job_id)
    assert job["status"] == "succeeded", job
    assert job["child"] == "org/child" and job["progress"] == 1.0 and job["error"] is None
    decision = job["result"]["decision"]
    assert decision["parent"] == "org/parent-1", job["result"]
    assert [c["parent"] for c in job["result"]["candidates"]][0] == "org/parent-1"

    tree = client.get("/lineage/org/child").json()
    assert tree["model"] == "org/child"
    assert tree["ancestors"] == [{"name": "org/parent-1", "depth": 1}]
    assert tree["descendants"] == []
    [edge] = tree["edges"]
    assert (edge["parent"], edge["child"]) == ("org/parent-1", "org/child")
    assert edge["method"] == "auto" and 0.5 < edge["score"] <= 1.0
    assert edge["relation"] == "finetune" and edge["declared"] is False and edge["scores"]
    down = client.get("/lineage/org/parent-1").json()
    assert down["descendants"] == [{"name": "org/child", "depth": 1}] and len(down["edges"]) == 1

    listing = client.get("/models").json()
    assert listing["total"] == 4
    assert [m["name"] for m in listing["models"]][0] == "org/child"  # newest first
    assert client.get("/models", params={"q": "parent"}).json()["total"] == 3
    page = client.get("/models", params={"limit": 1, "offset": 1}).json()
    assert len(page["models"]) == 1 and page["total"] == 4

    child = client.get("/models/org/child").json()
    assert child["is_candidate"] is True  # register_as_parent, applied by the job
    assert [p["parent"] for p in child["parents"]] == ["org/parent-1"]
    assert client.get("/models/org/parent-1").json()["children"] == ["org/child"]

    # The next generation builds on the child, now a catalog parent itself.
    response = client.post(
        "/detect", data={"name": "org/grandchild"}, files=upload(family.grandchild)
    )
    job = service.finished_job(response.json()["job_id"])
    assert job["result"]["decision"]["parent"] == "org/child", job["result"]
    tree = client.get("/lineage/org/grandchild").json()
    assert tree["ancestors"] == [
        {"name": "org/child", "depth": 1},
        {"name": "org/parent-1", "depth": 2},
    ]
    assert len(tree["edges"]) == 2


def test_the_same_weights_twice_are_one_record(service, family):
    first = service.client.post("/parents", data={"name": "a/b"}, files=upload(family.parents[0]))
    assert first.status_code == 201
    again = service.client.post(
        "/parents", data={"name": "other/name"}, files=upload(family.parents[0])
    )
    assert again.status_code == 200, again.text
    assert again.json()["name"] == "a/b" and again.json()["created"] is False
    assert again.json()["sha256"] == first.json()["sha256"]
    assert service.rows() == (1, 0)
    # Other weights under a taken name: a conflict, and nothing new in the catalog.
    files_before = service.stored()
    taken = service.client.post("/parents", data={"name": "a/b"}, files=upload(family.parents[1]))
    assert_error(taken, 409, "name_taken")
    assert service.rows() == (1, 0)
    assert service.stored() == files_before  # the refused weights left no files behind


def test_bad_input_is_a_4xx_and_leaves_nothing_behind(service, family):
    client = service.client
    weights = (family.parents[0] / "model.safetensors").read_bytes()
    config = (family.parents[0] / "config.json").read_bytes()

    def files(*items: tuple[str, bytes]) -> list:
        return [("files", (name, data, "application/octet-stream")) for name, data in items]

    uploads = {
        "pickle": (files(("pytorch_model.bin", b"\x80\x04K\x01.")), 400, "pickle_refused"),
        "truncated safetensors": (
            files(("model.safetensors", weights[:-100]), ("config.json", config)),
            400,
            "truncated_file",
        ),
        "text named model.safetensors": (
            files(("model.safetensors", b"these are not weights\n"), ("config.json", config)),
            400,
            None,
        ),
        "weights that do not fit config.json": (upload(family.misfit), 400, "shape_mismatch"),
        "a config that is not JSON": (
            files(("model.safetensors", weights), ("config.json", b"{nope")),
            400,
            "invalid_config",
        ),
        "an odd file": (files(("run.sh", b"rm -rf /")), 400, "upload_refused"),
    }
    for case, (parts, status, code) in uploads.items():
        for path, data in (("/parents", {"name": "org/bad"}), ("/detect", {})):
            response = client.post(path, data=data, files=parts)
            error = assert_error(response, status, code)
            assert service.rows() == (0, 0), (case, path, error)
            assert service.stored() == [], (case, path)

    good = upload(family.parents[0])
    assert_error(client.post("/parents", files=good), 422, "invalid_request")  # no name
    missing = assert_error(client.post("/parents", data={"name": "a"}), 415)  # no body at all
    assert missing["code"] == "unsupported_media_type"
    no_files = client.post("/parents", files={"name": (None, "org/x")})
    assert "files" in assert_error(no_files, 422, "invalid_request")["message"]
    bad_name = client.post("/parents", data={"name": "../etc"}, files=good)
    assert "name" in assert_error(bad_name, 422, "invalid_request")["message"]
    unknown_method = client.post("/detect", data={"method": "astrology"}, files=good)
    assert "auto" in assert_error(unknown_method, 400, "unknown_method")["message"]
    not_json = client.post(
        "/parents", content=b'{"hub_id": ', headers={"content-type": "application/json"}
    )
    assert "JSON" in assert_error(not_json, 422, "invalid_request")["message"]
    assert_error(client.post("/parents", json={"revision": "main"}), 422, "invalid_request")
    # Offline with an empty cache: a hub ID cannot be had, and says so.
    hub = client.post("/parents", json={"hub_id": "gpt2", "revision": "main"})
    assert "local cache" in assert_error(hub, 503, "hub_offline")["message"]
    assert_error(client.post("/detect", json={"hub_id": "org/absent"}), 503, "hub_offline")
    assert service.rows() == (0, 0) and service.stored() == []

    assert_error(client.get("/models/org/nobody"), 404, "unknown_model")
    assert_error(client.get("/lineage/org/nobody"), 404, "unknown_model")
    assert_error(client.get("/jobs/no-such-job"), 404, "unknown_job")
    assert_error(client.get("/models", params={"limit": "lots"}), 422, "invalid_request")
    assert_error(client.get("/no/such/route"), 404, "not_found")
    assert_error(client.delete("/models"), 405, "method_not_allowed")


def test_health_and_metrics(service, family):
    assert service.client.get("/healthz").json() == {"status": "ok", "database": "ok"}
    service.client.post("/parents", data={"name": "p"}, files=upload(family.parents[0]))
    service.client.get("/models/nobody")
    response = service.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'lineage_http_requests_total{endpoint="/healthz",method="GET",status="200"} 1.0' in text
    assert 'endpoint="/models/{name:path}",method="GET",status="404"} 1.0' in text
    assert 'lineage_models_registered_total{role="parent"} 1.0' in text
    assert "lineage_jobs_created_total 0.0" in text


def test_openapi_documents_both_request_shapes(service):
    schema = service.client.get("/openapi.json").json()
    assert schema["info"]["title"] == "lineage" and "parent" in schema["info"]["description"]
    for path in ("/parents", "/detect"):
        content = schema["paths"][path]["post"]["requestBody"]["content"]
        assert "files" in content["multipart/form-data"]["schema"]["properties"]
        assert "hub_id" in content["application/json"]["schema"]["properties"]


def test_an_unexpected_error_is_a_logged_500(service, caplog):
    def broken() -> None:
        raise RuntimeError("a bug")

    service.client.app.add_api_route("/broken", broken)
    with caplog.at_level(logging.ERROR, logger="app.api.errors"):
        response = service.client.get("/broken")
    error = assert_error(response, 500, "internal")
    assert "a bug" not in error["message"]
    assert any("RuntimeError: a bug" in (r.exc_text or "") for r in caplog.records)


def test_uploads_above_the_size_limit_are_413(tmp_path, family):
    url = f"sqlite:///{tmp_path / 'small.db'}"
    migrate(url)
    svc = start_service(url, tmp_path / "storage", max_model_bytes=2000)
    with svc.client as client:
        # Within the body limit (the limit plus 1 MiB of room), refused while streaming:
        response = client.post("/parents", data={"name": "big"}, files=upload(family.parents[0]))
        assert_error(response, 413, "model_too_large")
        # Far above it: refused by the body limit before any parsing.
        huge = [("files", ("model.safetensors", b"\0" * (3 << 20), "application/octet-stream"))]
        assert_error(client.post("/detect", files=huge), 413, "model_too_large")
        assert svc.rows() == (0, 0) and svc.stored() == []
    svc.engine.dispose()


def test_healthz_is_503_when_the_database_is_gone(tmp_path):
    with postgres_database() as url:
        migrate(url)
        svc = start_service(url, tmp_path / "storage")
        with svc.client as client:
            assert client.get("/healthz").status_code == 200
            name = url.rsplit("/", 1)[1]
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            response = client.get("/healthz")
        svc.engine.dispose()
    error = assert_error(response, 503, "database_unavailable")
    assert name in error["message"]


def test_the_embedded_default_runs_jobs_in_process(tmp_path, family):
    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    migrate(url)
    settings = Settings(
        database_url=url,
        storage_dir=tmp_path / "storage",
        redis_url=None,
        lineage_admin_key=TEST_ADMIN_KEY,
    )
    app = create_app(settings, dispatcher_for(settings))
    dispatcher = app.state.dispatcher
    assert isinstance(dispatcher, InProcessDispatcher)
    with TestClient(app, headers=ADMIN_HEADERS) as client:
        client.post("/parents", data={"name": "p"}, files=upload(family.parents[1]))
        job_id = client.post("/detect", files=upload(family.child)).json()["job_id"]
        dispatcher.join()
        job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["child"].startswith("upload-")
    assert job["result"]["decision"]["parent"] == "p"


def test_a_job_the_broker_cannot_take_is_a_503_and_marked_failed(tmp_path, family):
    """Production mode with the broker down (nothing listens on its port): the child and its job
    were committed before the hand-over, so the job is recorded as failed, not left queued."""
    url = f"sqlite:///{tmp_path / 'lineage.db'}"
    migrate(url)
    settings = Settings(
        database_url=url,
        storage_dir=tmp_path / "storage",
        redis_url="redis://127.0.0.1:1/0",
        lineage_admin_key=TEST_ADMIN_KEY,
    )
    app = create_app(settings, dispatcher_for(settings))
    with TestClient(app, headers=ADMIN_HEADERS) as client:
        registered = client.post("/parents", data={"name": "p"}, files=upload(family.parents[1]))
        assert registered.status_code == 201, registered.text
        response = client.post("/detect", data={"name": "c"}, files=upload(family.child))
        error = assert_error(response, 503, "queue_unavailable")
        assert "workers cannot be reached" in error["message"]
        engine = make_engine(url)
        with session_factory(engine)() as session:
            jobs = list(session.scalars(select(Job)))
        engine.dispose()
        assert [(j.status, j.error["code"]) for j in jobs] == [("failed", "queue_unavailable")]
        assert client.get(f"/jobs/{jobs[0].id}").json()["status"] == "failed"


def test_detect_accepts_exactly_the_registry_of_methods(service, family):
    """POST /detect validates the method against the engine's one registry: an unknown name is
    refused with every accepted name listed, and adapter-alignment (once refused, though
    documented) is accepted; on a plain child it fails the job with a clear reason."""
    client = service.client
    refused = client.post("/detect", data={"method": "astrology"}, files=upload(family.child))
    message = assert_error(refused, 400, "unknown_method")["message"]
    assert message.endswith(f"choose one of: {', '.join(method_names())}")
    assert "adapter-alignment" in method_names()
    assert service.rows() == (0, 0)  # refused before anything was stored
    client.post("/parents", data={"name": "p"}, files=upload(family.parents[1]))
    response = client.post(
        "/detect", data={"method": "adapter-alignment"}, files=upload(family.child)
    )
    assert response.status_code == 202, response.text
    job = service.finished_job(response.json()["job_id"])
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_argument"
    assert "scores LoRA adapter children" in job["error"]["message"]
