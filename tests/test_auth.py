"""Access control end to end, on SQLite and PostgreSQL: API keys with roles, 401 without a valid
key, 403 below the role, keys stored only hashed, revocation, per-key rate limits (429 with
Retry-After), reads public unless REQUIRE_READ_KEY, bounded paging, and the ``lineage keys``
command line. Real databases, the real in-process worker, no mocks."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select, text

from app.api.app import create_app
from app.auth.errors import WeakKey
from app.auth.service import ensure_admin_key
from app.core.config import Settings
from app.core.db import make_engine, migrate, session_factory
from app.detection.models import Job
from app.registry.models import Model
from scripts.processes import free_port
from tests import test_api
from tests.keys import TEST_ADMIN_KEY, bearer
from tests.test_api import assert_error, start_service, upload
from worker.in_process import InProcessDispatcher

ROOT = Path(__file__).resolve().parents[1]
family, service = test_api.family, test_api.service  # the API tests' fixtures


def make_key(svc, role: str, name: str | None = None) -> tuple[int, str]:
    """A new key with ``role``, made through ``POST /keys`` with the admin key: (id, key)."""
    response = svc.client.post("/keys", json={"role": role, "name": name})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["role"] == role and body["key"].startswith("lin_")
    return body["id"], body["key"]


def anonymous(svc) -> TestClient:
    """A client of the same running app that sends no key."""
    return TestClient(svc.client.app)


def test_writes_without_a_valid_key_are_401_and_store_nothing(service, family):
    client = anonymous(service)
    for key in (None, "lin_not-a-key-anyone-made", ""):
        headers = bearer(key) if key is not None else {}
        response = client.post(
            "/parents", data={"name": "org/p"}, files=upload(family.parents[0]), headers=headers
        )
        error = assert_error(response, 401, "unauthenticated")
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in error["message"] or "not valid" in error["message"]
        detect = client.post("/detect", files=upload(family.child), headers=headers)
        assert_error(detect, 401, "unauthenticated")
    assert_error(client.get("/keys"), 401, "unauthenticated")
    assert service.rows() == (0, 0) and service.stored() == []
    # Reads stay public (as on a public hub), and so do health and metrics.
    assert client.get("/models").status_code == 200
    assert client.get("/").status_code == 200
    assert client.get("/healthz").status_code == 200


def test_a_key_below_the_role_is_403(service, family):
    _, reader = make_key(service, "reader")
    _, submitter = make_key(service, "submitter")
    _, curator = make_key(service, "curator")
    client = anonymous(service)
    parent = upload(family.parents[1])
    error = assert_error(
        client.post("/detect", files=upload(family.child), headers=bearer(reader)), 403, "forbidden"
    )
    assert "submitter" in error["message"] and "reader" in error["message"]
    error = assert_error(
        client.post("/parents", data={"name": "p"}, files=parent, headers=bearer(submitter)),
        403,
        "forbidden",
    )
    assert "curator" in error["message"]
    error = assert_error(
        client.post(
            "/detect",
            data={"register_as_parent": "true"},
            files=upload(family.child),
            headers=bearer(submitter),
        ),
        403,
        "forbidden",
    )
    assert "register_as_parent" in error["message"] and "curator" in error["message"]
    assert service.rows() == (0, 0)  # refused before anything was stored
    assert_error(client.get("/keys", headers=bearer(curator)), 403, "forbidden")
    assert_error(
        client.post("/keys", json={"role": "admin"}, headers=bearer(curator)), 403, "forbidden"
    )
    # Each role does what it may: a curator registers, a submitter detects.
    registered = client.post("/parents", data={"name": "p"}, files=parent, headers=bearer(curator))
    assert registered.status_code == 201, registered.text
    queued = client.post("/detect", files=upload(family.child), headers=bearer(submitter))
    assert queued.status_code == 202, queued.text
    assert service.finished_job(queued.json()["job_id"])["status"] == "succeeded"


def test_keys_are_stored_hashed_and_records_say_which_key_made_them(service, family):
    curator_id, curator = make_key(service, "curator", "alice")
    client = anonymous(service)
    client.post(
        "/parents", data={"name": "p"}, files=upload(family.parents[1]), headers=bearer(curator)
    )
    queued = client.post("/detect", files=upload(family.child), headers=bearer(curator))
    service.finished_job(queued.json()["job_id"])
    with service.engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM api_keys")).mappings().all()
        dump = repr([dict(r) for r in rows])
    assert curator not in dump and TEST_ADMIN_KEY not in dump  # never in clear
    by_id = {r["id"]: r for r in rows}
    assert by_id[curator_id]["key_hash"] == hashlib.sha256(curator.encode()).hexdigest()
    assert by_id[curator_id]["prefix"] == curator[:12] and by_id[curator_id]["role"] == "curator"
    listed = service.client.get("/keys").json()
    assert all("key" not in k and "key_hash" not in k for k in listed)
    assert {k["name"] for k in listed} == {"LINEAGE_ADMIN_KEY", "alice"}
    with service.factory() as session:
        assert {m.created_by for m in session.scalars(select(Model))} == {curator_id}
        assert {j.created_by for j in session.scalars(select(Job))} == {curator_id}


def test_a_revoked_key_is_401(service, family):
    key_id, key = make_key(service, "submitter")
    client = anonymous(service)
    assert (
        client.post("/detect", files=upload(family.child), headers=bearer(key)).status_code == 202
    )
    revoked = service.client.delete(f"/keys/{key_id}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"], revoked.text
    error = assert_error(
        client.post("/detect", files=upload(family.child), headers=bearer(key)),
        401,
        "unauthenticated",
    )
    assert "revoked" in error["message"]
    assert_error(service.client.delete("/keys/999"), 404, "unknown_key")


def test_the_admin_key_from_the_environment_is_restored_at_start(tmp_path):
    url = f"sqlite:///{tmp_path / 'lineage.db'}"
    migrate(url)
    settings = Settings(
        database_url=url, storage_dir=tmp_path / "storage", lineage_admin_key=TEST_ADMIN_KEY
    )
    with TestClient(
        create_app(settings, partial(InProcessDispatcher, settings=settings)),
        headers=bearer(TEST_ADMIN_KEY),
    ) as a:
        [admin] = a.get("/keys").json()
        assert a.delete(f"/keys/{admin['id']}").status_code == 200
        assert_error(a.get("/keys"), 401, "unauthenticated")
    # The operator's LINEAGE_ADMIN_KEY is an admin key again at the next start.
    with TestClient(
        create_app(settings, partial(InProcessDispatcher, settings=settings)),
        headers=bearer(TEST_ADMIN_KEY),
    ) as a:
        assert a.get("/keys").status_code == 200
    with pytest.raises(ValidationError, match="at least 24"):
        Settings(database_url=url, lineage_admin_key="changeme")
    factory = session_factory(make_engine(url))
    with factory() as session, pytest.raises(WeakKey, match="at least 24 characters"):
        ensure_admin_key(session, "changeme")


def test_uploads_and_jobs_over_the_limit_are_429_with_retry_after(tmp_path, family):
    url = f"sqlite:///{tmp_path / 'lineage.db'}"
    migrate(url)
    svc = start_service(
        url, tmp_path / "storage", rate_limit_jobs=2, rate_limit_uploads=3, rate_limit_window=3600
    )
    with svc.client:
        _, first = make_key(svc, "curator")
        _, second = make_key(svc, "submitter")
        client = anonymous(svc)
        for _ in range(2):
            queued = client.post("/detect", files=upload(family.child), headers=bearer(first))
            assert queued.status_code == 202, queued.text
        models, jobs = svc.rows()
        response = client.post("/detect", files=upload(family.child), headers=bearer(first))
        error = assert_error(response, 429, "rate_limited")
        assert 1 <= int(response.headers["retry-after"]) <= 3600
        assert "2 jobs per 3600 s" in error["message"]
        assert svc.rows() == (models, jobs)  # refused before anything was read or stored
        # Uploads count /parents too: 2 detections + 1 registration, then the 4th upload.
        parent = upload(family.parents[0])
        ok = client.post("/parents", data={"name": "p"}, files=parent, headers=bearer(first))
        assert ok.status_code == 201, ok.text
        response = client.post("/parents", data={"name": "q"}, files=parent, headers=bearer(first))
        assert_error(response, 429, "rate_limited")
        assert "Retry-After" in response.headers
        # The limits are per key.
        other = client.post("/detect", files=upload(family.child), headers=bearer(second))
        assert other.status_code == 202, other.text
        svc.dispatcher.join()
    svc.engine.dispose()


def test_reads_need_a_reader_key_when_the_service_says_so(tmp_path):
    url = f"sqlite:///{tmp_path / 'lineage.db'}"
    migrate(url)
    svc = start_service(url, tmp_path / "storage", require_read_key=True)
    with svc.client:
        _, reader = make_key(svc, "reader")
        client = anonymous(svc)
        for path in ("/models", "/", "/audit?verdict=mismatch", "/lineage/nobody"):
            assert_error(client.get(path), 401, "unauthenticated")
        assert client.get("/models", headers=bearer(reader)).status_code == 200
        assert client.get("/", headers=bearer(reader)).status_code == 200
        assert client.get("/healthz").status_code == 200  # probes need no key
    svc.engine.dispose()


def test_paging_is_bounded_with_a_422(service):
    client = service.client
    for path in (
        "/models?offset=9223372036854775808",
        "/models?offset=1000000001",
        "/models?limit=0",
        "/models?limit=501",
        "/audit?verdict=mismatch&offset=9223372036854775808",
        "/keys/9223372036854775808",
    ):
        method = client.delete if path.startswith("/keys") else client.get
        error = assert_error(method(path), 422, "invalid_request")
        assert (
            "offset" in error["message"]
            or "limit" in error["message"]
            or "key_id" in error["message"]
        )
    assert client.get("/models?offset=1000000000").json()["models"] == []


def lineage_cli(*args: str, database: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database}
    env.pop("LINEAGE_ADMIN_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def test_the_keys_command_line_makes_lists_and_revokes_keys(tmp_path):
    database = f"sqlite:///{tmp_path / 'lineage.db'}"
    made = lineage_cli("keys", "create", "--role", "submitter", "--name", "ci", database=database)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("lin_") and len(key) == 47  # the key alone on stdout
    assert "submitter key 1 (ci)" in made.stderr and "shown this once" in made.stderr
    listed = lineage_cli("keys", "list", database=database)
    assert listed.returncode == 0 and key[:12] in listed.stdout and key not in listed.stdout
    assert "submitter" in listed.stdout and "ci" in listed.stdout
    revoked = lineage_cli("keys", "revoke", "1", database=database)
    assert revoked.returncode == 0 and "revoked submitter key 1" in revoked.stdout
    bad = lineage_cli("keys", "create", "--role", "owner", database=database)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown role 'owner'")
    missing = lineage_cli("keys", "revoke", "7", database=database)
    assert missing.returncode == 2 and "no API key with id 7" in missing.stderr


def test_serve_makes_and_prints_an_admin_key_on_its_first_start(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'lineage.db'}",
        "STORAGE_DIR": str(tmp_path / "storage"),
    }
    env.pop("REDIS_URL", None)
    env.pop("LINEAGE_ADMIN_KEY", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        key = None
        deadline = time.monotonic() + 60
        while key is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if line.strip().startswith("lin_"):
                key = line.strip()
        assert key is not None, "no admin key printed"
        base = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        listed = httpx.get(f"{base}/keys", headers=bearer(key))
        assert listed.status_code == 200, listed.text
        assert [k["role"] for k in listed.json()] == ["admin"]
    finally:
        process.terminate()
        process.wait(15)
