"""Deleting a model (``DELETE /models/{name}``, ``lineage delete-model``), on SQLite and
PostgreSQL: admins only; its edges go, each logged; its jobs keep their rows and the unfinished
ones fail with ``unknown_model``; its files go only once the deletion has committed; the graph
and the pages still answer. Real databases, the real in-process worker, no mocks (one test
breaks the transaction on purpose)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from app.api.app import create_app
from app.core.config import Settings
from app.core.db import make_engine, session_factory
from app.detection import service as detection
from app.detection.models import Job
from app.lineage.models import Edge, GraphEvent
from app.registry import service as registry_service
from app.registry.models import Model
from tests import test_api
from tests.keys import ADMIN_HEADERS, TEST_ADMIN_KEY, bearer
from tests.test_api import assert_error, upload
from tests.test_auth import anonymous, lineage_cli, make_key

family, service = test_api.family, test_api.service  # the API tests' fixtures
HTML = {"Accept": "text/html"}


def build_family(svc, family) -> dict[str, str]:
    """org/parent-1 → org/child → org/grandchild, written by detection jobs, and org/parent-0
    beside them: the ids of the two jobs."""
    client = svc.client
    for i in (0, 1):
        response = client.post(
            "/parents", data={"name": f"org/parent-{i}"}, files=upload(family.parents[i])
        )
        assert response.status_code == 201, response.text
    jobs = {}
    for name, folder, promote in (
        ("org/child", family.child, "true"),
        ("org/grandchild", family.grandchild, "false"),
    ):
        response = client.post(
            "/detect", data={"name": name, "register_as_parent": promote}, files=upload(folder)
        )
        assert response.status_code == 202, response.text
        job = svc.finished_job(response.json()["job_id"])
        assert job["status"] == "succeeded", job
        jobs[name] = job["id"]
    tree = client.get("/lineage/org/child").json()
    assert {(e["parent"], e["child"]) for e in tree["edges"]} == {
        ("org/parent-1", "org/child"),
        ("org/child", "org/grandchild"),
    }
    return jobs


def folder_of(svc, name: str) -> Path:
    with svc.factory() as session:
        path = session.scalar(select(Model.storage_path).where(Model.name == name))
    assert path is not None, name
    return Path(path)


def admin_key_id(svc) -> int:
    [admin] = [k for k in svc.client.get("/keys").json() if k["role"] == "admin"]
    return admin["id"]


def test_deleting_needs_an_admin_key(service, family):
    response = service.client.post(
        "/parents", data={"name": "org/p"}, files=upload(family.parents[0])
    )
    assert response.status_code == 201, response.text
    nobody = anonymous(service)
    for key in (None, "lin_not-a-key-anyone-made"):
        headers = bearer(key) if key is not None else {}
        response = nobody.delete("/models/org/p", headers=headers)
        assert_error(response, 401, "unauthenticated")
        assert response.headers["www-authenticate"].startswith("Bearer")
    for role in ("reader", "submitter", "curator"):
        _, key = make_key(service, role, role)
        error = assert_error(nobody.delete("/models/org/p", headers=bearer(key)), 403, "forbidden")
        assert "admin" in error["message"]
    assert nobody.get("/models/org/p").status_code == 200
    assert folder_of(service, "org/p").is_dir()


def test_an_unknown_name_is_404(service, family):
    for name in ("org/nothing", "nothing", "org/team/nothing"):
        error = assert_error(service.client.delete(f"/models/{name}"), 404, "unknown_model")
        assert name in error["message"]


def test_deleting_a_parent_removes_its_edges_logs_them_and_its_files_after_commit(
    service, family, monkeypatch
):
    client = service.client
    jobs = build_family(service, family)
    folder = folder_of(service, "org/child")
    others = [folder_of(service, n) for n in ("org/parent-0", "org/parent-1", "org/grandchild")]
    assert folder.is_dir() and all(p.is_dir() for p in others)

    # The files are removed by a callback that must see the deletion committed already.
    seen_by_others = []
    remove = registry_service.remove_model_files

    def remove_after_commit(path: str, sha256: str) -> None:
        with service.factory() as session:  # another connection: only committed rows
            seen_by_others.append(session.scalar(select(Model).where(Model.sha256 == sha256)))
        remove(path, sha256)

    monkeypatch.setattr(registry_service, "remove_model_files", remove_after_commit)

    response = client.delete("/models/org/child")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == "org/child" and body["sha256"] == folder.name
    assert body["edges_removed"] == 2 and body["jobs_failed"] == 0
    assert seen_by_others == [None]
    assert not folder.exists() and all(p.is_dir() for p in others)

    assert_error(client.get("/models/org/child"), 404, "unknown_model")
    assert_error(client.get("/lineage/org/child"), 404, "unknown_model")
    for name in ("org/parent-1", "org/grandchild"):
        tree = client.get(f"/lineage/{name}")
        assert tree.status_code == 200, tree.text
        assert tree.json()["edges"] == [] and tree.json()["ancestors"] == []
        assert tree.json()["descendants"] == []
    assert client.get("/models/org/parent-1").json()["children"] == []
    assert client.get("/models/org/grandchild").json()["parents"] == []
    assert client.get("/models").json()["total"] == 3
    for page in ("/", "/lineage/org/parent-1", "/lineage/org/grandchild"):
        response = client.get(page, headers=HTML)
        assert response.status_code == 200, page
        assert "text/html" in response.headers["content-type"]

    log = client.get("/graph/log", params={"kind": "edge_deleted"})
    assert log.status_code == 200, log.text
    entries = {(e["parent"], e["child"]): e for e in log.json()}
    assert set(entries) == {("org/parent-1", "org/child"), ("org/child", "org/grandchild")}
    admin = admin_key_id(service)
    for entry in entries.values():
        assert entry["key_id"] == admin
        assert entry["detail"]["reason"] == "model deleted"
        assert entry["detail"]["edge"]["parent"] == entry["parent"]
    assert entries[("org/parent-1", "org/child")]["detail"]["edge"]["method"] == "auto"

    # Both jobs keep their rows; the child's no longer names a model.
    gone = client.get(f"/jobs/{jobs['org/child']}").json()
    assert gone["status"] == "succeeded" and gone["child"] is None and gone["result"]
    kept = client.get(f"/jobs/{jobs['org/grandchild']}").json()
    assert kept["status"] == "succeeded" and kept["child"] == "org/grandchild"
    with service.factory() as session:
        assert session.get(Job, jobs["org/child"]).child_id is None
        assert session.scalars(select(Edge)).all() == []
        events = session.scalars(select(GraphEvent)).all()
        assert events and all(e.parent_id is None or e.child_id is None for e in events)


class HeldDispatcher:
    """Keeps the jobs it is given (queued) until the test runs them."""

    def __init__(self, factory):
        self.factory, self.held = factory, []

    def enqueue(self, job_id: str) -> None:
        self.held.append(job_id)

    def close(self) -> None:
        pass


def test_queued_and_running_jobs_of_a_deleted_child_fail_unknown_model(
    database_url, tmp_path, family
):
    storage = tmp_path / "storage"
    settings = Settings(
        database_url=database_url,
        storage_dir=storage,
        redis_url=None,
        hf_hub_offline=True,
        hf_hub_cache=tmp_path / "hf-cache",
        lineage_admin_key=TEST_ADMIN_KEY,
    )
    engine = make_engine(database_url)
    factory = session_factory(engine)
    with TestClient(create_app(settings, HeldDispatcher), headers=ADMIN_HEADERS) as client:
        dispatcher = client.app.state.dispatcher
        for i, folder in enumerate(family.parents):
            response = client.post(
                "/parents", data={"name": f"org/parent-{i}"}, files=upload(folder)
            )
            assert response.status_code == 201, response.text
        ids = []
        for _ in range(3):  # the same weights three times: one model, three jobs
            response = client.post(
                "/detect", data={"name": "org/child"}, files=upload(family.child)
            )
            assert response.status_code == 202, response.text
            ids.append(response.json()["job_id"])
        assert dispatcher.held == ids
        finished, running, queued = ids
        detection.run_job(factory, finished)  # succeeded, with its edge
        assert detection.claim(factory, running) is not None  # a worker has it in hand
        statuses = {i: client.get(f"/jobs/{i}").json()["status"] for i in ids}
        assert statuses == {finished: "succeeded", running: "running", queued: "queued"}

        response = client.delete("/models/org/child")
        assert response.status_code == 200, response.text
        assert response.json()["jobs_failed"] == 2 and response.json()["edges_removed"] == 1

        # The workers get to the jobs afterwards: nothing is run again, nothing changes.
        for job_id in dispatcher.held:
            detection.run_job(factory, job_id)
        for job_id in (running, queued):
            job = client.get(f"/jobs/{job_id}").json()
            assert job["status"] == "failed" and job["child"] is None, job
            assert job["error"]["code"] == "unknown_model", job
            assert job["finished_at"] is not None
        done = client.get(f"/jobs/{finished}").json()
        assert done["status"] == "succeeded" and done["error"] is None
        with factory() as session:
            rows = session.scalars(select(Job)).all()
        assert len(rows) == 3 and all(row.child_id is None for row in rows)
        assert client.get("/", headers=HTML).status_code == 200
        assert client.get("/lineage/org/parent-1").json()["descendants"] == []
    engine.dispose()


def test_a_deletion_whose_transaction_fails_leaves_the_row_and_the_files(
    service, family, monkeypatch
):
    client = service.client
    build_family(service, family)
    folder = folder_of(service, "org/child")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    delete_model = detection.delete_model
    deleted_within = []

    def delete_then_fail(session, name, **kwargs) -> dict:
        delete_model(session, name, **kwargs)  # everything a deletion does...
        deleted_within.append(session.scalar(select(Model).where(Model.name == name)) is None)
        raise RuntimeError("the transaction breaks after the delete")  # ... then no commit

    monkeypatch.setattr(detection, "delete_model", delete_then_fail)
    assert_error(client.delete("/models/org/child"), 500, "internal")
    assert deleted_within == [True]  # the row was gone inside the transaction that failed

    assert sorted(p for p in folder.rglob("*") if p.is_file()) == files
    assert client.get("/models/org/child").status_code == 200
    tree = client.get("/lineage/org/child").json()
    assert len(tree["edges"]) == 2
    assert client.get("/graph/log", params={"kind": "edge_deleted"}).json() == []

    monkeypatch.undo()  # the same deletion, unbroken, goes through
    response = client.delete("/models/org/child")
    assert response.status_code == 200 and response.json()["edges_removed"] == 2
    assert not folder.exists()


def test_the_command_line_deletes_a_model(database_url, tmp_path, family):
    storage = tmp_path / "storage"
    svc = test_api.start_service(database_url, storage)
    with svc.client:
        build_family(svc, family)
        folder = folder_of(svc, "org/child")
    svc.engine.dispose()
    missing = lineage_cli("delete-model", "org/nothing", database=database_url)
    assert missing.returncode == 2, missing.stderr
    assert missing.stderr.startswith("error: no model named 'org/nothing'")
    done = lineage_cli("delete-model", "org/child", database=database_url)
    assert done.returncode == 0, done.stderr
    assert "deleted model org/child: 2 edge(s) removed" in done.stdout
    assert not folder.exists()
    engine = make_engine(database_url)
    with session_factory(engine)() as session:
        assert session.scalar(select(Model).where(Model.name == "org/child")) is None
        events = session.scalars(select(GraphEvent).where(GraphEvent.kind == "edge_deleted"))
        reasons = [(e.key_id, e.detail["reason"]) for e in events]
    engine.dispose()
    assert reasons == [(None, "model deleted")] * 2
